"""Attention for the video DiT: 3D RoPE, and token layouts that say who attends to whom.

A *layout* owns the geometry of one forward pass and is built once per batch (never per layer):

- `GridLayout`: a single-shape batch (B, T'*H'*W' tokens). Spatial / temporal / full attention are
  plain reshapes followed by unmasked SDPA -- the fast path.
- `PackedLayout`: variable-shape clips packed into ONE sequence (1, N_total) with a sample id and a
  (t, h, w) coordinate per token. Attention stays within a sample (`full`), within one frame of a
  sample (`spatial`) or within one pixel track of a sample (`temporal`). Backends:
  - `sdpa` (default, any device): each clip's chunk of the sequence is reshaped into its segments
    (frames, pixel tracks or the whole clip), segments of equal length are concatenated and run
    through one unmasked SDPA. Exact, and no O(N^2) mask: a dense mask over a packed sequence costs
    N_total^2 where factorized attention costs sum(T * S^2) (vit-pytorch PR #353 measured dense masks
    6x slower than padding), so masks are only built for the other backends.
  - `sdpa_dense`: one boolean (N, N) mask and SDPA -- the simple reference implementation.
  - `flex`: `torch.nn.attention.flex_attention` with a BlockMask built from the segment boundaries
    (`segment_block_mask`: tiles along the block diagonal, no N x N evaluation), compiled once with
    dynamic shapes (packed lengths change every batch). Worth it on GPUs for long packed sequences;
    not on CPU (use `sdpa`: inductor's CPU flex kernel compiles slowly and runs no faster).
  - `flash`: `flash_attn_varlen_func` over cu_seqlens (CUDA, fp16/bf16, when flash-attn is installed).

Every `attend` takes and returns q/k/v shaped (B, N, heads, head_dim).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange

ATTN_KINDS = ("full", "spatial", "temporal")
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


def segment_block_mask(seg_sorted: torch.Tensor, block: int = FLEX_BLOCK):
    """BlockMask for attention within contiguous segments (`seg_sorted` (N,): non-decreasing segment
    id per position), built from the segment boundaries in O(N + blocks) memory.
    `create_block_mask` evaluates the mask on the full N x N grid (4 GiB of bools at 65 k tokens);
    here only the tiles along the block diagonal are listed: query tile b sees the kv tiles from the
    start of its first token's segment to the end of its last token's segment, all marked partial
    (the mask_mod decides inside them)."""
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

    return BlockMask.from_kv_blocks(
        count[None, None].to(torch.int32),
        kv_indices[None, None].to(torch.int32),
        BLOCK_SIZE=block,
        mask_mod=same_segment,
        seq_lengths=(n, n),
    )


# ----------------------------------------------------------------------------------------------
# Positions
# ----------------------------------------------------------------------------------------------


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Split a head's dims between the t, h and w rotations (each even; t takes the remainder)."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3D RoPE needs an even head_dim >= 6, got {head_dim}; change hidden_size/num_heads")
    dh = dw = 2 * (head_dim // 6)
    return head_dim - dh - dw, dh, dw


def rope_3d(coords: torch.Tensor, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """3D RoPE rotations as unit complex numbers: coords (N, 3) integer (t, h, w) -> (N, head_dim // 2)
    complex64; the head's dims are split between the t, h and w axes (`rope_axis_dims`)."""
    angles = []
    for axis, dim in enumerate(rope_axis_dims(head_dim)):
        inv_freq = base ** (
            -torch.arange(0, dim, 2, device=coords.device, dtype=torch.float64) / dim
        )  # (dim/2,)
        angles.append(coords[:, axis, None].double() * inv_freq)  # (N, dim/2)
    return torch.polar(torch.ones(1, dtype=torch.float64, device=coords.device), torch.cat(angles, -1)).to(
        torch.complex64
    )  # (N, head_dim/2)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x (B, N, heads, d) by per-token complex rotations (N, d/2).
    One complex multiply: cheaper than the four real products and a stack of the cos/sin form."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, N, heads, d/2)
    return torch.view_as_real(xc * rope[None, :, None, :]).flatten(-2).to(x.dtype)  # (B, N, heads, d)


def sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sin-cos embedding (as in MAE/DiT). pos (N,) -> (N, dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, device=pos.device, dtype=torch.float64) / (dim / 2.0))
    out = pos.double()[:, None] * omega  # (N, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=-1).float()


