"""Scenes to candidate clips: trim around cuts and gradual transitions, drop short scenes,
split long ones.

A scene runs from one cut to the next. At each cut we trim the frames that belong to a gradual
transition: walking away from the cut, a frame is part of the transition while its frame
difference stays elevated above the baseline of the scene it borders (a fade or dissolve changes
every frame a little; a hard cut changes one frame a lot) or while it is near-black (fades). Then
`cut_trim_frames` more frames go at each side of every cut, and black frames at scene edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from curation.config import ClipsConfig


@dataclass
class Candidate:
    key: str
    scene_index: int
    clip_index: int
    start: int  # first frame (inclusive)
    end: int  # last frame (exclusive)
    dropped: str = ""  # reason, when the scene stage drops it


def _baseline(diffs: np.ndarray, lo: int, hi: int) -> float:
    seg = diffs[max(lo, 0) : max(hi, 0)]
    return float(np.median(seg)) if seg.size else 0.0


def _elevated(diff: float, base: float, cfg: ClipsConfig) -> bool:
    return diff > cfg.transition_factor * base + cfg.transition_margin


def trim_bounds(
    cut: int,
    prev_start: int,
    next_end: int,
    diffs: np.ndarray,
    luma: np.ndarray,
    fps: float,
    cfg: ClipsConfig,
) -> tuple[int, int]:
    """(end of the scene before `cut`, start of the scene after it), transition frames excluded.

    diffs[j] is the change from frame j-1 to frame j.
    """
    max_t = max(1, round(cfg.max_transition_seconds * fps))
    # baselines: the bordering scenes beyond the longest transition we would trim
    left_base = _baseline(diffs, max(prev_start + 1, cut - 3 * max_t), cut - max_t)
    if cut - max_t <= prev_start + 1:
        left_base = _baseline(diffs, prev_start + 1, cut)
    right_base = _baseline(diffs, cut + max_t + 1, min(next_end, cut + 3 * max_t + 1))
    if cut + max_t + 1 >= next_end:
        right_base = _baseline(diffs, cut + 1, next_end)
    look = range(cfg.transition_lookahead + 1)  # tolerate short dips inside a transition
    lo, hi = max(prev_start, cut - max_t), min(next_end, cut + max_t)
    end = cut  # exclusive end of the left scene
    while end - 1 > lo and (
        any(_elevated(diffs[end - 1 - q], left_base, cfg) for q in look if end - 1 - q > lo)
        or luma[end - 1] < cfg.dark_level
    ):
        end -= 1
    start = cut  # first frame of the right scene
    while start + 1 < hi and (
        any(_elevated(diffs[start + 1 + q], right_base, cfg) for q in look if start + 1 + q < hi)
        or luma[start] < cfg.dark_level
    ):
        start += 1
    return end, start


def candidates(
    source_id: str,
    cuts: list[int],
    num_frames: int,
    diffs: np.ndarray,
    luma: np.ndarray,
    fps: float,
    cfg: ClipsConfig,
) -> list[Candidate]:
    """Every candidate clip of a source (dropped ones carry a reason)."""
    bounds = [0, *cuts, num_frames]
    trimmed = {}
    for i, cut in enumerate(cuts, start=1):
        trimmed[cut] = trim_bounds(cut, bounds[i - 1], bounds[i + 1], diffs, luma, fps, cfg)
    min_frames = math.ceil(cfg.min_seconds * fps - 1e-9)
    max_frames = max(1, math.floor(cfg.max_seconds * fps + 1e-9))
    out = []
    for s in range(len(bounds) - 1):
        lo, hi = bounds[s], bounds[s + 1]
        start = trimmed[lo][1] + cfg.cut_trim_frames if lo in trimmed else lo
        end = trimmed[hi][0] - cfg.cut_trim_frames if hi in trimmed else hi
        while start < end and luma[start] < cfg.dark_level:  # black frames at scene edges
            start += 1
        while end > start and luma[end - 1] < cfg.dark_level:
            end -= 1
        length = end - start
        key = f"{source_id}_s{s:04d}"
        if length < min_frames:
            reason = f"scene too short: {max(length, 0) / fps:.2f} s after trimming < clips.min_seconds={cfg.min_seconds}"
            out.append(
                Candidate(
                    f"{key}_c00", s, 0, max(lo, min(start, hi)), max(lo, min(max(end, start), hi)), reason
                )
            )
            continue
        n = math.ceil(length / max_frames)
        edges = [start + round(k * length / n) for k in range(n + 1)]
        for c in range(n):
            a, b = edges[c], edges[c + 1]
            reason = ""
            if b - a < min_frames:
                reason = f"chunk too short: {(b - a) / fps:.2f} s < clips.min_seconds={cfg.min_seconds}"
            out.append(Candidate(f"{key}_c{c:02d}", s, c, a, b, reason))
    return out
