"""Attention kernels the packed layouts can use, and what each needs: optional flash-attn varlen
kernels, torch's flex_attention (compiled once) and a BlockMask built from segment boundaries."""

from __future__ import annotations

import functools

import torch

ATTN_BACKENDS = ("sdpa", "sdpa_dense", "flex", "flash")

try:  # optional: flash-attn varlen kernels (CUDA only)
    from flash_attn import flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_varlen_func = None

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # pragma: no cover - old torch
    BlockMask = flex_attention = None

FLEX_BLOCK = 128  # flex_attention's default tile


def check_backend(backend: str, device: torch.device | None = None) -> None:
    """Raise a helpful error when `backend` cannot run here."""
    if backend not in ATTN_BACKENDS:
        raise ValueError(f"attn_backend={backend!r} is unknown; choose one of {ATTN_BACKENDS}")
    if backend == "flex" and flex_attention is None:
        raise RuntimeError(
            "attn_backend='flex' needs torch>=2.5 (torch.nn.attention.flex_attention); use 'sdpa'"
        )
    if backend == "flash":
        if flash_attn_varlen_func is None:
            raise RuntimeError("attn_backend='flash' needs `pip install flash-attn`; use 'sdpa' or 'flex'")
        if device is not None and device.type != "cuda":
            raise RuntimeError(f"attn_backend='flash' runs on CUDA only (got {device}); use 'sdpa'")


@functools.cache
def _compiled_flex():
    # compiled once per process (eager flex_attention materialises the full score matrix), with
    # dynamic shapes: packed sequences change length every batch, and dynamic=False recompiled for
    # each new length
    return torch.compile(flex_attention, dynamic=True)


def segment_block_mask(
    seg_sorted: torch.Tensor, block: int = FLEX_BLOCK, time_sorted: torch.Tensor | None = None
):
    """BlockMask for attention within contiguous segments (`seg_sorted` (N,): non-decreasing segment
    id per position), built from the segment boundaries in O(N + blocks) memory.
    `create_block_mask` evaluates the mask on the full N x N grid (4 GiB of bools at 65 k tokens);
    here only the tiles along the block diagonal are listed: query tile b sees the kv tiles from the
    start of its first token's segment to the end of its last token's segment, all marked partial
    (the mask_mod decides inside them). `time_sorted` (N,): frame index per position; when given, a
    query also needs kv_idx's frame <= its own (frame-causal)."""
    n = seg_sorted.numel()
    device = seg_sorted.device
    change = torch.ones(n, dtype=torch.bool, device=device)
    change[1:] = seg_sorted[1:] != seg_sorted[:-1]
    starts = torch.nonzero(change).flatten()  # (S,) first position of each segment
    ends = torch.cat([starts[1:], torch.tensor([n], device=device)])  # (S,) one past the last
    which = torch.cumsum(change.long(), 0) - 1  # (N,) segment index per position
    nq = -(-n // block)
    q_first = torch.arange(nq, device=device) * block
    q_last = torch.clamp(q_first + block, max=n) - 1
    lo = starts[which[q_first]] // block  # (nq,) first kv tile
    hi = (ends[which[q_last]] - 1) // block  # (nq,) last kv tile
    count = hi - lo + 1
    # (nq, nq) tile indices (BlockMask's layout: one row per query tile, as wide as the tile count;
    # tiles, not tokens: 512 x 512 int32 = 1 MiB at 65 k tokens); entries past `count` are unused
    kv_indices = lo[:, None] + torch.arange(nq, device=device)[None]
    kv_indices = torch.where(kv_indices <= hi[:, None], kv_indices, torch.zeros_like(kv_indices))

    def same_segment(b, h, q_idx, kv_idx):
        return seg_sorted[q_idx] == seg_sorted[kv_idx]

    def same_segment_causal(b, h, q_idx, kv_idx):
        return (seg_sorted[q_idx] == seg_sorted[kv_idx]) & (time_sorted[kv_idx] <= time_sorted[q_idx])

    return BlockMask.from_kv_blocks(
        count[None, None].to(torch.int32),
        kv_indices[None, None].to(torch.int32),
        BLOCK_SIZE=block,
        mask_mod=same_segment if time_sorted is None else same_segment_causal,
        seq_lengths=(n, n),
    )
