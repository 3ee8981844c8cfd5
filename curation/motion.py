"""Per-clip motion scores and the motion filter.

Scores come from the analysis pass (curation/analysis.py), one sample per consecutive frame pair
at `analysis.flow_fps`, all in frame diagonals per second, so they do not depend on resolution
or frame rate:
    flow   mean Farneback optical-flow magnitude (local motion)
    shift  global translation by phase correlation (camera pan and shake, which Farneback
           underestimates on large or low-texture displacements)
    motion max(flow, shift) per sample; the filter uses its mean and peak over the clip.
"""

from __future__ import annotations

import numpy as np

from curation.analysis import Analysis
from curation.config import MotionConfig


def scores(a: Analysis, start: int, end: int) -> dict:
    """Motion scores of frames [start, end) (NaN when no flow sample falls inside)."""
    sel = (a.flow_index > start) & (a.flow_index < end)  # sample i measures frames (i-1, i)
    flow, shift = a.flow_mag[sel], a.shift_mag[sel]
    motion = np.maximum(flow, shift)
    diffs = a.diffs[start + 1 : end]
    nan = float("nan")
    return {
        "motion_mean": float(motion.mean()) if motion.size else nan,
        "motion_peak": float(motion.max()) if motion.size else nan,
        "flow_mean": float(flow.mean()) if flow.size else nan,
        "shift_mean": float(shift.mean()) if shift.size else nan,
        "frame_diff_mean": float(diffs.mean()) if diffs.size else 0.0,
        "samples": int(motion.size),
    }


def reject_reason(s: dict, cfg: MotionConfig) -> str:
    """Why the motion filter drops a clip, or "" to keep it."""
    if s["samples"] == 0:
        return "no motion sample inside the clip: raise analysis.flow_fps"
    if s["motion_mean"] < cfg.static_mean:
        return f"static: motion_mean {s['motion_mean']:.4f} < motion.static_mean={cfg.static_mean}"
    if s["motion_mean"] > cfg.fast_mean:
        return f"too fast: motion_mean {s['motion_mean']:.3f} > motion.fast_mean={cfg.fast_mean}"
    if s["motion_peak"] > cfg.shaky_peak:
        return f"shaky: motion_peak {s['motion_peak']:.3f} > motion.shaky_peak={cfg.shaky_peak}"
    return ""
