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
