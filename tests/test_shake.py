"""Shaky is oscillation, too fast is speed (issue #11): footage with a known camera path.

The old rule (`motion_peak > shaky_peak`) called a steady pan with one fast jerk shaky and let a
hand-held wobble of moderate speed through; direction reversals of the global shift tell them apart.
"""

from __future__ import annotations

import numpy as np
import pytest

from curation.analysis import analyze
from curation.config import AnalysisConfig, MotionConfig
from curation.motion import reject_reason, scores
from curation.synthetic import camera_path_video

FPS, N = 25, 75  # 3 s
SIZE = (160, 96)
DIAG = float(np.hypot(*SIZE))
t = np.arange(N) / FPS


def pan(speed: float) -> np.ndarray:
    """Steady pan at `speed` frame diagonals per second, to the right and a little down."""
    return np.stack([t * speed * DIAG * 0.9, t * speed * DIAG * 0.3], axis=1)


def jerk() -> np.ndarray:
    """A slow pan with one 19-pixel jump forward at frame 36 (a motion sample at flow_fps=2)."""
    p = pan(0.3)
    p[36:, 0] += 19
    return p


def wobble() -> np.ndarray:
    """Hand-held wobble: 3 px at 5 Hz across, 2 px at 3.3 Hz up and down, a slow drift."""
    return np.stack([3 * np.sin(2 * np.pi * 5 * t) + 5 * t, 2 * np.sin(2 * np.pi * 3.3 * t + 1)], axis=1)


CASES = {
    "slow_pan": (pan(0.3), ""),
    "fast_pan": (pan(1.2), "too fast"),
    "pan_with_a_jerk": (jerk(), ""),
    "wobble": (wobble(), "shaky"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_shake_is_direction_reversals_not_peak_speed(tmp_path, name):
    path, want = CASES[name]
    video = tmp_path / f"{name}.mp4"
    camera_path_video(video, path, size=SIZE, seed=3)
    a = analyze(str(video), AnalysisConfig(), fps=FPS)
    s = scores(a, 0, N)
    reason = reject_reason(s, MotionConfig())
    assert reason.startswith(want) if want else reason == "", (name, reason, s)
    if name == "wobble":  # 5 Hz across, 3.3 Hz up and down: several reversals a second
        assert s["shake_rate"] >= 5 and s["motion_mean"] < MotionConfig().fast_mean, s
    else:  # a pan, however fast or jerky, never reverses
        assert s["shake_rate"] == 0, s
    if name == "pan_with_a_jerk":  # the sample the old rule fired on is still measured
        assert s["motion_peak"] > 2.5, s
