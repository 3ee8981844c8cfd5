"""The curation report (curation/report.py) on small hand-made tables (columns per the contract)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curation.report import write_report

F, INT, S, B = pa.float64(), pa.int64(), pa.string(), pa.bool_()
SOURCE_SCHEMA = pa.schema(
    [("source_id", S), ("path", S), ("status", S), ("reason", S), ("duration", F), ("fps", F)]
    + [
        ("variable_fps", B),
        ("num_frames", INT),
        ("width", INT),
        ("height", INT),
        ("rotation", INT),
        ("codec", S),
    ]
    + [
        ("num_scenes", INT),
        ("num_clips", INT),
        ("num_kept", INT),
        ("seconds_kept", F),
        ("split", S),
        ("elapsed_s", F),
    ]
)
CLIP_SCHEMA = pa.schema(
    [
        ("key", S),
        ("source_id", S),
        ("scene_index", INT),
        ("clip_index", INT),
        ("start_frame", INT),
        ("end_frame", INT),
    ]
    + [
        ("start_seconds", F),
        ("end_seconds", F),
        ("num_frames", INT),
        ("duration", F),
        ("fps", F),
        ("width", INT),
    ]
    + [
        ("height", INT),
        ("motion_mean", F),
        ("motion_peak", F),
        ("frame_diff_mean", F),
        ("kept", B),
        ("stage", S),
    ]
    + [("reason", S), ("clip_score", F), ("caption", S), ("caption_origin", S), ("duplicate_of", S)]
    + [("split", S), ("shard", S), ("thumb", S)]
)


def _sources() -> pa.Table:
    rows = [
        dict(
            source_id="a",
            path="raw/a.mp4",
            status="ok",
            reason="",
            duration=3600.0,
            num_scenes=3,
            split="train",
        ),
        dict(
            source_id="b",
            path="raw/b.mp4",
            status="ok",
            reason="",
            duration=1800.0,
            num_scenes=2,
            split="val",
        ),
        dict(
            source_id="c",
            path="raw/c.mp4",
            status="rejected",
            reason="too short: 0.40 s < probe.min_seconds=1",
            duration=0.4,
        ),
        dict(
            source_id="d",
            path="raw/d.mp4",
            status="error",
            reason="Unreadable: moov atom not found",
            duration=None,
        ),
        dict(
            source_id="e",
            path="raw/e.mp4",
            status="rejected",
            reason="too short: 0.20 s < probe.min_seconds=1",
            duration=0.2,
        ),
    ]
    return pa.Table.from_pylist(rows, schema=SOURCE_SCHEMA)


# (key, source, stage, reason, duration, motion, clip_score, split, width, height, fps)
_CLIPS = [
    (
        "a_s0000_c00",
        "a",
        "scene",
        "scene too short: 0.50 s after trimming < clips.min_seconds=2",
        0.5,
        None,
        None,
        "train",
        320,
        180,
        25.0,
    ),
    (
        "a_s0001_c00",
        "a",
        "motion",
        "static: motion_mean 0.001 < motion.static_mean=0.01",
        4.0,
        0.001,
        None,
        "train",
        320,
        180,
        25.0,
    ),
    (
        "a_s0001_c01",
        "a",
        "motion",
        "static: motion_mean 0.002 < motion.static_mean=0.01",
        6.0,
        0.002,
        None,
        "train",
        320,
        180,
        25.0,
    ),
    (
        "a_s0002_c00",
        "a",
        "motion",
        "too fast: motion_mean 1.2 > motion.fast_mean=0.8",
        5.0,
        1.2,
        None,
        "train",
        320,
        180,
        25.0,
    ),
    ("a_s0002_c01", "a", "extract", "ValueError: encoder failed", 3.0, 0.1, None, "train", 320, 180, 25.0),
    ("a_s0002_c02", "a", "dedup", "near-duplicate of a_s0002_c03", 7.0, 0.2, 0.31, "train", 320, 180, 25.0),
    ("a_s0002_c03", "a", "kept", "", 8.0, 0.2, 0.33, "train", 320, 180, 25.0),
    ("a_s0002_c04", "a", "kept", "", 10.0, 0.3, 0.29, "train", 320, 180, 25.0),
    ("b_s0000_c00", "b", "kept", "", 12.0, 0.4, 0.27, "val", 180, 320, 29.97),
]


def _clips(with_scores: bool = True) -> pa.Table:
    rows = []
    for key, src, stage, reason, dur, motion, score, split, w, h, fps in _CLIPS:
        rows.append(
            dict(
                key=key, source_id=src, stage=stage, reason=reason, duration=dur, motion_mean=motion,
                clip_score=score if with_scores else None, split=split, width=w, height=h, fps=fps,
                kept=stage == "kept", caption=f"caption of {key}" if stage == "kept" else "",
                thumb=f"thumbs/{key}.jpg",
            )
        )  # fmt: skip
    return pa.Table.from_pylist(rows, schema=CLIP_SCHEMA)


def _write_thumbs(out: Path, keys: list[str]) -> None:
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    for i, key in enumerate(keys):
        strip = np.full((24, 96, 3), 40 * i % 255, np.uint8)
        ok, buf = cv2.imencode(".jpg", strip)
        assert ok
        (out / "thumbs" / f"{key}.jpg").write_bytes(buf.tobytes())


RUN = {"elapsed_s": 60.0, "config_hash": "abc123", "workers": 2, "executor": "local", "source_frames": 6000}


class _Refs(HTMLParser):
    """Every src/href attribute value and every tag name of a page."""

    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [
            v for k, v in attrs if k in ("src", "href", "srcset", "data", "action") and v is not None
        ]


def _parse(path: Path) -> _Refs:
    p = _Refs()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_funnel_counts_hours_rejects_and_throughput(tmp_path):
    keys = [c[0] for c in _CLIPS]
    _write_thumbs(tmp_path, keys)
    rep = write_report(tmp_path, _sources(), _clips(), {**RUN, "caption": {"calibrated": True}})
    assert json.loads((tmp_path / "report.json").read_text()) == rep
    funnel = {r["stage"]: (r["count"], r["hours"]) for r in rep["funnel"]}
    h = 1 / 3600
    assert funnel["discovered"] == (5, pytest.approx(5400.6 * h))
    assert funnel["probed ok"] == (2, pytest.approx(1.5))
    assert funnel["scenes"] == (5, None)
    assert funnel["candidate clips"] == (9, pytest.approx(55.5 * h))
    assert funnel["after motion"] == (5, pytest.approx(40.0 * h))
    assert funnel["extracted"] == (4, pytest.approx(37.0 * h))
    assert funnel["captioned"] == (4, pytest.approx(37.0 * h))
    assert funnel["after dedup"] == (3, pytest.approx(30.0 * h))
    assert funnel["train kept"] == (2, pytest.approx(18.0 * h))
    assert funnel["val kept"] == (1, pytest.approx(12.0 * h))
    assert rep["kept"] == {
        "train": {"clips": 2, "hours": pytest.approx(18 * h)},
        "val": {"clips": 1, "hours": pytest.approx(12 * h)},
    }
    assert rep["sources"] == {"error": 1, "ok": 2, "rejected": 2}
    assert rep["hours_in"] == pytest.approx(5400.6 * h) and rep["hours_out"] == pytest.approx(30 * h)
    src = {(r["status"], r["reason"]): r["count"] for r in rep["rejects"]["sources"]}
    assert src == {("error", "Unreadable"): 1, ("rejected", "too short"): 2}
    clips = [(r["stage"], r["reason"], r["count"]) for r in rep["rejects"]["clips"]]
    assert clips == [
        ("scene", "scene too short", 1),
        ("motion", "static", 2),
        ("motion", "too fast", 1),
        ("extract", "ValueError", 1),
        ("dedup", "near-duplicate", 1),
    ]
    tp = rep["throughput"]
    assert tp["elapsed_s"] == 60.0
    assert tp["sources_per_s"] == pytest.approx(5 / 60)
    assert tp["source_hours_per_hour"] == pytest.approx(1.5 * 3600 / 60)
    assert tp["kept_clips_per_s"] == pytest.approx(3 / 60)
    assert tp["source_frames_per_s"] == pytest.approx(100.0)
    dur = rep["histograms"]["duration"]
    assert sum(dur["candidates"]["counts"]) == 9 and sum(dur["kept"]["counts"]) == 3
    assert sum(rep["histograms"]["clip_score"]["kept"]["counts"]) == 3
    aspect = rep["histograms"]["aspect_ratio"]["kept"]
    assert aspect["edges"][0] == pytest.approx(180 / 320) and aspect["edges"][-1] == pytest.approx(320 / 180)
    assert rep["captioning"] == "on" and rep["clip_calibrated"] is True and "warning" not in rep


def test_html_is_self_contained_with_plots_and_thumbnails(tmp_path):
    keys = [c[0] for c in _CLIPS]
    _write_thumbs(tmp_path, [k for k in keys if k != "a_s0002_c04"])  # one thumb missing
    write_report(tmp_path, _sources(), _clips(), RUN, thumbs_per_reason=1)
    page = tmp_path / "report.html"
    refs = _parse(page)
    assert refs.refs and all(r.startswith("data:") for r in refs.refs), "no external src/href"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text and "<script" not in text
    pngs = [r for r in refs.refs if r.startswith("data:image/png;base64,")]
    assert len(pngs) == 5  # duration, motion, CLIP score, aspect ratio, fps
    for r in pngs:
        assert base64.b64decode(r.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    jpegs = [r for r in refs.refs if r.startswith("data:image/jpeg;base64,")]
    # one per group (thumbs_per_reason=1): kept + scene + static + too fast + extract + dedup
    assert len(jpegs) == 6
    assert all(base64.b64decode(r.split(",", 1)[1])[:2] == b"\xff\xd8" for r in jpegs)
    assert "rejected at motion: static (2)" in text and "kept (3)" in text
    order = [
        text.index(f"rejected at {s}")
        for s in ("scene", "motion: static", "motion: too fast", "extract", "dedup")
    ]
    assert text.index("kept (3)") < order[0] and order == sorted(order)  # pipeline order, then by count
    assert "uncalibrated" not in text and "calibration not recorded" in text


def test_missing_thumbnails_and_paths_outside_out_are_not_embedded(tmp_path):
    (tmp_path / "secret.jpg").write_bytes(b"\xff\xd8 not for the report")
    clips = _clips().to_pylist()
    clips[6]["thumb"] = "../secret.jpg"  # the kept clip a_s0002_c03
    out = tmp_path / "out"
    write_report(out, _sources(), pa.Table.from_pylist(clips, schema=CLIP_SCHEMA), RUN)
    refs = _parse(out / "report.html")
    assert not [r for r in refs.refs if r.startswith("data:image/jpeg")]
    assert (out / "report.html").read_text().count("missing thumbnail") == len(_CLIPS)


def test_empty_tables(tmp_path):
    rep = write_report(tmp_path, SOURCE_SCHEMA.empty_table(), CLIP_SCHEMA.empty_table(), {})
    assert all(r["count"] == 0 for r in rep["funnel"])
    assert rep["rejects"] == {"sources": [], "clips": []} and rep["captioning"] == "off"
    assert rep["throughput"] == {"elapsed_s": None}
    assert all(h["candidates"]["counts"] == [] for h in rep["histograms"].values())
    assert "no data" not in (tmp_path / "report.html").read_text()  # the word lives in the PNGs
    assert len([r for r in _parse(tmp_path / "report.html").refs if r.startswith("data:image/png")]) == 5


def test_captioning_off_all_null_clip_scores(tmp_path):
    rep = write_report(
        tmp_path, _sources(), _clips(with_scores=False), {**RUN, "caption": {"calibrated": False}}
    )
    assert rep["captioning"] == "off" and rep["clip_calibrated"] is None
    assert dict((r["stage"], r["count"]) for r in rep["funnel"])["captioned"] == 0
    assert rep["histograms"]["clip_score"]["kept"]["counts"] == []
    assert "uncalibrated" not in (tmp_path / "report.html").read_text()


def test_random_clip_weights_are_reported_uncalibrated(tmp_path):
    rep = write_report(
        tmp_path, _sources(), _clips(), {**RUN, "caption": {"calibrated": False, "model": "tiny"}}
    )
    assert rep["clip_calibrated"] is False and "uncalibrated" in rep["warning"]
    assert "uncalibrated" in (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["run"]["caption"]["model"] == "tiny"


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium installed")
def test_html_renders_in_headless_chromium(tmp_path):
    _write_thumbs(tmp_path, [c[0] for c in _CLIPS])
    write_report(tmp_path, _sources(), _clips(), RUN)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
         f"--user-data-dir={tmp_path / 'profile'}", "--no-first-run", "--disable-background-networking",
         "--window-size=1200,2400", (tmp_path / "report.html").as_uri()],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    # PIL, not cv2: after Ray has loaded its own zlib in this process, OpenCV's libpng fails to
    # decode ("bad parameters to zlib") — a library clash of the test process, not of the report
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.std() > 5  # something was drawn
