"""Frame-accurate extraction: exact frame counts and content, seeking == decoding through, fps
normalisation, downscaling to even sizes, rotation applied."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import decord
import numpy as np
import pytest

from curation.analysis import analyze
from curation.clips import ClipSpec, extract
from curation.config import AnalysisConfig, ExtractConfig
from curation.probe import probe


def frames_of(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.int16)


@pytest.fixture(scope="module")
def source(synthetic_dir):
    v = json.loads((synthetic_dir / "manifest.json").read_text())["videos"][1]
    return synthetic_dir / v["file"], v


def test_clips_hold_exactly_their_frames_and_seeking_changes_nothing(source, tmp_path):
    path, v = source
    a = analyze(str(path), AnalysisConfig(), fps=v["fps"])
    n = v["num_frames"]
    spans = [(0, 20), (n // 2, n // 2 + 17), (n - 25, n)]
    cfg = ExtractConfig(crf=0, preset="ultrafast", seek_gap_seconds=0.1)
    seek = [ClipSpec(f"k{i}", s, e, str(tmp_path / f"seek{i}.mp4")) for i, (s, e) in enumerate(spans)]
    seq = [ClipSpec(f"k{i}", s, e, str(tmp_path / f"seq{i}.mp4")) for i, (s, e) in enumerate(spans)]
    rate = Fraction(v["fps_fraction"])
    out_seek = extract(str(path), seek, source_rate=rate, rotation=0, cfg=cfg, frame_pts=a.frame_pts)
    out_seq = extract(str(path), seq, source_rate=rate, rotation=0, cfg=cfg, frame_pts=None)
    src = frames_of(path)
    for (s, e), r1, r2, c1, c2 in zip(spans, out_seek, out_seq, seek, seq):
        assert not r1.error and r1.num_frames == r2.num_frames == e - s
        assert open(c1.path, "rb").read() == open(c2.path, "rb").read()
        clip = frames_of(c1.path)
        # near-lossless encode: each clip frame matches its own source frame far better than a neighbour
        err = np.abs(clip - src[s:e]).mean(axis=(1, 2, 3))
        assert err.max() < 2.0
        if s > 0:
            assert np.abs(clip[0] - src[s - 1]).mean() > 2 * err[0]


def test_fps_normalisation_and_downscale_to_even_sizes(source, tmp_path):
    path, v = source
    rate = Fraction(v["fps_fraction"])
    cfg = ExtractConfig(fps=12.0, max_short_side=63)
    n = 50
    [r] = extract(
        str(path), [ClipSpec("k", 10, 10 + n, str(tmp_path / "k.mp4"))], source_rate=rate, rotation=0, cfg=cfg
    )
    want = int(n * 12 / float(rate))
    assert not r.error and r.num_frames == want and r.fps == 12.0
    vr = decord.VideoReader(str(tmp_path / "k.mp4"))
    assert len(vr) == want and vr.get_avg_fps() == pytest.approx(12.0)
    h, w = vr[0].shape[:2]
    assert (w, h) == (r.width, r.height) and w % 2 == 0 and h % 2 == 0 and min(w, h) <= 63


def test_rotation_is_applied(tmp_path):
    from curation.synthetic import encode_video

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(12)]
    path = tmp_path / "rot.mp4"
    encode_video(path, frames, Fraction(24), 64, 48)
    rotated = tmp_path / "rot90.mp4"
    with av.open(str(path)) as src, av.open(str(rotated), "w", format="mp4") as dst:
        s_in = src.streams.video[0]
        s_out = dst.add_stream_from_template(s_in)
        s_out.set_display_rotation(90)
        for packet in src.demux(s_in):
            if packet.dts is not None:
                packet.stream = s_out
                dst.mux(packet)
    info = probe(str(rotated))
    if info.rotation == 0:
        pytest.skip("this PyAV/FFmpeg does not report display rotation on decoded frames")
    assert (info.width, info.height) == (48, 64)
    [r] = extract(
        str(rotated),
        [ClipSpec("k", 0, 12, str(tmp_path / "k.mp4"))],
        source_rate=Fraction(24),
        rotation=info.rotation,
        cfg=ExtractConfig(),
    )
    assert not r.error and (r.width, r.height) == (48, 64) and r.num_frames == 12


def test_constant_rate_on_a_millisecond_clock_is_not_variable(tmp_path):
    """29.97 fps in Matroska (1 ms time base: gaps alternate 33 / 34 ms) is constant-rate: its
    clip is written evenly at 30000/1001 fps and stated so."""
    from curation.clips import is_variable

    path = tmp_path / "a.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(30000, 1001))
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(60):
            img = np.full((48, 64, 3), (i * 4) % 256, np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(s.encode())
    with av.open(str(path)) as c:
        assert c.streams.video[0].time_base == Fraction(1, 1000)
    info = probe(str(path))
    a = analyze(str(path), AnalysisConfig(), fps=info.fps)
    assert set(np.round(np.diff(a.times[:-1]) * 1000).astype(int)) == {33, 34}
    assert not info.variable_fps and not is_variable(a.times)
    [out] = extract(
        str(path),
        [ClipSpec("k", 5, 55, str(tmp_path / "k.mp4"))],
        source_rate=info.rate,
        rotation=0,
        cfg=ExtractConfig(preset="ultrafast"),
        frame_pts=a.frame_pts,
        frame_times=a.times,
    )
    assert not out.error and not out.variable_fps and out.num_frames == 50
    assert out.fps == pytest.approx(30000 / 1001, rel=1e-6)


def test_stretch_rate_of_an_even_stretch():
    from curation.clips import stretch_rate

    avg = Fraction(24)
    assert stretch_rate(np.arange(51) * 0.02, avg) == 50
    ms = np.floor(np.arange(61) * 1000 * 1001 / 30000) / 1000  # 29.97 fps on a 1 ms clock
    assert stretch_rate(ms, avg) == Fraction(30000, 1001)
    assert stretch_rate(np.arange(31) / 37.0, avg) == 37  # no common rate: the gap's own


def test_verification_counts_what_the_file_holds(source, tmp_path):
    """Written clips are checked by their packet count (+ first frame decoded): it equals a full
    decode's count, and a file holding fewer frames than the clip claims is an error."""
    from curation.clips import _verify, count_frames, held_frames

    path, v = source
    rate = Fraction(v["fps_fraction"])
    specs = [ClipSpec(f"k{i}", s, s + 23 + i, str(tmp_path / f"k{i}.mp4")) for i, s in enumerate((0, 31, 70))]
    for cfg in (ExtractConfig(), ExtractConfig(codec="mpeg4"), ExtractConfig(fps=12.0)):
        for r, spec in zip(extract(str(path), specs, source_rate=rate, rotation=0, cfg=cfg), specs):
            assert not r.error and held_frames(spec.path) == count_frames(spec.path) == r.num_frames
    spec, n = specs[0], count_frames(specs[0].path)  # a writer that claims one frame more than it wrote
    w = type("W", (), {"count": n + 1, "rate": rate, "size": (v["width"], v["height"])})()
    r = _verify(ClipSpec("k0", 0, n + 1, spec.path), w, n + 1, np.arange(200) / float(rate), False)
    assert r.error == f"frame count mismatch: wrote {n + 1}, file holds {n}, expected {n + 1}", r.error
    assert not (tmp_path / "k0.mp4").exists()  # a clip that fails verification is removed


