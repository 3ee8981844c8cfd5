"""Curation at scale (issue 11, items 5 and 6): a hung source stops at `source_timeout_s`, errors
are retried only when asked, `limit` makes a trial run, hashing happens in the workers, settings
that only change speed leave the hashes alone, a motion threshold change refilters the stored
scores without decoding, and the driver's cost per source stays flat from 200 to 2,000 sources
through both executors (slow).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest
from test_curation_pipeline import ARGS, curate, rows, snapshot  # tests/ is on sys.path

from curation import pipeline
from curation.config import load_config


def _run_info(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())["run"]


def _process_or_hang(task: dict) -> dict:
    """The real per-source stage, except that a source named hang* never finishes (a decoder
    stuck in C code). Module level, so spawned workers import it."""
    if Path(task["source"]["path"]).name.startswith("hang"):
        time.sleep(3600)
    return pipeline.process_source(task)


@pytest.fixture()
def three(synthetic_dir, tmp_path):
    """Three of the synthetic videos, the last one renamed hang.mp4."""
    raw = tmp_path / "raw"
    raw.mkdir()
    videos = sorted(synthetic_dir.glob("*.mp4"))[:3]
    for v, name in zip(videos, ["a.mp4", "b.mp4", "hang.mp4"]):
        shutil.copy(v, raw / name)
    return raw


@pytest.mark.slow  # ~25 s: it waits out the time limit (tests/test_executors.py covers the scheduler fast)
def test_a_hanging_source_is_stopped_at_the_time_limit_and_retried_only_when_asked(
    three, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    monkeypatch.setattr(pipeline, "process_source", _process_or_hang)
    t0 = time.monotonic()
    rep = curate(three, out, "workers=2", "source_timeout_s=10")
    assert time.monotonic() - t0 < 300
    by_name = {Path(r["path"]).name: r for r in rows(out, "sources")}
    assert by_name["hang.mp4"]["status"] == "error" and by_name["hang.mp4"]["reason"].startswith("timeout")
    assert by_name["a.mp4"]["status"] == by_name["b.mp4"]["status"] == "ok"
    assert [f[0] for f in rep["failures"]] == [str(three / "hang.mp4")]
    # a rerun keeps the sealed error; retry_errors=true processes that source again
    again = curate(three, out, "workers=2", "source_timeout_s=10")
    assert _run_info(out)["sources_processed"] == 0 and len(again["failures"]) == 1
    monkeypatch.undo()
    fixed = curate(three, out, "workers=1", "retry_errors=true")
    assert _run_info(out)["sources_processed"] == 1 and fixed["failures"] == [] and fixed["num_ok"] == 3


def test_limit_makes_a_trial_run_and_the_rest_follows(synthetic_dir, tmp_path):
    out = tmp_path / "out"
    rep = curate(synthetic_dir, out, "limit=2")
    got = rows(out, "sources")
    videos = [r for r in got if r["path"].endswith(".mp4")]
    limited = [r for r in videos if r["status"] == "skipped"]
    assert rep["num_ok"] == 2 and len(limited) == 2 and all("limit=2" in r["reason"] for r in limited)
    assert len(json.loads((out / "work" / "hashes.json").read_text())) == 2  # only those were read
    curate(synthetic_dir, out)
    assert _run_info(out)["sources_processed"] == 2
    curate(synthetic_dir, tmp_path / "fresh")
    assert snapshot(out) == snapshot(tmp_path / "fresh")


def _no_driver_hashing(path, chunk=1 << 20):
    raise AssertionError(f"the driver read {path} to hash it")


def test_hashing_runs_in_the_workers_and_unchanged_files_are_not_read_again(
    synthetic_dir, tmp_path, monkeypatch
):
    from curation import discover

    monkeypatch.setattr(discover, "file_sha256", _no_driver_hashing)  # the driver's copy only
    rep = curate(synthetic_dir, tmp_path, "workers=2")
    assert rep["num_ok"] == 4
    rep = curate(synthetic_dir, tmp_path, "workers=1")  # in this process: every hash from the cache
    assert rep["num_ok"] == 4 and _run_info(tmp_path)["sources_processed"] == 0


def test_speed_only_settings_leave_the_hashes_alone(synthetic_dir, tmp_path):
    from curation.config import analysis_hash, config_hash, source_hash

    base = load_config(None, ["raw=r", "out=o"])
    speed = load_config(
        None,
        [
            "raw=r",
            "out=o",
            "analysis.threads=4",
            "extract.seek_gap_seconds=0.5",
            "extract.reuse_decoded_mb=0",
            "workers=3",
            "executor=ray",
        ],
    )
    for h in (config_hash, source_hash, analysis_hash):
        assert h(base) == h(speed), h.__name__
    assert source_hash(base) != source_hash(load_config(None, ["raw=r", "out=o", "motion.fast_mean=0.5"]))
    curate(synthetic_dir, tmp_path)
    curate(
        synthetic_dir,
        tmp_path,
        "analysis.threads=2",
        "extract.seek_gap_seconds=0.1",
        "extract.reuse_decoded_mb=1",
    )
    assert _run_info(tmp_path)["sources_processed"] == 0


def test_turning_captions_on_needs_no_new_analysis():
    """The caption frames are kept whether captioning is on or not: caption.enabled changes no
    record hash (frames_per_clip does)."""
    from curation.config import analysis_hash, source_hash

    off = load_config(None, ["raw=r", "out=o", "caption.enabled=false"])
    on = load_config(None, ["raw=r", "out=o", "caption.enabled=true"])
    for h in (analysis_hash, source_hash):
        assert h(off) == h(on), h.__name__
    more = load_config(None, ["raw=r", "out=o", "caption.enabled=false", "caption.frames_per_clip=7"])
    assert analysis_hash(off) != analysis_hash(more)


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls, self.args = fn, 0, []

    def __call__(self, *a, **kw):
        self.calls += 1
        self.args.append(str(a[0]) if a else "")
        return self.fn(*a, **kw)


def test_a_motion_threshold_change_refilters_the_stored_scores_without_decoding(
    synthetic_dir, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    curate(synthetic_dir, out)
    kept = [c for c in rows(out, "clips") if c["kept"]]
    static = [c for c in rows(out, "clips") if c["stage"] == "motion" and c["reason"].startswith("static")]
    assert len(kept) >= 2 and static, "the synthetic set should keep clips and reject static ones"
    tighter = f"motion.fast_mean={np.median([c['motion_mean'] for c in kept]):.6f}"

    from curation import analysis

    opens, analyses = _Counter(av.open), _Counter(analysis.analyze)
    monkeypatch.setattr(av, "open", opens)
    monkeypatch.setattr(analysis, "analyze", analyses)
    # tighter: some kept clips become `too fast`; no file is opened at all
    curate(synthetic_dir, out, tighter)
    assert _run_info(out)["sources_refiltered"] == 4
    assert opens.calls == 0 and analyses.calls == 0
    tight = rows(out, "clips")
    assert sum(c["kept"] for c in tight) < len(kept)
    assert any(c["stage"] == "motion" and c["reason"].startswith("too fast") for c in tight)
    # looser (static clips pass too): no analysis pass; extraction reads only the sources that
    # gained clips (and opens the new mp4s to count their frames)
    curate(synthetic_dir, out, "motion.static_mean=0.0")
    was_kept = {c["key"] for c in tight if c["kept"]}
    gained_ids = {c["source_id"] for c in rows(out, "clips") if c["kept"] and c["key"] not in was_kept}
    gained = {r["path"] for r in rows(out, "sources") if r["source_id"] in gained_ids}
    sources_read = {p for p in opens.args if p.startswith(str(synthetic_dir))}
    assert analyses.calls == 0 and gained and sources_read == gained
    monkeypatch.undo()
    for name, setting in [("tight", tighter), ("loose", "motion.static_mean=0.0")]:
        curate(synthetic_dir, tmp_path / name, setting)
    assert snapshot(out) == snapshot(tmp_path / "loose")
    curate(synthetic_dir, out, tighter)  # and back: refiltered outputs equal a fresh run's
    assert snapshot(out) == snapshot(tmp_path / "tight")


# ----------------------------------------------------------------------------- 2,000 sources


def tiny_sources(raw: Path, n: int) -> None:
    """`n` distinct tiny mp4 files (64x64, 3 frames, 0.3 s: probed, then rejected as too short)."""
    raw.mkdir(parents=True, exist_ok=True)
    one = raw.parent / "one.mp4"
    with av.open(str(one), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i, np.uint8), format="rgb24")
            c.mux(s.encode(frame))
        c.mux(s.encode())
    data = one.read_bytes()
    for i in range(n):  # trailing bytes after the moov box: same video, distinct content hash
        (raw / f"v{i:05d}.mp4").write_bytes(data + i.to_bytes(8, "little"))


def driver_cpu_per_source(raw: Path, out: Path, *extra: str) -> tuple[float, dict]:
    cfg = load_config(None, [f"raw={raw}", f"out={out}", *ARGS, "workers=2", *extra])
    c0 = time.process_time()  # this process only: the driver, not the workers
    rep = pipeline.run(cfg)
    n = len(rows(out, "sources"))
    return (time.process_time() - c0) / n, rep


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_2000_sources_driver_cost_per_source_stays_flat(executor, tmp_path):
    if executor == "ray":
        pytest.importorskip("ray")
    per = {}
    tiny_sources(tmp_path / "raw_warm", 20)  # imports and first-use costs are paid here
    driver_cpu_per_source(tmp_path / "raw_warm", tmp_path / "out_warm", f"executor={executor}")
    for n in (200, 2000):
        tiny_sources(tmp_path / f"raw{n}", n)
        per[n], rep = driver_cpu_per_source(
            tmp_path / f"raw{n}", tmp_path / f"out{n}", f"executor={executor}"
        )
        got = rows(tmp_path / f"out{n}", "sources")
        assert len(got) == n and all(r["status"] == "rejected" for r in got), rep["failures"][:3]
    marginal = (per[2000] * 2000 - per[200] * 200) / 1800
    print(
        f"\n{executor}: driver CPU per source {per[200] * 1e3:.2f} ms at 200, {per[2000] * 1e3:.2f} ms at "
        f"2000 ({marginal * 1e3:.2f} ms per source added from 200 to 2000)"
    )
    assert per[2000] <= 1.5 * per[200], per
