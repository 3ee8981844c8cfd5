"""Extraction takes the analysis pass's decoded frames instead of decoding them again
(curation/decoded.py): the clips are byte-identical whether the frames come from the window, from
a second decode, or from both, and frames the window holds are never decoded again."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from curation import clips as clips_mod
from curation.analysis import analyze
from curation.clips import ClipSpec, extract
from curation.config import AnalysisConfig, ExtractConfig
from curation.decoded import DecodedFrames


class _Frame:
    """What DecodedFrames reads of an av.VideoFrame: size, format and plane buffer sizes."""

    class _Plane:
        buffer_size = 100

    class _Format:
        name = "yuv420p"

    width, height, format, planes = 8, 8, _Format(), [_Plane()]


def test_the_window_keeps_the_newest_consecutive_frames_within_its_budget():
    w = DecodedFrames(350)  # three 100-byte frames fit
    for i in range(5):
        w.add(i, _Frame())
    assert (w.lo, w.end, w.bytes) == (2, 5, 300)
    assert not w.covers_from(1) and w.covers_from(2) and w.covers_from(4) and not w.covers_from(5)
    assert [i for i, _ in w.iter_from(3)] == [3, 4]
    w.add(9, _Frame())  # a gap: what was held no longer runs to the newest frame
    assert (w.lo, w.end, w.bytes) == (9, 10, 100)
    off = DecodedFrames(0)
    off.add(0, _Frame())
    assert len(off) == 0 and not off.covers_from(0)


@pytest.fixture(scope="module")
def source(synthetic_dir):
    v = json.loads((synthetic_dir / "manifest.json").read_text())["videos"][1]
    return str(synthetic_dir / v["file"]), v


def _extract(source, tmp_path, name, decoded, spans):
    path, v = source
    a = analyze(path, AnalysisConfig(), fps=v["fps"])
    specs = [ClipSpec(f"k{i}", s, e, str(tmp_path / f"{name}{i}.mp4")) for i, (s, e) in enumerate(spans)]
    out = extract(
        path,
        specs,
        source_rate=Fraction(v["fps_fraction"]),
        rotation=0,
        cfg=ExtractConfig(seek_gap_seconds=0.1),
        frame_pts=a.frame_pts,
        frame_times=a.times,
        key_frames=a.key_frames,
        decoded=decoded,
    )
    assert all(not r.error for r in out), [r.error for r in out]
    return [open(s.path, "rb").read() for s in specs]


def test_clips_from_held_frames_equal_clips_decoded_again(source, tmp_path, monkeypatch):
    path, v = source
    n = v["num_frames"]
    spans = [(3, 30), (n // 2, n // 2 + 20), (n - 25, n)]
    decoded_frames = []
    real_decode = clips_mod._decode_from

    def counting(*args, **kwargs):
        for index, frame in real_decode(*args, **kwargs):
            decoded_frames.append(index)
            yield index, frame

    monkeypatch.setattr(clips_mod, "_decode_from", counting)
    again = _extract(source, tmp_path, "again", None, spans)
    assert decoded_frames, "the baseline must decode"

    whole = DecodedFrames(1 << 40)
    analyze(path, AnalysisConfig(), fps=v["fps"], decoded=whole)
    assert (whole.lo, whole.end) == (0, n)
    decoded_frames.clear()
    assert _extract(source, tmp_path, "whole", whole, spans) == again
    assert decoded_frames == []  # nothing decoded a second time

    # a window holding the last 40 frames: the first clip is decoded, the middle one decoded up to
    # where the window starts, the last one taken whole from the window
    frame_bytes = whole.bytes // n
    tail = DecodedFrames(frame_bytes * 40 + frame_bytes // 2)
    analyze(path, AnalysisConfig(), fps=v["fps"], decoded=tail)
    assert (tail.lo, tail.end) == (n - 40, n)
    decoded_frames.clear()
    assert _extract(source, tmp_path, "tail", tail, spans) == again
    assert decoded_frames and max(decoded_frames) < n - 40
    assert not set(range(n - 25, n)) & set(decoded_frames)


def test_curation_outputs_do_not_depend_on_the_window(synthetic_dir, tmp_path, monkeypatch):
    """The whole pipeline with frames held (default), with none held, and with a window smaller
    than every source: the same clips, byte for byte; with the window nothing is decoded again."""
    from curation.config import load_config
    from curation.pipeline import run

    seeks = []
    real_decode = clips_mod._decode_from

    def counting(*args, **kwargs):
        seeks.append(args[1])
        yield from real_decode(*args, **kwargs)

    monkeypatch.setattr(clips_mod, "_decode_from", counting)
    got, decodes = {}, {}
    for mb in (1024, 0, 1):
        seeks.clear()
        out = tmp_path / f"o{mb}"
        run(
            load_config(
                None,
                [
                    f"raw={synthetic_dir}",
                    f"out={out}",
                    "caption.enabled=false",
                    "workers=1",
                    "progress=false",
                    f"extract.reuse_decoded_mb={mb}",
                ],
            )
        )
        got[mb] = {p.name: p.read_bytes() for p in sorted(out.rglob("*.mp4"))}
        decodes[mb] = len(seeks)
    assert got[1024] and got[1024] == got[0] == got[1]
    assert decodes[1024] == 0 and decodes[0] > 0 and decodes[1] > 0, decodes
    assert np.all([len(b) > 0 for b in got[0].values()])


@pytest.fixture(scope="module")
def open_gop(tmp_path_factory):
    """150 frames of a texture drifting a pixel per frame, x264 with open GOPs of 30 and 3 B-frames:
    the B-frames before each key frame (in display order) reference the GOP before it."""
    import av

    path = tmp_path_factory.mktemp("opengop") / "open_gop.mp4"
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (64, 256, 3), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream(
            "libx264",
            rate=25,
            options={"x264-params": "keyint=30:min-keyint=30:bframes=3:open-gop=1:scenecut=0", "crf": "20"},
        )
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for i in range(150):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[:, i : i + 64]), format="rgb24")
            c.mux(s.encode(f))
        c.mux(s.encode())
    return str(path)


def test_open_gop_clips_start_on_their_first_frame_with_or_without_held_frames(open_gop, tmp_path):
    """Clips starting on a leading frame of an open GOP: a seek to the key frame after it drops that
    frame; extraction must seek further back (it used to fail with a frame count mismatch)."""
    a = analyze(open_gop, AnalysisConfig(), fps=25.0)
    assert a.num_frames == 150
    spans = [(29, 41), (89, 101), (118, 131)]
    got = {}
    variants = {  # name: (held frames, frame pts known, key frames known)
        "again": (None, True, True),
        "held": (DecodedFrames(1 << 40), True, True),
        "no_keys": (None, True, False),  # seeks back further and further
        "linear": (None, False, False),  # decodes from the start
    }
    for name, (decoded, with_pts, with_keys) in variants.items():
        if decoded is not None:
            analyze(open_gop, AnalysisConfig(), fps=25.0, decoded=decoded)
        specs = [ClipSpec(f"k{i}", s, e, str(tmp_path / f"{name}{i}.mp4")) for i, (s, e) in enumerate(spans)]
        out = extract(
            open_gop,
            specs,
            source_rate=Fraction(25),
            rotation=0,
            cfg=ExtractConfig(),
            frame_pts=a.frame_pts if with_pts else None,
            frame_times=a.times,
            key_frames=a.key_frames if with_keys else None,
            decoded=decoded,
        )
        assert [r.error for r in out] == ["", "", ""], name
        assert [r.num_frames for r in out] == [e - s for s, e in spans]
        got[name] = [open(s.path, "rb").read() for s in specs]
    assert got["again"] == got["held"] == got["no_keys"] == got["linear"]


def test_the_automatic_budget_leaves_room_on_machines_with_little_memory_per_cpu(monkeypatch):
    from curation import decoded

    monkeypatch.setattr(decoded.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(decoded, "_memory_bytes", lambda: 64 << 30)
    assert decoded.budget_bytes(-1) == decoded.AUTO_MAX_MB << 20  # plenty: the cap
    monkeypatch.setattr(decoded, "_memory_bytes", lambda: 4 << 30)
    assert decoded.budget_bytes(-1) == 512 << 20  # 2 GiB per CPU: a quarter of it
    assert decoded.budget_bytes(0) == 0 and decoded.budget_bytes(3000) == 3000 << 20  # as given
