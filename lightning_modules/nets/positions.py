"""Token positions for the video DiT: 3D RoPE on integer (t, h, w) coordinates and fixed sin-cos
embeddings (DiT's 2D layout for space, a 1D one for time). Coordinates, not grid shapes, so every
function serves single-shape batches and packed sequences alike."""

from __future__ import annotations

import torch


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


def sincos_spatial(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """DiT's fixed 2D sin-cos embedding of each token's (h, w): the first half of the dims encodes
    the column w, the second the row h (DiT/MAE build the grid with meshgrid(w, h)), so a frame gets
    exactly an image DiT's `pos_embed`. (N, 3) -> (N, dim)."""
    if dim % 4:
        raise ValueError(f"sincos positions need hidden_size divisible by 4, got {dim}")
    return torch.cat([sincos_1d(coords[:, 2], dim // 2), sincos_1d(coords[:, 1], dim // 2)], dim=-1)


def sincos_temporal(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """Latte/VDT's fixed 1D sin-cos embedding of each token's frame index t. (N, 3) -> (N, dim)."""
    return sincos_1d(coords[:, 0], dim)


def grid_coords(t: int, h: int, w: int, device=None) -> torch.Tensor:
    """(t*h*w, 3) integer coordinates in (t h w) row-major order -- the token order of the model."""
    grids = torch.meshgrid(
        torch.arange(t, device=device),
        torch.arange(h, device=device),
        torch.arange(w, device=device),
        indexing="ij",
    )
    return torch.stack(grids, dim=-1).reshape(-1, 3)
