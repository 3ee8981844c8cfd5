"""Decode clip bytes from memory: decord for video (only the frames asked for), PIL for images."""

from __future__ import annotations

import io
from dataclasses import dataclass

import decord
import numpy as np

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def probe_video(data: bytes) -> VideoInfo:
    """Frame count, fps and size read from the container (used when a sample's json lacks them)."""
    vr = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
    h, w = vr[0].shape[:2] if len(vr) else (0, 0)
    return VideoInfo(num_frames=len(vr), fps=float(vr.get_avg_fps()), height=int(h), width=int(w))


def decode_video(data: bytes, indices: list[int], *, size: tuple[int, int] | None = None) -> np.ndarray:
    """Frames `indices` of an mp4 held in memory as uint8 (T, H, W, 3); resized to `size` (H, W) by
    the decoder when given (cheaper than decoding at full size and resizing after)."""
    kw = {} if size is None else {"height": int(size[0]), "width": int(size[1])}
    vr = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1, **kw)
    n = len(vr)
    if not indices or max(indices) >= n or min(indices) < 0:
        raise ValueError(f"frame indices {indices[:3]}..{indices[-3:]} outside a {n}-frame video")
    frames = vr.get_batch(list(indices)).asnumpy()  # (T, H, W, 3) uint8
    return frames


def decode_image(data: bytes) -> np.ndarray:
    """An encoded image as uint8 (1, H, W, 3) (a one-frame clip)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))[None]  # (1, H, W, 3)
