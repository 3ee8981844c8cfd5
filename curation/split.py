"""Train / val split by source: a deterministic fraction of source ids (by hash), so no source
feeds both splits and a rerun (or a bigger run) keeps every source on its side."""

from __future__ import annotations

import hashlib


def unit(source_id: str) -> float:
    """A uniform number in [0, 1) fixed by the source id."""
    return int(hashlib.sha256(source_id.encode()).hexdigest()[:12], 16) / float(1 << 48)


def split_of(source_id: str, val_fraction: float) -> str:
    """'val' for a deterministic `val_fraction` of source ids (by hash), else 'train'."""
    return "val" if unit(source_id) < val_fraction else "train"


def assign_splits(records: list[dict], clips: list[dict], val_fraction: float) -> None:
    """Set `split` on every ok record and on every clip (None for failed sources)."""
    by_sid = {r["source_id"]: r for r in records if r["status"] == "ok"}
    for rec in records:
        rec["split"] = split_of(rec["source_id"], val_fraction) if rec["status"] == "ok" else None
    with_clips = sorted({c["source_id"] for c in clips if c["kept"]}, key=unit)
    if val_fraction > 0 and len(with_clips) >= 2 and not any(by_sid[s]["split"] == "val" for s in with_clips):
        by_sid[with_clips[0]]["split"] = "val"  # few sources: hold out at least the lowest-hash one
    for c in clips:
        c["split"] = by_sid[c["source_id"]]["split"] if c["source_id"] in by_sid else None
