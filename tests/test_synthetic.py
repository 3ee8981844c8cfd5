"""The synthetic footage must match its own manifest when decoded with decord."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import decord
import numpy as np
import pytest

from curation.synthetic import ASPECTS, FRAME_RATES, generate


def _frames(path):
    vr = decord.VideoReader(str(path))
    return vr, vr.get_batch(list(range(len(vr)))).asnumpy().astype(np.int16)  # (N, H, W, 3)


def _diff(frames):
    """Mean absolute difference between consecutive frames: d[k] compares k and k+1."""
    return np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))


@pytest.fixture(scope="module")
def decoded(synthetic_dir, synthetic_manifest):
    return {v["file"]: _frames(synthetic_dir / v["file"]) for v in synthetic_manifest["videos"]}


def test_manifest_frame_counts_fps_and_sizes(synthetic_manifest, decoded):
    for v in synthetic_manifest["videos"]:
        vr, frames = decoded[v["file"]]
        assert len(vr) == v["num_frames"], v["file"]
        assert frames.shape[1:3] == (v["height"], v["width"]), v["file"]
        assert vr.get_avg_fps() == pytest.approx(v["fps"], rel=1e-4), v["file"]
        num, den = map(int, v["fps_fraction"].split("/"))
        assert num / den == pytest.approx(v["fps"])
        assert v["duration"] == pytest.approx(v["num_frames"] / v["fps"])


def test_scenes_tile_the_video(synthetic_manifest):
    for v in synthetic_manifest["videos"]:
        spans = sorted(
            [(s["start"], s["end"]) for s in v["scenes"]] + [(t["start"], t["end"]) for t in v["transitions"]]
        )
        assert spans[0][0] == 0 and spans[-1][1] == v["num_frames"]
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), v["file"]
        assert v["cuts"] == [
            s["start"] for s in v["scenes"][1:] if s["start"] not in {t["end"] for t in v["transitions"]}
        ]


def test_cut_frames_really_change(synthetic_manifest, decoded):
    for v in synthetic_manifest["videos"]:
        d = _diff(decoded[v["file"]][1])
        within = np.concatenate([d[s["start"] : s["end"] - 1] for s in v["scenes"]])
        assert v["cuts"]
        for cut in v["cuts"]:
            assert d[cut - 1] > 5 * within.max() or d[cut - 1] > 40, (v["file"], cut, d[cut - 1])
        for s in v["scenes"]:  # no frame-to-frame jump inside a scene looks like a cut
            assert d[s["start"] : s["end"] - 1].max() < 30, (v["file"], s)


def test_static_spans_identical_and_fast_spans_move_most(synthetic_manifest, decoded):
    saw_static = saw_fast = 0
    for v in synthetic_manifest["videos"]:
        frames = decoded[v["file"]][1]
        d = _diff(frames)
        for s in v["static_spans"]:
            span = frames[s["start"] : s["end"]]
            assert (span == span[0]).all(), (v["file"], s)  # exactly frozen, pixel for pixel
            saw_static += 1
        normal = [d[s["start"] : s["end"] - 1].mean() for s in v["scenes"] if s["motion"] == "normal"]
        for s in v["fast_spans"]:
            assert d[s["start"] : s["end"] - 1].mean() > 2 * max(normal), (v["file"], s)
            saw_fast += 1
        for s in v["scenes"]:
            if s["motion"] == "normal":
                assert d[s["start"] : s["end"] - 1].min() > 0, "normal scenes move every frame"
    assert saw_static and saw_fast


def test_gradual_transition_present_and_gradual(synthetic_manifest, decoded):
    kinds = set()
    for v in synthetic_manifest["videos"]:
        frames = decoded[v["file"]][1]
        d = _diff(frames)
        for t in v["transitions"]:
            kinds.add(t["kind"])
            assert t["end"] - t["start"] >= 8
            assert d[t["start"] - 1 : t["end"]].max() < 30  # no hard jump anywhere in it
            if t["kind"] == "fade":  # passes through black
                assert frames[t["start"] : t["end"]].mean(axis=(1, 2, 3)).min() < 20
    assert kinds  # the fixture has at least one gradual transition


def test_sidecar_captions_per_scene(synthetic_dir, synthetic_manifest):
    for v in synthetic_manifest["videos"]:
        side = json.loads((synthetic_dir / v["sidecar"]).read_text())
        assert [(c["start_frame"], c["end_frame"]) for c in side["captions"]] == [
            (s["start"], s["end"]) for s in v["scenes"]
        ]
        assert all(c["caption"] for c in side["captions"])
        static = {(s["start"], s["end"]) for s in v["static_spans"]}
        for c in side["captions"]:
            if (c["start_frame"], c["end_frame"]) in static:
                assert "still" in c["caption"]


def test_covers_sizes_and_frame_rates(tmp_path):
    m = generate(tmp_path, videos=5, seed=3, short_side=32, min_seconds=1.0, max_seconds=1.5)
    for name, aspect in ASPECTS:  # every aspect ratio appears (up to rounding to even sizes)
        assert any(abs(v["width"] / v["height"] - aspect) < 0.05 * aspect for v in m["videos"]), name
    assert {v["fps"] for v in m["videos"]} == {float(f) for f in FRAME_RATES}
    defaults = generate.__kwdefaults__  # by default: the 5-20 s footage the issue asks for
    assert (defaults["min_seconds"], defaults["max_seconds"]) == (5.0, 20.0)
    with pytest.raises(ValueError, match="short_side"):
        generate(tmp_path / "x", short_side=8)


def test_same_seed_byte_identical_other_seed_differs(tmp_path):
    kw = dict(videos=2, short_side=48, min_seconds=2.0, max_seconds=3.0)
    generate(tmp_path / "a", seed=7, **kw)
    generate(tmp_path / "b", seed=7, **kw)
    generate(tmp_path / "c", seed=8, **kw)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "manifest.json").read_bytes() != (tmp_path / "c" / "manifest.json").read_bytes()


def test_bad_inputs(bad_dir):
    m = json.loads((bad_dir / "manifest.json").read_text())
    kinds = {b["kind"]: b for b in m["bad"]}
    assert {"zero_byte", "truncated", "random_bytes", "audio_only", "one_frame", "corrupted_mid"} <= set(
        kinds
    )
    for b in m["bad"]:
        assert (bad_dir / b["file"]).exists(), b
        assert b["expect"] in {"error", "rejected", "ok", "skipped", "any"} and b["why"]
    assert (bad_dir / kinds["zero_byte"]["file"]).stat().st_size == 0
    for kind in ("zero_byte", "truncated", "random_bytes"):
        with pytest.raises(av.error.FFmpegError):
            av.open(str(bad_dir / kinds[kind]["file"])).close()
    with av.open(str(bad_dir / kinds["audio_only"]["file"])) as c:
        assert len(c.streams.video) == 0 and len(c.streams.audio) == 1
    assert len(decord.VideoReader(str(bad_dir / kinds["one_frame"]["file"]))) == 1
    assert len(m["videos"]) == 4  # the good files are still there


def test_cli(tmp_path):
    out = tmp_path / "raw"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "curation.synthetic",
            str(out),
            "--videos",
            "1",
            "--seed",
            "1",
            "--short-side",
            "32",
            "--min-seconds",
            "1",
            "--max-seconds",
            "1.5",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote 1 videos" in r.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert len(decord.VideoReader(str(out / m["videos"][0]["file"]))) == m["videos"][0]["num_frames"]
