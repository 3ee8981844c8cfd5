"""Resize-to-cover, crop and flip (scaling to [-1, 1] is done by collate.py).

A clip of native size (h, w) is resized, aspect kept, to the smallest size that covers the target
(H, W) (the decoder does this resize), then cropped: at random in training, centred otherwise.
`upscale(h, w, H, W)` is the factor that resize needs; bucketing refuses targets above its
tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from einops import rearrange


def upscale(h: int, w: int, th: int, tw: int) -> float:
    """Linear scale factor to cover (th, tw) from (h, w) keeping the aspect (>1 = upscaling)."""
    return max(th / h, tw / w)


def cover_size(h: int, w: int, th: int, tw: int) -> tuple[int, int]:
    """Smallest (rh, rw) with the aspect of (h, w) and rh >= th, rw >= tw."""
    s = upscale(h, w, th, tw)
    return max(th, math.ceil(h * s - 1e-6)), max(tw, math.ceil(w * s - 1e-6))


def crop_offsets(rh: int, rw: int, th: int, tw: int, rng: np.random.Generator | None) -> tuple[int, int]:
    if rng is None:
        return (rh - th) // 2, (rw - tw) // 2
    return int(rng.integers(0, rh - th + 1)), int(rng.integers(0, rw - tw + 1))


def to_tensor(
    frames: np.ndarray, *, top: int, left: int, height: int, width: int, flip: bool
) -> torch.Tensor:
    """uint8 (T, H', W', 3) -> uint8 (3, T, height, width) cropped at (top, left).

    Scaling to [-1, 1] happens in `collate` (one pass, written straight into the batch)."""
    crop = frames[:, top : top + height, left : left + width]
    if crop.shape[1:3] != (height, width):
        raise ValueError(
            f"crop {crop.shape[1:3]} != target {(height, width)}: frames are smaller than the crop"
        )
    video = rearrange(torch.from_numpy(crop), "t h w c -> c t h w")  # (3, T, H, W) uint8 view
    if flip:
        video = video.flip(-1)
    return video  # (3, T, H, W) uint8, a strided view: collate gathers and scales it in one pass


class LatentMappingError(ValueError):
    """Precomputed latents cannot follow what the loader did to the frames (resize, strided frames
    through a temporal codec factor, a latent of another size): a configuration error, never skipped."""


def latent_view(
    latent: torch.Tensor,
    *,
    frame_indices: list[int],
    crop: tuple[int, int, int, int],
    flip: bool,
    native: tuple[int, int],
    resized: tuple[int, int],
    factors: tuple[int, int, int],
    key: str = "",
) -> torch.Tensor:
    """The part of a clip's precomputed latent (C, T', H', W') that matches the frames the loader
    hands over: frame indices through the codec's temporal factor dt, the crop (top, left, height,
    width) through its spatial factors (dh, dw), and the flip. A resize cannot be followed."""
    dt, dh, dw = factors
    h, w = native
    if tuple(resized) != (h, w):
        raise LatentMappingError(
            f"sample {key}: frames are resized from {h}x{w} to {resized[0]}x{resized[1]} (height/width or "
            "buckets), which precomputed latents cannot follow: train at the stored size (data.init_args."
            f"height={h}, width={w} or a crop of it) or set data.init_args.load_latents=false"
        )
    if latent.dim() != 4 or tuple(latent.shape[2:]) != (h // dh, w // dw):
        raise LatentMappingError(
            f"sample {key}: latent.npy has shape {tuple(latent.shape)}, expected (C, T', {h // dh}, {w // dw}) for "
            f"{h}x{w} frames and latent_downsample={list(factors)}: set data.init_args.latent_downsample to the "
            "codec that made the latents"
        )
    idx = list(frame_indices)
    if dt == 1:
        z = latent[:, idx]
    elif idx == list(range(idx[0], idx[0] + len(idx))) and idx[0] % dt == 0 and len(idx) % dt == 0:
        z = latent[:, idx[0] // dt : (idx[0] + len(idx)) // dt]
    else:
        raise LatentMappingError(
            f"sample {key}: frames {idx[:4]}... are not whole, consecutive groups of the codec's temporal factor "
            f"{dt}: use frame_stride=1 with latents of a temporal codec, or load_latents=false"
        )
    top, left, hh, ww = crop
    if top % dh or left % dw or hh % dh or ww % dw:
        raise LatentMappingError(f"sample {key}: crop {crop} is not on the latent grid ({dh}x{dw})")
    z = z[:, :, top // dh : (top + hh) // dh, left // dw : (left + ww) // dw]
    return z.flip(-1) if flip else z
