"""Per-clip motion scores and the motion filter.

Scores come from the analysis pass (curation/analysis.py), one sample per consecutive frame pair
at `analysis.flow_fps`, all in frame diagonals per second, so they do not depend on resolution
or frame rate:
    flow   mean Farneback optical-flow magnitude (local motion)
    shift  global translation by phase correlation (camera pan and shake, which Farneback
           underestimates on large or low-texture displacements)
    motion max(flow, shift) per sample; the filter uses its mean ("too fast", "static").
Camera shake is oscillation, not speed: from the global shift of every consecutive frame pair,
    shake_rate       direction reversals per second (consecutive shifts more than 90 degrees
                     apart, both faster than SHAKE_FLOOR): 0 for any pan however fast, about half
                     the frame rate for jitter
    shake_amplitude  median speed of the shifts taking part in a reversal (diagonals per second)
and the filter calls a clip shaky when both exceed their thresholds, whatever its mean speed.
"""

from __future__ import annotations

import numpy as np

from curation.analysis import Analysis
from curation.config import MotionConfig

SHAKE_FLOOR = 0.05  # diagonals per second: slower shifts are noise and never count as a reversal


def shake(dx: np.ndarray, dy: np.ndarray, seconds: float) -> tuple[float, float]:
    """(reversals per second, median speed of the reversing shifts) of consecutive global shifts."""
    v = np.stack([dx, dy], axis=-1).astype(np.float64)  # (n, 2)
    if len(v) < 2 or seconds <= 0:
        return 0.0, 0.0
    moving = np.nan_to_num(np.hypot(v[:, 0], v[:, 1])) > SHAKE_FLOOR  # NaN: shift unknown
    rev = ((v[1:] * v[:-1]).sum(-1) < 0) & moving[1:] & moving[:-1]  # (n - 1,)
    if not rev.any():
        return 0.0, 0.0
    speeds = np.nan_to_num(np.hypot(v[:, 0], v[:, 1]))
    involved = np.zeros(len(v), bool)
    involved[1:] |= rev
    involved[:-1] |= rev
    return float(rev.sum() / seconds), float(np.median(speeds[involved]))


def scores(a: Analysis, start: int, end: int) -> dict:
    """Motion scores of frames [start, end) (NaN when no flow sample falls inside)."""
    sel = (a.flow_index > start) & (a.flow_index < end)  # sample i measures frames (i-1, i)
    flow, shift = a.flow_mag[sel], a.shift_mag[sel]
    motion = np.maximum(flow, shift)
    diffs = a.diffs[start + 1 : end]
    nan = float("nan")
    seconds = float(a.times[end] - a.times[start]) if a.times is not None else (end - start) / a.fps
    rate, amplitude = shake(a.shift_dx[start + 1 : end], a.shift_dy[start + 1 : end], seconds)
    return {
        "shake_rate": rate,
        "shake_amplitude": amplitude,
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
    if s["shake_rate"] >= cfg.shaky_reversals and s["shake_amplitude"] >= cfg.shaky_amplitude:
        return (
            f"shaky: {s['shake_rate']:.1f} direction reversals/s >= motion.shaky_reversals={cfg.shaky_reversals} "
            f"at {s['shake_amplitude']:.3f} >= motion.shaky_amplitude={cfg.shaky_amplitude} diagonals/s"
        )
    return ""
