"""Stage 3, from the sealed records alone and deterministically: captions read back, dedup,
split by source, shards, sources.parquet / clips.parquet and the report. Each step lives in the
module its name says; this file only puts them in order."""

from __future__ import annotations

from pathlib import Path

from curation.config import CurateConfig


def finalize(records: list[dict], cfg: CurateConfig, out: Path, run: dict) -> dict:
    from curation import report
    from curation.captioning import apply_captions, load_captions
    from curation.dedup import mark_duplicates
    from curation.shards import shard_samples, write_shards
    from curation.split import assign_splits
    from curation.tables import write_tables

    records = sorted(records, key=lambda r: (r["source_id"], r["path"]))
    captions, embeddings, caption_errors, infos = (
        load_captions(records, out) if cfg.caption.enabled else ({}, {}, {}, [])
    )
    calibrated = all(i.get("calibrated", True) for i in infos)
    if infos:
        run["caption"] = dict(infos[0], calibrated=calibrated)  # report.py prints `uncalibrated`
    clips = [c for rec in records for c in rec["clips"]]
    apply_captions(clips, captions, caption_errors)
    mark_duplicates(clips, embeddings, calibrated, cfg.dedup)
    assign_splits(records, clips, cfg.val_fraction)
    samples = shard_samples(clips, records, out, embeddings, calibrated)
    where = write_shards(
        out, samples, maxcount=cfg.shards.maxcount, maxsize=cfg.shards.maxsize, progress=cfg.progress
    )
    for c in clips:
        c["shard"] = where.get(c["key"])
    sources_tbl, clips_tbl = write_tables(out, records, clips)
    return report.write_report(out, sources_tbl, clips_tbl, run)
