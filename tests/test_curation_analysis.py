"""The single analysis pass: cut lists equal `scenedetect.detect()`, motion scores separate static,
normal and fast footage, and probe / discover / scene trimming behave as documented."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scenedetect
from scenedetect import detectors as sd
from scenedetect.scene_manager import compute_downscale_factor

from curation.analysis import analyze, detector_size
from curation.config import AnalysisConfig, ClipsConfig
from curation.discover import discover, list_inputs
from curation.probe import Rejected, Unreadable, check, probe
from curation.scenes import candidates


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory):
    """5 short videos at short side 144: the 2.39:1 one (344 px wide) makes scenedetect downscale."""
    from curation.synthetic import generate

    out = tmp_path_factory.mktemp("wide")
    generate(out, videos=5, seed=3, short_side=144, min_seconds=2.0, max_seconds=3.0)
    return out


def _detect_cuts(path, detector, backend):
    scenes = scenedetect.detect(str(path), detector, backend=backend)
    return [s[0].frame_num for s in scenes[1:]]


def _our_cuts(path, name, kwargs, fps, scaler="scenedetect"):
    cfg = AnalysisConfig(detectors=[name], scaler=scaler, **{name: kwargs})
    return analyze(str(path), cfg, fps=fps).cuts


def test_detector_size_matches_scenedetect_auto_downscale():
    for w, h in [(96, 170), (256, 144), (344, 144), (1920, 1080), (1080, 1920), (3840, 2160), (97, 61)]:
        f = compute_downscale_factor(max(w, h))
        want = (w, h) if f <= 1.0 else (max(1, round(w / f)), max(1, round(h / f)))
        assert detector_size(w, h, 256) == want


def test_content_cuts_equal_scenedetect_detect_on_every_video(synthetic_dir, synthetic_manifest, wide_dir):
    videos = [(synthetic_dir, v) for v in synthetic_manifest["videos"]]
    videos += [(wide_dir, v) for v in json.loads((wide_dir / "manifest.json").read_text())["videos"]]
    assert any(max(v["width"], v["height"]) > 256 for _, v in videos), "need a downscaled case"
    for root, v in videos:
        path = root / v["file"]
        ours = _our_cuts(path, "content", {}, v["fps"])
        assert ours == _detect_cuts(path, sd.ContentDetector(), "pyav"), v["file"]
        assert ours == _detect_cuts(path, sd.ContentDetector(), "opencv"), v["file"]
        # the default FFmpeg scaler: identical frames when no downscale is needed, else cuts may
        # move by a frame (different resampling filter)
        fast = _our_cuts(path, "content", {}, v["fps"], scaler="ffmpeg")
        if max(v["width"], v["height"]) < 256:
            assert fast == ours, v["file"]
        assert len(fast) == len(ours) and all(abs(a - b) <= 1 for a, b in zip(fast, ours)), v["file"]


@pytest.mark.parametrize(
    "name,cls,kwargs",
    [
        ("adaptive", sd.AdaptiveDetector, {}),
        ("histogram", sd.HistogramDetector, {}),
        ("hash", sd.HashDetector, {}),
        ("threshold", sd.ThresholdDetector, {}),
        ("content", sd.ContentDetector, {"threshold": 15, "min_scene_len": 5}),
    ],
)
def test_other_detectors_equal_scenedetect_detect(wide_dir, name, cls, kwargs):
    m = json.loads((wide_dir / "manifest.json").read_text())
    for v in (m["videos"][0], m["videos"][4]):  # a fade video, and the downscaled 2.39:1 one
        path = wide_dir / v["file"]
        assert _our_cuts(path, name, kwargs, v["fps"]) == _detect_cuts(path, cls(**kwargs), "pyav"), v["file"]


def test_analysis_motion_separates_static_normal_fast(synthetic_dir, synthetic_manifest):
    from curation import motion
    from curation.config import MotionConfig

    mcfg = MotionConfig()
    for v in synthetic_manifest["videos"]:
        a = analyze(str(synthetic_dir / v["file"]), AnalysisConfig(), fps=v["fps"])
        assert a.num_frames == v["num_frames"]
        for s in v["scenes"]:
            sc = motion.scores(a, s["start"] + 1, s["end"] - 1)
            reason = motion.reject_reason(sc, mcfg)
            want = {"static": "static", "fast": "too fast", "normal": ""}[s["motion"]]
            assert reason.startswith(want) and (want or not reason), (v["file"], s, sc, reason)


def test_kept_frames_and_resolution_independent_scores(tmp_path):
    """The same footage at 2x the resolution gives the same motion scores (flow is measured
    relative to the frame diagonal, on frames brought to the same analysis size)."""
    from fractions import Fraction

    import av
    import cv2

    from curation import motion
    from curation.synthetic import encode_video, generate

    m = generate(tmp_path, videos=1, seed=5, short_side=192, min_seconds=6.0, max_seconds=6.0)
    v = m["videos"][0]
    half = (v["width"] // 4 * 2, v["height"] // 4 * 2)  # even: 4:2:0
    with av.open(str(tmp_path / v["file"])) as c:
        small = [
            cv2.resize(f.to_ndarray(format="rgb24"), half, interpolation=cv2.INTER_AREA)
            for f in c.decode(video=0)
        ]
    encode_video(tmp_path / "half.mp4", small, Fraction(v["fps_fraction"]), *half)
    s = max((s for s in v["scenes"] if s["motion"] == "normal"), key=lambda s: s["end"] - s["start"])
    means = []
    for path in (tmp_path / v["file"], tmp_path / "half.mp4"):
        a = analyze(str(path), AnalysisConfig(keep_short_side=64), fps=v["fps"])
        means.append(motion.scores(a, s["start"] + 1, s["end"] - 1)["motion_mean"])
        frames = a.kept_frames(0, a.num_frames, 3)
        assert len(frames) == 3 and min(frames[0][1].shape[:2]) == 64
    # sub-pixel shifts at analysis size make single samples noisy; a score in pixels would differ 2x
    assert means[0] > 0.05 and means[0] == pytest.approx(means[1], rel=0.3)


def test_probe_facts_and_rejections(synthetic_dir, synthetic_manifest, tmp_path):
    for v in synthetic_manifest["videos"]:
        info = probe(str(synthetic_dir / v["file"]))
        assert (info.num_frames, info.width, info.height) == (v["num_frames"], v["width"], v["height"])
        assert info.fps_fraction == v["fps_fraction"] and not info.variable_fps and info.codec == "h264"
    info = probe(str(synthetic_dir / synthetic_manifest["videos"][0]["file"]))
    with pytest.raises(Rejected, match="too short"):
        check(info, min_seconds=60, min_short_side=16, max_pixels=1 << 30)
    with pytest.raises(Rejected, match="too small"):
        check(info, min_seconds=0, min_short_side=1000, max_pixels=1 << 30)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(Unreadable, match="empty"):
        probe(str(tmp_path / "empty.mp4"))
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 100)
    with pytest.raises(Unreadable):
        probe(str(tmp_path / "junk.mp4"))


def test_discover_dir_glob_lists_and_stable_ids(synthetic_dir, tmp_path):
    found = discover(str(synthetic_dir))
    by_dir = [s for s in found if not s.skipped]  # non-videos are found too, as skipped (#11)
    assert sorted(Path(s.path).name for s in found if s.skipped) == sorted(
        [p.name for p in synthetic_dir.glob("*.json")]
    )
    assert len(by_dir) == 4 and all(s.source_id.replace("-", "").replace("_", "").isalnum() for s in by_dir)
    assert [s.source_id for s in discover(str(synthetic_dir / "*.mp4"))] == [s.source_id for s in by_dir]
    names = sorted(p.name for p in synthetic_dir.glob("*.mp4"))
    (tmp_path / "list.txt").write_text("# inputs\n" + "\n".join(str(synthetic_dir / n) for n in names) + "\n")
    assert [s.source_id for s in discover(str(tmp_path / "list.txt"))] == [s.source_id for s in by_dir]
    (tmp_path / "list.csv").write_text(
        "path,caption\n" + "".join(f"{synthetic_dir / n},cap {n}\n" for n in names)
    )
    got = discover(str(tmp_path / "list.csv"))
    assert sorted(s.caption for s in got) == sorted(f"cap {n}" for n in names)
    # the id follows the bytes, not the location
    (tmp_path / "copy dir ü").mkdir()
    (tmp_path / "copy dir ü" / "vïdeo 1.mp4").write_bytes((synthetic_dir / names[0]).read_bytes())
    copy = discover(str(tmp_path / "copy dir ü"))[0]
    assert (
        copy.source_id.split("-")[-1]
        == next(s for s in by_dir if s.path.endswith(names[0])).source_id.split("-")[-1]
    )
    assert copy.source_id.startswith("video-1-")
    with pytest.raises(FileNotFoundError):
        list_inputs(str(tmp_path / "nothing*.mp4"))


def test_discover_accounts_every_file_but_hidden_ones_and_out(tmp_path):
    raw = tmp_path / "raw"
    (raw / "out" / "work").mkdir(parents=True)
    (raw / ".cache").mkdir()
    for name in ("a.mp4", "b.MOV", "a.json", "memo.m4a", "x.png", "readme.txt", "blob.xyz", "noext"):
        (raw / name).write_bytes(b"1")
    (raw / ".DS_Store").write_bytes(b"1")
    (raw / ".cache" / "c.mp4").write_bytes(b"1")
    (raw / "out" / "work" / "clip.mp4").write_bytes(b"1")
    got = {Path(s.path).name: s.skipped for s in discover(str(raw), exclude=str(raw / "out"))}
    assert got == {
        "a.mp4": "",
        "b.MOV": "",
        "a.json": "caption sidecar of a.mp4",
        "memo.m4a": "not a video: audio-only file (.m4a)",
        "x.png": "not a video: image (.png)",
        "readme.txt": "not a video: text/metadata file (.txt)",
        "blob.xyz": "not a video: unknown extension .xyz",
        "noext": "not a video: unknown extension (none)",
    }


def _luma(n, fades=()):
    luma = np.full(n, 100.0, np.float32)
    for a, b in fades:  # a fade to black and back over [a, b)
        luma[a:b] = np.abs(np.linspace(100, -100, b - a))
    return luma


def test_candidates_keep_hard_cuts_exact_trim_transitions_split_and_drop():
    cfg = ClipsConfig(min_seconds=1.0, max_seconds=4.0)
    times = np.arange(301) / 25.0
    cands = candidates("src", [100, 206], [(200, 212)], _luma(300), times, cfg)
    spans = [(c.start, c.end, bool(c.dropped)) for c in cands]
    # hard cut at 100: nothing trimmed; the transition [200, 212) trimmed whole, the cut inside it absorbed
    assert spans == [(0, 100, False), (100, 200, False), (212, 300, False)]
    assert [(c.boundary_start, c.trim_start, c.boundary_end, c.trim_end) for c in cands] == [
        ("source", 0, "cut", 0),
        ("cut", 0, "transition", 12),
        ("transition", 12, "source", 0),
    ]
    # cut_trim_frames trims at hard cuts on request; black frames at scene edges go
    cfg1 = ClipsConfig(min_seconds=1.0, max_seconds=4.0, cut_trim_frames=1)
    luma = _luma(300, fades=[(188, 200)])  # frames 193 and 194 near-black
    got = candidates("src", [100, 195], [], luma, times, cfg1)
    assert [(c.start, c.end, c.trim_start, c.trim_end) for c in got][:3] == [
        (0, 99, 0, 1),
        (101, 193, 1, 2),
        (196, 248, 1, 0),
    ]
    # scenes longer than max_seconds are split into equal chunks <= max_seconds
    long = candidates("src", [], [], _luma(300), times, cfg)
    assert [c.end - c.start for c in long] == [100, 100, 100] and [c.clip_index for c in long] == [0, 1, 2]
    assert [c.boundary_start for c in long] == ["source", "split", "split"]
    # scenes shorter than min_seconds are dropped with a reason
    short = candidates("src", [10], [], _luma(100), times[:101], cfg)
    assert short[0].dropped.startswith("scene too short") and not short[1].dropped
    assert all(c.key.startswith("src_s") for c in cands)


def test_candidates_time_by_timestamps():
    """Durations come from timestamps: a variable-rate scene of 40 frames spanning 2.4 s is kept
    at min_seconds=2 although 40 frames at the nominal 25 fps would be 1.6 s."""
    times = np.concatenate([np.arange(20) / 25.0, 0.8 + np.arange(21) * 0.08])  # 25 fps, then 12.5 fps
    [c] = candidates("src", [], [], _luma(40), times, ClipsConfig(min_seconds=2.0))
    assert not c.dropped and (c.start, c.end) == (0, 40)


@pytest.mark.parametrize(
    "raw, want",
    [
        ([0, 0.04, 0.04, 0.05, 0.12], [0, 0.04, 0.08, 0.12, 0.16]),  # repaired against the repaired time
        ([0, 0.04, -5.0, 0.12, 0.16], [0, 0.04, 0.08, 0.12, 0.16]),  # one spike back
        ([float("nan"), 0.04, float("inf"), 0.12], [0, 0.04, 0.08, 0.12]),
        ([3.0, 3.04, 3.08], [0, 0.04, 0.08]),
        ([5.0, 0.04, 0.08, 0.12], [0, 0.04, 0.08, 0.12]),  # a spike first: never negative
    ],
)
def test_frame_times_always_increase(raw, want):
    from curation.analysis import _frame_times

    t = _frame_times(raw, 25.0)
    assert np.allclose(t[:-1], want) and t[0] == 0 and np.all(np.diff(t) > 0)


def test_fast_detector_scores_equal_scenedetect_frame_by_frame():
    """Our ContentDetector / ThresholdDetector compute scenedetect's per-frame values with cheaper
    OpenCV calls: the values must be identical (not close), for any weights."""
    import numpy as np
    from scenedetect.common import FrameTimecode

    from curation.analysis import ContentDetector, ThresholdDetector, _MeanView, make_detectors

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (72, 128, 3), dtype=np.uint8) for _ in range(6)]
    frames += [np.clip(frames[-1] + rng.integers(-4, 5, frames[-1].shape), 0, 255).astype(np.uint8)] * 3
    frames += [np.full((72, 128, 3), k, np.uint8) for k in (0, 11, 12, 40)]  # through the fade threshold
    for kwargs in ({}, {"luma_only": True}, {"weights": sd.ContentDetector.Components(1.0, 0.25, 2.0, 0.0)}):
        ours, ref = ContentDetector(**kwargs), sd.ContentDetector(**kwargs)
        for i, f in enumerate(frames):
            tc = FrameTimecode(i, fps=25.0)
            assert ours._calculate_frame_score(tc, f) == ref._calculate_frame_score(tc, f), (kwargs, i)
    ours, ref = ThresholdDetector(), sd.ThresholdDetector()
    for i, f in enumerate(frames):
        tc = FrameTimecode(i, fps=25.0)
        assert ours.process_frame(tc, f) == ref.process_frame(tc, f)
    for shape in ((144, 256, 3), (61, 97, 3), (5, 7)):
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.mean(x.view(_MeanView)) == np.mean(x) and type(np.mean(x.view(_MeanView))) is np.float64
    types = [type(d) for d in make_detectors(AnalysisConfig(detectors=["content", "threshold"]))]
    assert types == [ContentDetector, ThresholdDetector]
