"""Decode clip bytes from memory: decord for video (only the frames asked for), PIL for images."""

from __future__ import annotations

import io
import math
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
    import av

    vr = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
    with av.open(io.BytesIO(data)) as c:  # decord cannot report a size without decoding a frame
        s = c.streams.video[0]
        h, w = s.codec_context.height, s.codec_context.width
    return VideoInfo(num_frames=len(vr), fps=float(vr.get_avg_fps()), height=int(h), width=int(w))


def _read(data: bytes, indices: list[int], h: int, w: int) -> np.ndarray:
    vr = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1, height=h, width=w)
    n = len(vr)
    if not indices or max(indices) >= n or min(indices) < 0:
        raise ValueError(f"frame indices {indices[:3]}..{indices[-3:]} outside a {n}-frame video")
    return vr.get_batch(list(indices)).asnumpy()  # (T, h, w, 3) uint8


def decode_video(data: bytes, indices: list[int], *, size: tuple[int, int]) -> np.ndarray:
    """Frames `indices` of an mp4 held in memory as uint8 (T, H, W, 3), resized by the decoder to
    `size` (H, W) (cheaper than decoding at full size and resizing after).

    decord 0.6 fails to copy out frames of some widths (8, 12, 16, 24, 48, 72 px: "The size must
    exactly match"); those are decoded a little wider (aspect kept, so the result still covers
    `size`) and the caller's crop takes the requested window.
    """
    h, w = int(size[0]), int(size[1])
    for extra in (0, 2, 4, 6):
        try:
            return _read(data, indices, math.ceil(h * (w + extra) / w), w + extra)
        except decord.DECORDError as exn:
            if "must exactly match" not in str(exn) or extra == 6:
                raise
    raise AssertionError("unreachable")


def decode_image(data: bytes) -> np.ndarray:
    """An encoded image as uint8 (1, H, W, 3) (a one-frame clip)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))[None]  # (1, H, W, 3), writable
