"""End-to-end curation on synthetic footage with ground truth (issue #3 acceptance).

Runs without CLIP (`caption.enabled=false`: dedup falls back to perceptual hashes). The content
detector runs at threshold 15 (scenedetect's default is 27) because at 27 it misses the synthetic
dissolve out of a shaky scene, which would glue that scene to the next one (15 makes false cuts
in real footage, tests/test_real_footage.py, so it is no default).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import decord
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curation.__main__ import main
from curation.config import CurateConfig, help_text, load_config
from curation.pipeline import ConfigChanged, run

ARGS = [
    "caption.enabled=false",
    "analysis.content.threshold=15",
    "clips.min_seconds=0.5",
    "progress=false",
    "workers=1",
    "val_fraction=0.3",
]


def curate(raw, out, *extra) -> dict:
    return run(load_config(None, [f"raw={raw}", f"out={out}", *ARGS, *extra]))


def rows(out: Path, table: str) -> list[dict]:
    return pq.read_table(out / f"{table}.parquet").to_pylist()


def snapshot(out: Path) -> dict:
    """Everything a user gets, minus timings: tables, shard members (hashed), shard index."""
    shards = {}
    for tar in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar) as t:
            shards[tar.name] = [
                (m.name, hashlib.sha256(t.extractfile(m).read()).hexdigest()) for m in t.getmembers()
            ]
    sources = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows(out, "sources")]
    return {
        "sources": sources,
        "clips": rows(out, "clips"),
        "shards": shards,
        "index": json.loads((out / "shards" / "index.json").read_text()),
    }


def samples(out: Path) -> dict:
    got = {}
    for tar in sorted((out / "shards").glob("*.tar")):
        for s in wds.WebDataset(str(tar), shardshuffle=False):
            got[s["__key__"]] = (tar.name, s)
    return got


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    """>= 8 videos (mixed sizes and fps, hard cuts, fades, dissolves, static and fast spans), curated."""
    from curation.synthetic import generate

    raw = tmp_path_factory.mktemp("raw8")
    manifest = generate(raw, videos=8, seed=11, short_side=96, min_seconds=3.0, max_seconds=5.0)
    out = tmp_path_factory.mktemp("out8")
    rep = curate(raw, out)
    return raw, out, manifest, rep


def _record(out: Path, source_id: str) -> dict:
    return json.loads((out / "work" / source_id / "record.json").read_text())


def test_cuts_and_motion_verdicts_match_ground_truth(eight):
    raw, out, manifest, rep = eight
    sources = {Path(r["path"]).name: r for r in rows(out, "sources")}
    clips = rows(out, "clips")
    assert rep["num_ok"] == 8 and not rep["failures"]
    for v in manifest["videos"]:
        src = sources[v["file"]]
        assert src["status"] == "ok" and src["num_frames"] == v["num_frames"]
        cuts = _record(out, src["source_id"])["cuts"]
        for c in v["cuts"]:  # every hard cut within +-1 frame
            assert any(abs(c - x) <= 1 for x in cuts), (v["file"], c, cuts)
        for span in v["static_spans"] + v["fast_spans"]:  # no cut inside a static or fast span
            assert not [x for x in cuts if span["start"] + 1 < x < span["end"] - 1], (v["file"], span, cuts)
        mine = [c for c in clips if c["source_id"] == src["source_id"] and c["end_frame"] > c["start_frame"]]
        # A dissolve out of (or into) a shaking scene is no linear mix, since the shake dominates every
        # frame, so it gives no evidence of a transition and is not trimmed (curation/scenes.py): its
        # frames, shake included, stay with the calm scene next to it, whose verdict is then open.
        shaky = [t for t in v["transitions"] if any(
            s["motion"] == "fast" and min(abs(t["start"] - s["end"]), abs(t["end"] - s["start"])) <= 1
            for s in v["scenes"])]  # fmt: skip
        for scene in v["scenes"]:
            inside = [c for c in mine if _overlap(c, scene) > 0.5 * (c["end_frame"] - c["start_frame"])]
            assert inside, (v["file"], scene)
            for c in inside:
                if scene["motion"] == "static":
                    assert c["stage"] == "motion" and c["reason"].startswith("static"), (v["file"], scene, c)
                elif scene["motion"] == "fast":
                    assert c["stage"] == "motion" and c["reason"].startswith("too fast"), (
                        v["file"],
                        scene,
                        c,
                    )
                elif not any(_overlap(c, t) for t in shaky):
                    assert c["kept"] and c["stage"] == "kept", (v["file"], scene, c)
        for t in v["transitions"]:  # every other gradual transition is trimmed whole
            for c in mine:
                if c["kept"] and t not in shaky:
                    assert _overlap(c, t) == 0, (v["file"], t, c)


def _overlap(c: dict, scene: dict) -> int:
    return max(0, min(c["end_frame"], scene["end"]) - max(c["start_frame"], scene["start"]))


def test_shards_plain_webdataset_decord_frame_counts_and_splits(eight):
    raw, out, manifest, rep = eight
    clips = {c["key"]: c for c in rows(out, "clips")}
    got = samples(out)
    kept = {k for k, c in clips.items() if c["kept"]}
    assert set(got) == kept and kept
    split_of_source: dict[str, set] = {}
    for key, (tar, s) in got.items():
        meta = json.loads(s["json"])
        vr = decord.VideoReader(io.BytesIO(s["mp4"]))
        assert len(vr) == meta["num_frames"] == meta["end_frame"] - meta["start_frame"]
        assert vr[0].shape == (meta["height"], meta["width"], 3)
        assert s["txt"].decode() == meta["caption"] and meta["caption"]  # the sidecar caption
        assert tar.startswith(meta["split"]) and clips[key]["shard"] == tar
        split_of_source.setdefault(meta["source_id"], set()).add(meta["split"])
    assert all(len(v) == 1 for v in split_of_source.values())
    assert {s for v in split_of_source.values() for s in v} == {"train", "val"}
    index = json.loads((out / "shards" / "index.json").read_text())
    assert index["total_clips"] == len(kept)
    assert sum(sh["count"] for sp in index["splits"].values() for sh in sp["shards"]) == len(kept)
    assert (out / "report.json").exists() and (out / "report.html").exists()
    assert all((out / c["thumb"]).exists() for c in clips.values() if c["end_frame"] > c["start_frame"])


def test_rerun_skips_finished_sources_and_changes_nothing(eight, tmp_path):
    raw, out, manifest, rep = eight
    before = snapshot(out)
    again = curate(raw, out)
    assert again["num_ok"] == 8
    assert json.loads((out / "report.json").read_text())["run"]["sources_processed"] == 0
    assert snapshot(out) == before


def test_changed_config_is_detected_not_mixed(synthetic_dir, tmp_path):
    """An analysis setting (it needs a decode pass again) stops the rerun unless redo is asked for.
    (Motion thresholds refilter instead: tests/test_curation_scale.py.)"""
    curate(synthetic_dir, tmp_path)
    with pytest.raises(ConfigChanged, match="different config"):
        curate(synthetic_dir, tmp_path, "analysis.flow_fps=3")
    assert main([f"raw={synthetic_dir}", f"out={tmp_path}", *ARGS, "analysis.flow_fps=3"]) == 2
    redo = curate(synthetic_dir, tmp_path, "analysis.flow_fps=3", "on_config_change=redo")
    assert redo["num_ok"] == 4
    assert json.loads((tmp_path / "report.json").read_text())["run"]["sources_processed"] == 4


def test_output_only_settings_rebuild_outputs_without_reprocessing_sources(synthetic_dir, tmp_path):
    """Split, dedup and shard settings act on the records: a rerun with new values neither stops
    nor decodes a source again, and its outputs equal a fresh run with those values."""
    curate(synthetic_dir, tmp_path / "a")
    later = ("val_fraction=0.6", "shards.maxcount=2", "dedup.hamming_threshold=2")
    rep = curate(synthetic_dir, tmp_path / "a", *later)
    assert rep["num_ok"] == 4
    assert json.loads((tmp_path / "a" / "report.json").read_text())["run"]["sources_processed"] == 0
    curate(synthetic_dir, tmp_path / "b", *later)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")


def test_bad_inputs_accounted_for_and_good_output_unchanged(synthetic_dir, bad_dir, tmp_path):
    good_out, bad_out = tmp_path / "good", tmp_path / "bad"
    curate(synthetic_dir, good_out)
    assert main([f"raw={bad_dir}", f"out={bad_out}", *ARGS]) == 0  # failures do not fail the run
    manifest = json.loads((bad_dir / "manifest.json").read_text())
    sources = {str(Path(r["path"]).relative_to(bad_dir)): r for r in rows(bad_out, "sources")}
    for b in manifest["bad"]:
        r = sources[b["file"]]
        assert r["reason"] or r["status"] == "ok", b
        if b["expect"] in ("error", "rejected", "ok", "skipped"):
            assert r["status"] == b["expect"], (b, r["status"], r["reason"])
    # every file in RAW has a row (videos, their caption sidecars, the manifest, non-videos); only
    # hidden files are left out
    on_disk = {
        str(p.relative_to(bad_dir))
        for p in bad_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(bad_dir).parts)
    }
    assert ".hidden.mp4" not in {Path(f).name for f in sources}
    assert set(sources) == on_disk
    assert {b["file"] for b in manifest["bad"]} | {v["file"] for v in manifest["videos"]} <= on_disk
    for v in manifest["videos"]:
        assert sources[v["sidecar"]]["status"] == "skipped"
        assert sources[v["sidecar"]]["reason"] == f"caption sidecar of {Path(v['file']).name}"
    assert sources["manifest.json"]["reason"].startswith("not a video")
    # the good videos' clips are exactly those of a run without the bad inputs
    good_clips = rows(good_out, "clips")
    ids = {c["source_id"] for c in good_clips}
    drop = ("shard",)
    same = [
        {k: v for k, v in c.items() if k not in drop} for c in rows(bad_out, "clips") if c["source_id"] in ids
    ]
    assert same == [{k: v for k, v in c.items() if k not in drop} for c in good_clips]
    g, b = samples(good_out), samples(bad_out)
    for key, (_, s) in g.items():
        meta_g, meta_b = json.loads(s["json"]), json.loads(b[key][1]["json"])
        meta_g.pop("source_path"), meta_b.pop("source_path")
        assert s["mp4"] == b[key][1]["mp4"] and meta_g == meta_b


def test_exit_status(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "empty.mp4").write_bytes(b"")
    (raw / "junk.mov").write_bytes(b"\x00junk" * 999)
    assert main([f"raw={raw}", f"out={tmp_path / 'out'}", *ARGS]) == 1  # nothing succeeded
    statuses = sorted(r["status"] for r in rows(tmp_path / "out", "sources"))
    assert statuses == ["error", "error"]
    assert main([f"raw={raw}", "bogus_key=1", f"out={tmp_path / 'out'}"]) == 2


def test_strict_fails_on_any_failure(bad_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    v = json.loads((bad_dir / "manifest.json").read_text())["videos"][0]["file"]
    (raw / "good.mp4").write_bytes((bad_dir / v).read_bytes())
    (raw / "zero.mp4").write_bytes(b"")
    assert main([f"raw={raw}", f"out={tmp_path / 'a'}", *ARGS]) == 0
    assert main([f"raw={raw}", f"out={tmp_path / 'b'}", *ARGS, "strict=true"]) == 1


def test_help_lists_every_key_with_default(capsys):
    import dataclasses

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m curation")

    def keys(cls, prefix=""):
        for f in dataclasses.fields(cls):
            sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            if sub is not None and dataclasses.is_dataclass(sub):
                yield from keys(sub, prefix + f.name + ".")
            else:
                yield prefix + f.name

    for key in keys(CurateConfig):
        assert f"  {key} = " in text, key
    assert help_text() in text


def test_captioning_with_a_tiny_local_model(synthetic_dir, tmp_path):
    """Captions, CLIP scores and float16 embeddings flow from captions.Captioner into shards."""
    import numpy as np

    from curation.captions import save_tiny_model

    tiny = save_tiny_model(tmp_path / "tiny")
    cap = [f"caption.model={tiny['model']}", f"caption.pretrained={tiny['pretrained']}", "caption.device=cpu"]
    out = tmp_path / "out"
    rep = curate(synthetic_dir, out, *cap, "caption.enabled=true")
    assert rep["num_ok"] == 4
    kept = [c for c in rows(out, "clips") if c["kept"]]
    assert kept and all(c["clip_score"] is not None and c["caption"] and c["caption_origin"] for c in kept)
    for _, (_, s) in samples(out).items():
        meta = json.loads(s["json"])
        emb = np.load(io.BytesIO(s["emb.npy"]))
        assert emb.dtype == np.float16 and emb.ndim == 1
        assert s["txt"].decode() == meta["caption"] and meta["caption_candidates"]
        assert meta["clip_calibrated"] is False  # random tiny weights, said in every sample
    report = json.loads((out / "report.json").read_text())
    assert report["clip_calibrated"] is False and "uncalibrated" in report["warning"]
    assert "uncalibrated" in (out / "report.html").read_text()
    # random embeddings must not merge distinct scenes: dedup falls back to the perceptual hash,
    # so the kept clips equal those of a run without captioning
    plain = curate(synthetic_dir, tmp_path / "plain")
    assert plain["num_ok"] == 4
    assert {c["key"] for c in kept} == {c["key"] for c in rows(tmp_path / "plain", "clips") if c["kept"]}


def test_missing_caption_weights_fail_before_any_processing(synthetic_dir, tmp_path):
    out = tmp_path / "out"
    args = [
        f"raw={synthetic_dir}",
        f"out={out}",
        *ARGS,
        "caption.enabled=true",
        f"caption.pretrained={tmp_path / 'absent.pt'}",
    ]
    assert main(args) == 2
    assert not (out / "work").exists()


def test_a_captioning_failure_drops_that_sources_clips_only(synthetic_dir, tmp_path, monkeypatch):
    from curation import captions

    tiny = captions.save_tiny_model(tmp_path / "tiny")
    real = captions.Captioner.caption_clips
    victim = sorted(r.name for r in synthetic_dir.glob("*.mp4"))[0].split("_")[0]

    def flaky(self, items):
        if any(it["key"].startswith(victim) for it in items):
            raise RuntimeError("simulated CUDA error")
        return real(self, items)

    monkeypatch.setattr(captions.Captioner, "caption_clips", flaky)
    out = tmp_path / "out"
    curate(
        synthetic_dir,
        out,
        "caption.enabled=true",
        f"caption.model={tiny['model']}",
        f"caption.pretrained={tiny['pretrained']}",
        "caption.device=cpu",
    )
    clips = rows(out, "clips")
    hit = [c for c in clips if c["key"].startswith(victim) and c["stage"] == "caption"]
    assert hit and all("simulated CUDA error" in c["reason"] and not c["kept"] for c in hit)
    others = [c for c in clips if not c["key"].startswith(victim) and c["kept"]]
    assert others and all(c["clip_score"] is not None for c in others)
    assert set(samples(out)) == {c["key"] for c in others}


def test_byte_identical_copies_are_one_source(synthetic_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    v = sorted(synthetic_dir.glob("*.mp4"))[0]
    (raw / "a.mp4").write_bytes(v.read_bytes())
    (raw / "copy of a.mp4").write_bytes(v.read_bytes())
    curate(raw, tmp_path / "out")
    by_name = {Path(r["path"]).name: r for r in rows(tmp_path / "out", "sources")}
    assert by_name["a.mp4"]["status"] == "ok"
    assert (
        by_name["copy of a.mp4"]["status"] == "rejected"
        and "same content" in by_name["copy of a.mp4"]["reason"]
    )
    assert len({c["source_id"] for c in rows(tmp_path / "out", "clips")}) == 1


def test_small_sets_still_get_a_held_out_source(synthetic_dir, tmp_path):
    def splits(out):
        return {r["source_id"]: r["split"] for r in rows(out, "sources") if r["num_kept"]}

    curate(synthetic_dir, tmp_path / "a", "val_fraction=0.001")
    got = splits(tmp_path / "a")
    assert list(got.values()).count("val") == 1 and len(got) >= 2
    curate(synthetic_dir, tmp_path / "b", "val_fraction=0")
    assert set(splits(tmp_path / "b").values()) == {"train"}


def test_an_extraction_error_is_retried_when_the_encoder_settings_change(synthetic_dir, tmp_path):
    """A source that failed while encoding (here a codec that does not exist) is not carried
    forward under new encoder settings: fixing extract.codec encodes its clips."""
    bad = curate(synthetic_dir, tmp_path, "extract.codec=no_such_codec")
    assert bad["num_ok"] == 0
    assert {r["status"] for r in rows(tmp_path, "sources")} - {"skipped"} == {"error"}
    fixed = curate(synthetic_dir, tmp_path, "on_config_change=redo")
    assert fixed["num_ok"] == 4
    srcs = [r for r in rows(tmp_path, "sources") if r["status"] != "skipped"]
    assert {r["status"] for r in srcs} == {"ok"} and not any("codec" in (r["reason"] or "") for r in srcs)
    assert any(c["kept"] for c in rows(tmp_path, "clips"))
    assert json.loads((tmp_path / "report.json").read_text())["run"]["sources_processed"] == 4


def test_an_edited_source_caption_shows_on_rerun(synthetic_dir, tmp_path):
    """Editing a source's sidecar captions is noticed on rerun (record field caption_inputs):
    clips.parquet and the shards carry the new text without decoding the source again."""
    import shutil

    v = json.loads((synthetic_dir / "manifest.json").read_text())["videos"][0]
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in (v["file"], v["sidecar"]):
        shutil.copy(synthetic_dir / name, raw / name)
    out = tmp_path / "out"
    curate(raw, out)
    assert any(c["caption"] and c["caption_origin"] == "source" for c in rows(out, "clips") if c["kept"])
    side = raw / v["sidecar"]
    doc = json.loads(side.read_text())
    for span in doc["captions"]:
        span["caption"] = "edited: " + span["caption"]
    side.write_text(json.dumps(doc))
    curate(raw, out)
    kept = [c for c in rows(out, "clips") if c["kept"]]
    assert kept and all(c["caption"].startswith("edited: ") for c in kept)
    assert json.loads((out / "report.json").read_text())["run"]["sources_processed"] == 0
    texts = [s["txt"].decode() for _, s in samples(out).values()]
    assert texts and all(t.startswith("edited: ") for t in texts)


def test_half_written_clips_are_cleaned_up(synthetic_dir, tmp_path):
    """A worker killed at its time limit leaves <key>.mp4.tmp behind; the source's next pass
    (here a refilter) removes it."""
    curate(synthetic_dir, tmp_path)
    src = next(r for r in rows(tmp_path, "sources") if r["status"] == "ok")
    stale = tmp_path / "work" / src["source_id"] / "clips" / "killed.mp4.tmp"
    stale.write_bytes(b"half an mp4")
    curate(synthetic_dir, tmp_path, "motion.fast_mean=0.9")
    assert json.loads((tmp_path / "report.json").read_text())["run"]["sources_refiltered"] == 4
    assert not stale.exists()