def test_seeking_at_key_frames_writes_the_same_bytes(source, tmp_path):
    """With the analysis pass's key frames, extraction seeks to a key frame inside any gap between
    clips (short gaps included) and decodes through only when there is none: same bytes."""
    from curation.clips import _segments

    path, v = source
    a = analyze(str(path), AnalysisConfig(), fps=v["fps"])
    assert a.key_frames[0] == 0 and len(a.key_frames) > 1
    k = a.key_frames[1]
    spans = [(0, k - 5), (k, k + 12), (k + 14, k + 20)]  # a 5-frame gap holding key frame k, then none
    specs = {
        name: [ClipSpec(f"c{i}", s, e, str(tmp_path / f"{name}{i}.mp4")) for i, (s, e) in enumerate(spans)]
        for name in ("keys", "seq")
    }
    final = {f"c{i}": e - 1 for i, (s, e) in enumerate(spans)}
    assert _segments(specs["keys"], final, 1 << 62, a.key_frames) == [(0, k - 6), (k, k + 19)]
    assert _segments(specs["keys"], final, 1 << 62) == [(0, k + 19)]
    rate, cfg = Fraction(v["fps_fraction"]), ExtractConfig(preset="ultrafast")
    out = extract(
        str(path),
        specs["keys"],
        source_rate=rate,
        rotation=0,
        cfg=cfg,
        frame_pts=a.frame_pts,
        key_frames=a.key_frames,
    )
    ref = extract(str(path), specs["seq"], source_rate=rate, rotation=0, cfg=cfg, frame_pts=None)
    for r1, r2, c1, c2 in zip(out, ref, specs["keys"], specs["seq"]):
        assert not r1.error and r1.num_frames == r2.num_frames == c1.end - c1.start
        assert open(c1.path, "rb").read() == open(c2.path, "rb").read()