def sincos_3d(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """Latte/VDT-style fixed positions: 2D spatial sin-cos plus 1D temporal sin-cos. (N, 3) -> (N, dim)."""
    if dim % 4:
        raise ValueError(f"sincos positions need hidden_size divisible by 4, got {dim}")
    spatial = torch.cat([sincos_1d(coords[:, 1], dim // 2), sincos_1d(coords[:, 2], dim // 2)], dim=-1)
    return spatial + sincos_1d(coords[:, 0], dim)  # (N, dim)


def grid_coords(t: int, h: int, w: int, device=None) -> torch.Tensor:
    """(t*h*w, 3) integer coordinates in (t h w) row-major order -- the token order of the model."""
    grids = torch.meshgrid(
        torch.arange(t, device=device),
        torch.arange(h, device=device),
        torch.arange(w, device=device),
        indexing="ij",
    )
    return torch.stack(grids, dim=-1).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------


def _sdpa(q, k, v, mask=None):
    """SDPA on (B, N, heads, d) tensors."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)  # (B, N, heads, d)


def _cross_attend(q, k, v, mask):
    """q (B, N, h, d), k/v (B, L, h, d), mask (B, N or 1, L) bool key validity. Queries whose every key
    is masked get zeros (SDPA would give NaN)."""
    has_key = mask.any(dim=-1, keepdim=True)  # (B, N|1, 1)
    safe = mask | ~has_key  # rows with no key attend to all, then are zeroed
    out = _sdpa(q, k, v, safe[:, None])  # (B, N, h, d)
    return out if bool(has_key.all()) else out * has_key[..., None].to(out.dtype)


class GridLayout:
    """Single-shape batch: tokens (B, T*H*W) in (t h w) order. No masks."""

    packed = False

    def __init__(self, *, batch: int, grid: tuple[int, int, int], device=None):
        self.batch, self.grid = batch, tuple(grid)
        self.coords = grid_coords(*self.grid, device=device)  # (N, 3)

    def per_token(self, v: torch.Tensor) -> torch.Tensor:
        """Per-sample vectors (B, D) -> broadcastable over tokens (B, 1, D)."""
        return v[:, None]

    def attend(self, q, k, v, kind: str):
        t, h, w = self.grid
        if kind == "full":
            return _sdpa(q, k, v)
        pattern = {
            "spatial": ("b (t s) n d -> (b t) s n d", "(b t) s n d -> b (t s) n d"),
            "temporal": ("b (t s) n d -> (b s) t n d", "(b s) t n d -> b (t s) n d"),
        }[kind]
        q, k, v = (rearrange(z, pattern[0], t=t) for z in (q, k, v))  # (B*groups, L, heads, d)
        return rearrange(_sdpa(q, k, v), pattern[1], b=self.batch)  # (B, N, heads, d)

    def cross_attend(self, q, k, v, mask):
        """q (B, N, h, d); k/v (B, L, h, d); mask (B, L) bool or None."""
        if mask is None:
            return _sdpa(q, k, v)
        return _cross_attend(q, k, v, mask[:, None, :])


class _Segments:
    """Contiguous-segment view of one attention kind over a packed sequence (built once per batch)."""

    def __init__(self, order: torch.Tensor, lengths: list[int]):
        self.order = order  # (N,) token index at each position of the segment-contiguous order
        self.identity = bool(torch.equal(order, torch.arange(len(order), device=order.device)))
        self.inverse = torch.argsort(order)
        self.lengths = lengths  # segment lengths in that order
        dev = order.device
        starts = torch.tensor([0] + lengths, device=dev).cumsum(0)
        self.cu_seqlens = starts.to(torch.int32)
        self.max_len = max(lengths)
        self.seg_id = torch.repeat_interleave(
            torch.arange(len(lengths), device=dev), torch.tensor(lengths, device=dev)
        )[self.inverse]  # (N,) segment id per token in original order
        self._block_mask = None
        self._dense = None


class PackedLayout:
    """Several clips of different token grids packed into one sequence (1, N_total)."""

    packed = True

    def __init__(self, *, grids: list[tuple[int, int, int]], backend: str = "sdpa", device=None):
        check_backend(backend, torch.device(device) if device is not None else None)
        self.grids, self.backend, self.device = [tuple(g) for g in grids], backend, device
        self.sizes = [t * h * w for t, h, w in self.grids]
        self.coords = torch.cat([grid_coords(*g, device=device) for g in self.grids])  # (N, 3)
        self.sample_id = torch.repeat_interleave(
            torch.arange(len(self.grids), device=device), torch.tensor(self.sizes, device=device)
        )  # (N,)
        self._segments: dict[str, _Segments] = {}
        self._groups: dict[str, list] = {}
        self._onehot = None

    def per_token(self, v: torch.Tensor) -> torch.Tensor:
        """Per-sample vectors (B, D) -> per token (1, N, D). A one-hot matmul rather than v[sample_id]:
        same result, but its backward is a matmul instead of a slow scatter-add on CPU."""
        if self._onehot is None or self._onehot.dtype != v.dtype:
            self._onehot = torch.nn.functional.one_hot(self.sample_id, len(self.grids)).to(v.dtype)  # (N, B)
        return (self._onehot @ v)[None]

    def segments(self, kind: str) -> _Segments:
        if kind not in self._segments:
            orders, lengths, offset = [], [], 0
            for t, h, w in self.grids:
                idx = torch.arange(t * h * w, device=self.device).view(t, h, w) + offset
                if kind == "full":
                    orders.append(idx.flatten())
                    lengths.append(t * h * w)
                elif kind == "spatial":
                    orders.append(idx.flatten())
                    lengths += [h * w] * t
                elif kind == "temporal":
                    orders.append(idx.permute(1, 2, 0).flatten())  # (h w t) order: tracks contiguous
                    lengths += [t] * (h * w)
                else:
                    raise ValueError(f"attention kind {kind!r} is unknown; choose one of {ATTN_KINDS}")
                offset += t * h * w
            self._segments[kind] = _Segments(torch.cat(orders), lengths)
        return self._segments[kind]

    def attend(self, q, k, v, kind: str):
        if self.backend == "sdpa":
            return self._attend_sdpa(q, k, v, kind)
        return getattr(self, f"_attend_{self.backend}")(q, k, v, self.segments(kind))  # (1, N, heads, d)

    # grouped SDPA: each clip's tokens are a contiguous chunk; a chunk becomes (segments, L) with a
    # reshape (spatial, full) or a transpose (temporal), chunks with equal L are concatenated and run
    # through one unmasked SDPA. Only views, cat and split: their backward is cheap, unlike the
    # scatter-add of an index gather.
    _TO = {
        "full": "(o n) h d -> o n h d",
        "spatial": "(t s) h d -> t s h d",
        "temporal": "(t s) h d -> s t h d",
    }
    _FROM = {
        "full": "o n h d -> (o n) h d",
        "spatial": "t s h d -> (t s) h d",
        "temporal": "s t h d -> (t s) h d",
    }

    def sdpa_groups(self, kind: str) -> list[tuple[int, list[int]]]:
        """[(segment length L, [clip indices])] for one attention kind (built once per batch)."""
        if kind not in self._groups:
            if kind not in ATTN_KINDS:
                raise ValueError(f"attention kind {kind!r} is unknown; choose one of {ATTN_KINDS}")
            by_len: dict[int, list[int]] = {}
            for i, (t, h, w) in enumerate(self.grids):
                length = {"full": t * h * w, "spatial": h * w, "temporal": t}[kind]
                by_len.setdefault(length, []).append(i)
            self._groups[kind] = list(by_len.items())
        return self._groups[kind]

    def _axes(self, kind: str, i: int) -> dict:
        return {"o": 1} if kind == "full" else {"t": self.grids[i][0]}

    def _attend_sdpa(self, q, k, v, kind: str):
        groups = self.sdpa_groups(kind)
        if len(groups) == 1 and kind != "temporal":  # every segment has one length: a plain reshape
            n = groups[0][0]
            q, k, v = (z.reshape(-1, n, *z.shape[2:]) for z in (q, k, v))  # (segments, L, heads, d)
            return _sdpa(q, k, v).reshape(1, -1, *q.shape[2:])  # (1, N, heads, d)
        chunks = [z[0].split(self.sizes) for z in (q, k, v)]  # 3 x B chunks of (N_i, heads, d)
        outs = [None] * len(self.grids)
        for _, members in groups:
            segs = [
                torch.cat([rearrange(c[i], self._TO[kind], **self._axes(kind, i)) for i in members])
                for c in chunks
            ]  # 3 x (segments, L, heads, d)
            out = _sdpa(*segs)
            counts = [
                {"full": 1, "spatial": self.grids[i][0], "temporal": self.sizes[i] // self.grids[i][0]}[kind]
                for i in members
            ]
            for i, part in zip(members, out.split(counts)):
                outs[i] = rearrange(part, self._FROM[kind])  # (N_i, heads, d)
        return torch.cat(outs)[None]  # (1, N, heads, d)

    def _attend_sdpa_dense(self, q, k, v, seg: _Segments):
        if seg._dense is None:
            seg._dense = seg.seg_id[:, None] == seg.seg_id[None, :]  # (N, N)
        return _sdpa(q, k, v, seg._dense)

    def _permuted(self, fn, q, k, v, seg: _Segments):
        """Run fn on segment-contiguous tokens and put the result back in token order."""
        if not seg.identity:
            q, k, v = (z[:, seg.order] for z in (q, k, v))
        out = fn(q, k, v)
        return out if seg.identity else out[:, seg.inverse]

    def _attend_flex(self, q, k, v, seg: _Segments):
        if seg._block_mask is None:  # segment id per position in contiguous order: non-decreasing
            seg._block_mask = segment_block_mask(seg.seg_id[seg.order])

        def run(q, k, v):
            out = _compiled_flex()(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=seg._block_mask
            )
            return out.transpose(1, 2)

        return self._permuted(run, q, k, v, seg)

    def _attend_flash(self, q, k, v, seg: _Segments):
        def run(q, k, v):
            cu = seg.cu_seqlens
            out = flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, seg.max_len, seg.max_len)  # (N, heads, d)
            return out[None]

        return self._permuted(run, q, k, v, seg)

    def cross_attend(self, q, k, v, mask):
        """q (1, N, h, d); k/v (B, L, h, d) per sample; mask (B, L) bool or None. Each clip's tokens
        attend to their own caption: one SDPA per clip, O(N * L) (a (N, B*L) mask would cost B times
        more and grow with the batch)."""
        outs = []
        for i, qi in enumerate(q[0].split(self.sizes)):  # (N_i, h, d)
            ki, vi = k[i : i + 1], v[i : i + 1]  # (1, L, h, d)
            if mask is None:
                outs.append(_sdpa(qi[None], ki, vi)[0])
            else:
                outs.append(_cross_attend(qi[None], ki, vi, mask[i : i + 1, None, :])[0])
        return torch.cat(outs)[None]  # (1, N, h, d)
