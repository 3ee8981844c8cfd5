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

Every `attend` takes and returns q/k/v shaped (B, N, heads, head_dim). `attend(..., causal=True)` is
frame-causal attention: a token sees the tokens of its own frame and of earlier frames only (temporal:
its track up to now; full: every position of frames <= its own; spatial: unchanged). Every backend
supports it, except `flash` for full attention (its causal mask is per token, not per frame).
`attend(..., extra=(k_e, v_e))` adds per-sample keys/values (B, K, heads, d) that every query of that
sample sees in every segment, causal or not (in-context conditioning tokens); `sdpa` and `sdpa_dense`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from .kernels import (  # noqa: F401 (re-exported)
    ATTN_BACKENDS,
    FLEX_BLOCK,
    BlockMask,
    _compiled_flex,
    check_backend,
    flash_attn_varlen_func,
    flex_attention,
    segment_block_mask,
)
from .positions import (  # noqa: F401 (re-exported: callers import positions from here)
    apply_rope,
    grid_coords,
    rope_3d,
    rope_axis_dims,
    sincos_1d,
    sincos_spatial,
    sincos_temporal,
)

ATTN_KINDS = ("full", "spatial", "temporal")


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------


def _sdpa(q, k, v, mask=None, is_causal: bool = False):
    """SDPA on (B, N, heads, d) tensors."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=is_causal
    )
    return out.transpose(1, 2)  # (B, N, heads, d)


def _cross_attend(q, k, v, mask):
    """q (B, N, h, d), k/v (B, L, h, d), mask (B, N or 1, L) bool key validity. Queries whose every key
    is masked get zeros (SDPA would give NaN)."""
    has_key = mask.any(dim=-1, keepdim=True)  # (B, N|1, 1)
    safe = mask | ~has_key  # rows with no key attend to all, then are zeroed
    out = _sdpa(q, k, v, safe[:, None])  # (B, N, h, d)
    return out if bool(has_key.all()) else out * has_key[..., None].to(out.dtype)


def _see_extra(mask: torch.Tensor | None, length: int, n_extra: int, causal: bool) -> torch.Tensor | None:
    """Boolean mask (..., L, L + K) for L segment keys followed by K extra keys everyone sees."""
    if mask is None:
        if not causal:
            return None
        mask = torch.ones(length, length, dtype=torch.bool).tril()
    ones = torch.ones(*mask.shape[:-1], n_extra, dtype=torch.bool, device=mask.device)
    return torch.cat([mask.to(ones.device), ones], dim=-1)


def frame_causal_mask(frames: torch.Tensor) -> torch.Tensor:
    """frames (N,) frame index per token -> (N, N) bool: query i may see key j iff frame_j <= frame_i."""
    return frames[None, :] <= frames[:, None]


class GridLayout:
    """Single-shape batch: tokens (B, T*H*W) in (t h w) order. No masks."""

    packed = False

    def __init__(self, *, batch: int, grid: tuple[int, int, int], device=None):
        self.batch, self.grid = batch, tuple(grid)
        self.coords = grid_coords(*self.grid, device=device)  # (N, 3)
        self._causal = None

    def per_token(self, v: torch.Tensor) -> torch.Tensor:
        """Per-sample vectors (B, D) -> broadcastable over tokens (B, 1, D)."""
        return v[:, None]

    def attend(self, q, k, v, kind: str, causal: bool = False, extra=None):
        t, h, w = self.grid
        if kind == "full":
            if causal and self._causal is None:
                self._causal = frame_causal_mask(self.coords[:, 0])  # (N, N), once per batch
            mask = self._causal if causal else None
            if extra is not None:
                k, v = torch.cat([k, extra[0]], 1), torch.cat([v, extra[1]], 1)  # (B, N + K, heads, d)
                mask = None if mask is None else _see_extra(mask, q.shape[1], extra[0].shape[1], True)
            return _sdpa(q, k, v, mask)
        pattern = {
            "spatial": ("b (t s) n d -> (b t) s n d", "(b t) s n d -> b (t s) n d"),
            "temporal": ("b (t s) n d -> (b s) t n d", "(b s) t n d -> b (t s) n d"),
        }[kind]
        q, k, v = (rearrange(z, pattern[0], t=t) for z in (q, k, v))  # (B*groups, L, heads, d)
        causal = causal and kind == "temporal"  # tracks run in time order
        if extra is not None:  # each sample's K extra keys join every one of its segments
            ke, ve = (
                z.repeat_interleave(q.shape[0] // self.batch, 0) for z in extra
            )  # (B*groups, K, heads, d)
            k, v = torch.cat([k, ke], 1), torch.cat([v, ve], 1)  # (B*groups, L + K, heads, d)
            mask = _see_extra(None, q.shape[1], ke.shape[1], causal)
            return rearrange(
                _sdpa(q, k, v, None if mask is None else mask.to(q.device)), pattern[1], b=self.batch
            )
        out = _sdpa(q, k, v, is_causal=causal)
        return rearrange(out, pattern[1], b=self.batch)  # (B, N, heads, d)

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
        self._block_mask: dict[bool, object] = {}  # causal -> BlockMask
        self._dense: dict[bool, torch.Tensor] = {}  # causal -> (N, N) bool


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
        self._clip_causal: dict[int, torch.Tensor] = {}

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

    def attend(self, q, k, v, kind: str, causal: bool = False, extra=None):
        causal = causal and kind != "spatial"  # a frame never sees another frame: nothing to mask
        if self.backend == "sdpa":
            return self._attend_sdpa(q, k, v, kind, causal, extra)
        if extra is not None and self.backend != "sdpa_dense":
            raise NotImplementedError(
                f"in-context tokens (extra keys) run on attn_backend 'sdpa' or 'sdpa_dense', not {self.backend!r}"
            )
        args = (q, k, v, self.segments(kind), causal) + ((extra,) if extra is not None else ())
        return getattr(self, f"_attend_{self.backend}")(*args)  # (1, N, heads, d)

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

    def clip_causal_mask(self, i: int) -> torch.Tensor:
        """(N_i, N_i) frame-causal mask of clip i's full attention (cached per batch)."""
        if i not in self._clip_causal:
            t, h, w = self.grids[i]
            frames = torch.arange(t, device=self.device).repeat_interleave(h * w)
            self._clip_causal[i] = frame_causal_mask(frames)
        return self._clip_causal[i]

    def _attend_sdpa(self, q, k, v, kind: str, causal: bool = False, extra=None):
        groups = self.sdpa_groups(kind)
        # full + causal: each clip has its own mask (same length, other grids), so the general path
        if (
            len(groups) == 1 and kind != "temporal" and not causal and extra is None
        ):  # one segment length: a plain reshape
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
            counts = [
                {"full": 1, "spatial": self.grids[i][0], "temporal": self.sizes[i] // self.grids[i][0]}[kind]
                for i in members
            ]
            mask = None
            if causal and kind == "full":  # (clips, 1, L, L): each clip's frame-causal mask
                mask = torch.stack([self.clip_causal_mask(i) for i in members])[:, None]
            if extra is not None:  # clip i's K extra keys join each of its segments
                for j in (1, 2):
                    ext = torch.cat(
                        [extra[j - 1][i].expand(n, *extra[j - 1].shape[1:]) for i, n in zip(members, counts)]
                    )
                    segs[j] = torch.cat([segs[j], ext], 1)  # (segments, L + K, heads, d)
                mask = _see_extra(mask, segs[0].shape[1], extra[0].shape[1], causal)
                out = _sdpa(*segs, None if mask is None else mask.to(q.device))
            else:
                out = _sdpa(*segs, mask, is_causal=causal and kind == "temporal")  # tracks run in time order
            for i, part in zip(members, out.split(counts)):
                outs[i] = rearrange(part, self._FROM[kind])  # (N_i, heads, d)
        return torch.cat(outs)[None]  # (1, N, heads, d)

    def _attend_sdpa_dense(self, q, k, v, seg: _Segments, causal: bool = False, extra=None):
        if causal not in seg._dense:
            mask = seg.seg_id[:, None] == seg.seg_id[None, :]  # (N, N)
            seg._dense[causal] = mask & frame_causal_mask(self.coords[:, 0]) if causal else mask
        mask = seg._dense[causal]
        if extra is not None:  # (B, K, ...) extra keys, each seen by its own sample's tokens
            n_extra = extra[0].shape[1]
            owner = torch.arange(len(self.grids), device=q.device).repeat_interleave(n_extra)  # (B*K,)
            k = torch.cat([k, extra[0].reshape(1, -1, *k.shape[2:])], 1)  # (1, N + B*K, heads, d)
            v = torch.cat([v, extra[1].reshape(1, -1, *v.shape[2:])], 1)
            mask = torch.cat([mask, self.sample_id[:, None] == owner[None]], dim=-1)  # (N, N + B*K)
        return _sdpa(q, k, v, mask)

    def _permuted(self, fn, q, k, v, seg: _Segments):
        """Run fn on segment-contiguous tokens and put the result back in token order."""
        if not seg.identity:
            q, k, v = (z[:, seg.order] for z in (q, k, v))
        out = fn(q, k, v)
        return out if seg.identity else out[:, seg.inverse]

    def _attend_flex(self, q, k, v, seg: _Segments, causal: bool = False):
        if causal not in seg._block_mask:  # segment id per position in contiguous order: non-decreasing
            frames = self.coords[seg.order, 0] if causal else None
            seg._block_mask[causal] = segment_block_mask(seg.seg_id[seg.order], time_sorted=frames)
        block_mask = seg._block_mask[causal]

        def run(q, k, v):
            out = _compiled_flex()(
                q.transpose(1, 2).contiguous(),
                k.transpose(1, 2).contiguous(),
                v.transpose(1, 2).contiguous(),
                block_mask=block_mask,
            )
            return out.transpose(1, 2)

        return self._permuted(run, q, k, v, seg)

    def _attend_flash(self, q, k, v, seg: _Segments, causal: bool = False):
        if causal and seg is self._segments.get("full"):
            raise NotImplementedError(
                "attn_backend='flash' has token-causal masks only; frame-causal full attention needs "
                "attn_backend='flex' or 'sdpa' (temporal and split-head attention work with flash)"
            )

        def run(q, k, v):
            cu = (
                seg.cu_seqlens
            )  # temporal segments are pixel tracks in time order: token-causal == frame-causal
            out = flash_attn_varlen_func(
                q[0].contiguous(),
                k[0].contiguous(),
                v[0].contiguous(),
                cu,
                cu,
                seg.max_len,
                seg.max_len,
                causal=causal,
            )  # (N, heads, d)
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
