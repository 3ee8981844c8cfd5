"""Probe a source with PyAV: facts for sources.parquet, or a clear reason to reject it.

The frame count comes from demuxing every video packet (no decoding: cheap), which also tells
whether timestamps are evenly spaced (constant frame rate); a variable-rate source's duration is
the span of its timestamps (its fps is the container's average rate). The first frame is decoded to prove
the stream is decodable and to read its display rotation.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from fractions import Fraction

import av
import numpy as np


class Rejected(Exception):
    """A readable input that cannot yield clips (status "rejected")."""


class Unreadable(Exception):
    """An input that cannot be opened or decoded (status "error")."""


@dataclass
class ProbeInfo:
    duration: float
    fps: float
    fps_fraction: str  # "30000/1001"
    variable_fps: bool
    num_frames: int
    width: int  # as displayed (after rotation)
    height: int
    rotation: int  # degrees counter-clockwise that the display applies (0, 90, 180, 270)
    codec: str

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def rate(self) -> Fraction:
        return Fraction(self.fps_fraction)


def probe(path: str) -> ProbeInfo:
    """Facts about `path`'s first video stream. Raises Unreadable or Rejected (with a reason)."""
    if os.path.getsize(path) == 0:
        raise Unreadable("empty file (0 bytes)")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise Unreadable(f"cannot open as a media file: {e}") from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise Rejected(f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or rate <= 0:
            raise Rejected("no frame rate in the container")
        rate = Fraction(rate.numerator, rate.denominator)
        try:
            first = next(container.decode(stream))
        except (StopIteration, av.FFmpegError) as e:
            raise Unreadable(f"no decodable video frame: {e}") from None
        rotation = int(round(getattr(first, "rotation", 0) or 0)) % 360
        container.seek(0)
        pts = []
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    pts.append(packet.pts)
        except av.FFmpegError as e:
            raise Unreadable(f"demuxing failed after {len(pts)} packets: {e}") from None
        codec = stream.codec_context.name
        time_base = stream.time_base
        width, height = first.width, first.height
    if rotation in (90, 270):
        width, height = height, width
    num_frames = len(pts)
    gaps = np.diff(np.sort(np.asarray(pts, dtype=np.int64)))
    variable = bool(gaps.size and (gaps.max() - gaps.min()) > max(1, 0.02 * np.median(gaps)))
    duration = num_frames / float(rate)
    if variable:  # true span of the timestamps, the last frame lasting as long as the one before
        duration = float((int(gaps.sum()) + int(gaps[-1])) * Fraction(time_base))
    return ProbeInfo(
        duration=duration,
        fps=float(rate),
        fps_fraction=f"{rate.numerator}/{rate.denominator}",
        variable_fps=variable,
        num_frames=num_frames,
        width=width,
        height=height,
        rotation=rotation,
        codec=codec,
    )


def check(info: ProbeInfo, *, min_seconds: float, min_short_side: int, max_pixels: int) -> None:
    """Raise Rejected when a readable source is unusable for the configured clip sizes."""
    if info.num_frames < 2:
        raise Rejected(f"too short: {info.num_frames} frame(s)")
    if info.duration < min_seconds:
        raise Rejected(f"too short: {info.duration:.2f} s < probe.min_seconds={min_seconds}")
    if min(info.width, info.height) < min_short_side:
        raise Rejected(
            f"too small: {info.width}x{info.height}, short side < probe.min_short_side={min_short_side}"
        )
    if info.width * info.height > max_pixels:
        raise Rejected(f"too large: {info.width}x{info.height} > probe.max_pixels={max_pixels}")
