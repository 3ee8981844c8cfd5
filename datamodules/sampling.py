"""Which source frames a clip of `num_frames` uses.

The step between sampled frames is `frame_stride` (an integer number of source frames) or
`source_fps / target_fps` (may be fractional: frame i is ``offset + round(i * step)``, so the
sampled frames sit on the target clock to within half a source frame and the mean rate is exactly
`target_fps`). A target fps above the source fps is not faked by repeating frames: the step is
clamped to 1 and the reported fps is the source's. The reported fps is always
``source_fps / step``.

The offset is random in training (uniform over every start that fits) and the centre of the
clip otherwise, so validation sees the same frames every time.

Clips too short for the request follow `short_clips`:
- "skip" (default): the sample is dropped and counted;
- "pad": the last frame that exists is repeated (same step, same fps);
- "fit": the step shrinks so the request spans the whole clip (the reported fps rises to match);
  below a step of 1 it pads.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

ShortPolicy = Literal["skip", "pad", "fit"]


def sampling_step(source_fps: float, *, frame_stride: int | None, target_fps: float | None) -> float:
    if frame_stride is not None and target_fps is not None:
        raise ValueError("give frame_stride or target_fps, not both")
    if target_fps is not None:
        if target_fps <= 0 or source_fps <= 0:
            raise ValueError(f"target_fps={target_fps} and source fps={source_fps} must be positive")
        return max(1.0, source_fps / target_fps)
    stride = 1 if frame_stride is None else int(frame_stride)
    if stride < 1:
        raise ValueError(f"frame_stride={frame_stride} must be >= 1")
    return float(stride)


def span(num_frames: int, step: float) -> int:
    """Source frames covered by `num_frames` samples `step` apart (first to last, inclusive)."""
    return int(math.floor((num_frames - 1) * step + 0.5)) + 1


def max_frames(num_source: int, step: float) -> int:
    """The most samples at `step` that fit in `num_source` frames."""
    if num_source < 1:
        return 0
    n = int((num_source - 1) // step) + 1
    while n > 1 and span(n, step) > num_source:
        n -= 1
    while span(n + 1, step) <= num_source:
        n += 1
    return n


def frame_indices(
    num_source: int,
    source_fps: float,
    *,
    num_frames: int,
    step: float,
    rng: np.random.Generator | None,
    short_clips: ShortPolicy = "skip",
) -> tuple[list[int], float] | None:
    """(indices, effective fps), or None when the clip is too short and the policy is "skip".

    `rng` None means deterministic (centre offset); otherwise the offset is drawn from it.
    """
    if num_source < 1:
        return None
    need = span(num_frames, step)
    if need > num_source:
        if short_clips == "skip":
            return None
        if short_clips == "fit" and num_frames > 1 and (num_source - 1) / (num_frames - 1) >= 1:
            step = (num_source - 1) / (num_frames - 1)
            need = span(num_frames, step)
        else:  # pad: as many real frames as fit, then repeat the last
            idx = [min(int(math.floor(i * step + 0.5)), num_source - 1) for i in range(num_frames)]
            return idx, source_fps / step
    room = num_source - need
    offset = int(rng.integers(0, room + 1)) if rng is not None else room // 2
    idx = [offset + int(math.floor(i * step + 0.5)) for i in range(num_frames)]
    return idx, source_fps / step
