"""After the per-source stage: captions (one model, batched), then from the sealed records alone,
deterministically: dedup, split by source, shards, sources.parquet, clips.parquet and the report.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from curation.config import CurateConfig
from curation.schema import PIPELINE_VERSION
from curation.workdir import load_caption_frames, work_dir, write_atomic

SOURCE_COLUMNS = [
    "source_id",
    "path",
    "status",
    "reason",
    "duration",
    "fps",
    "variable_fps",
    "num_frames",
    "width",
    "height",
    "rotation",
    "codec",
    "num_scenes",
    "num_clips",
    "num_kept",
    "seconds_kept",
    "split",
    "elapsed_s",
]
CLIP_COLUMNS = [
    "key",
    "source_id",
    "scene_index",
    "clip_index",
    "start_frame",
    "end_frame",
    "start_seconds",
    "end_seconds",
    "num_frames",
    "duration",
    "fps",
    "width",
    "height",
    "timing",
    "variable_fps",
    "boundary_start",
    "boundary_end",
    "trim_start",
    "trim_end",
    "motion_mean",
    "motion_peak",
    "frame_diff_mean",
    "flow_mean",
    "shift_mean",
    "shake_rate",
    "shake_amplitude",
    "kept",
    "stage",
    "reason",
    "clip_score",
    "caption",
    "caption_origin",
    "duplicate_of",
    "split",
    "shard",
    "thumb",
]


# ----------------------------------------------------------------------------- stage 2: captions


def caption_sources(records: list[dict], cfg: CurateConfig, out: Path, chash: str, progress: bool) -> None:
    """Caption the kept clips of every record lacking OUT/work/<id>/captions.json (one model)."""
    todo = []
    for rec in records:
        cap_path = work_dir(out, rec["source_id"]) / "captions.json"
        kept = [c for c in rec["clips"] if c["kept"]]
        if not kept:
            continue
        if cap_path.exists():
            done = json.loads(cap_path.read_text())
            if done.get("config_hash") == chash and not done.get("failed"):
                continue  # captioned before (a failed attempt is retried)
        todo.append((rec, kept))
    if not todo:
        return
    from curation.captions import Captioner

    captioner = Captioner(cfg.caption)
    bar = tqdm(total=sum(len(k) for _, k in todo), desc="captions", unit="clip", disable=not progress)
    per_call = max(1, cfg.caption.batch_size // max(1, cfg.caption.frames_per_clip))
    for rec, kept in todo:
        wd = work_dir(out, rec["source_id"])
        items, results, errors, failed = [], [], {}, False
        for c in kept:
            if not (wd / "frames" / f"{c['key']}.jpg").exists():
                errors[c["key"]] = "no frames kept for captioning (raise analysis.keep_fps)"
                continue
            motion = {k: c[k] for k in ("motion_mean", "motion_peak", "frame_diff_mean")}
            items.append(
                {
                    "key": c["key"],
                    "frames": load_caption_frames(wd, c),
                    "source_caption": c["source_caption"],
                    "motion": motion,
                }
            )
        try:
            for i in range(0, len(items), per_call):
                results += captioner.caption_clips(items[i : i + per_call])
                bar.update(len(items[i : i + per_call]))
        except Exception as e:  # noqa: BLE001 - one source's failure drops its clips, not the run
            bar.write(f"captioning failed: {rec['path']}: {type(e).__name__}: {e}")
            errors.update({it["key"]: f"captioning failed: {type(e).__name__}: {e}" for it in items})
            results, failed = [], True
        bar.update(len(errors))
        np.savez(wd / "emb.tmp.npz", **{r["key"]: np.asarray(r["embedding"], np.float16) for r in results})
        os.replace(wd / "emb.tmp.npz", wd / "emb.npz")
        caps = {
            r["key"]: {k: r[k] for k in ("caption", "caption_origin", "clip_score", "caption_candidates")}
            for r in results
        }
        # the captioner's identity travels with the source's captions, so a resumed run (which may
        # load no model at all) still knows whether the CLIP weights were random
        doc = {
            "config_hash": chash,
            "clips": caps,
            "errors": errors,
            "failed": failed,
            "info": captioner.info(),
        }
        write_atomic(wd / "captions.json", json.dumps(doc, indent=1, default=float))
    bar.close()


# ----------------------------------------------------------------------------- stage 3: finalize


def _unit(source_id: str) -> float:
    """A uniform number in [0, 1) fixed by the source id."""
    return int(hashlib.sha256(source_id.encode()).hexdigest()[:12], 16) / float(1 << 48)


def split_of(source_id: str, val_fraction: float) -> str:
    """'val' for a deterministic `val_fraction` of source ids (by hash), else 'train'."""
    return "val" if _unit(source_id) < val_fraction else "train"


def finalize(records: list[dict], cfg: CurateConfig, out: Path, run: dict) -> dict:
    from curation import report
    from curation.dedup import find_duplicates
    from curation.shards import write_shards

    records = sorted(records, key=lambda r: (r["source_id"], r["path"]))
    captions, embeddings, caption_errors, infos = {}, {}, {}, []
    for rec in records:
        wd = work_dir(out, rec["source_id"])
        if cfg.caption.enabled and (wd / "captions.json").exists() and rec["status"] == "ok":
            doc = json.loads((wd / "captions.json").read_text())
            captions.update(doc["clips"])
            caption_errors.update(doc.get("errors", {}))
            infos.append(doc.get("info") or {})
            with np.load(wd / "emb.npz") as z:
                embeddings.update({k: z[k] for k in z.files})
    calibrated = all(i.get("calibrated", True) for i in infos)
    if infos:
        run["caption"] = dict(infos[0], calibrated=calibrated)  # report.py prints `uncalibrated`
    clips = [c for rec in records for c in rec["clips"]]
    for c in clips:
        if c["kept"] and c["key"] in caption_errors:
            c.update(kept=False, stage="caption", reason=caption_errors[c["key"]])
        cap = captions.get(c["key"])
        if cap:
            c.update(
                caption=cap["caption"],
                caption_origin=cap["caption_origin"],
                clip_score=cap["clip_score"],
                caption_candidates=cap["caption_candidates"],
            )
        else:
            src_cap = c.get("source_caption")
            c.update(
                caption=src_cap or "",
                caption_origin="source" if src_cap else "",
                clip_score=None,
                caption_candidates=[{"text": src_cap, "origin": "source", "score": None}] if src_cap else [],
            )
        c["duplicate_of"] = None
    # dedup among kept clips
    kept = [c for c in clips if c["kept"]]
    if cfg.dedup.enabled and kept:
        items = [
            {
                "key": c["key"],
                # random CLIP weights give meaningless cosines (they merged distinct clips): use phash
                "embedding": embeddings.get(c["key"]) if calibrated else None,
                "phash": c.get("phash"),
                "quality": c["clip_score"] if c["clip_score"] is not None else c["duration"],
            }
            for c in kept
        ]
        dropped = find_duplicates(items, cfg.dedup)
        for c in kept:
            if c["key"] in dropped:
                c.update(
                    kept=False,
                    stage="dedup",
                    reason=f"near-duplicate of {dropped[c['key']]}",
                    duplicate_of=dropped[c["key"]],
                )
    # split by source
    by_sid = {r["source_id"]: r for r in records if r["status"] == "ok"}
    for rec in records:
        rec["split"] = split_of(rec["source_id"], cfg.val_fraction) if rec["status"] == "ok" else None
    with_clips = sorted({c["source_id"] for c in clips if c["kept"]}, key=_unit)
    if (
        cfg.val_fraction > 0
        and len(with_clips) >= 2
        and not any(by_sid[s]["split"] == "val" for s in with_clips)
    ):
        by_sid[with_clips[0]]["split"] = "val"  # few sources: hold out at least the lowest-hash one
    split = {r["source_id"]: r["split"] for r in records if r["status"] == "ok"}
    for c in clips:
        c["split"] = split.get(c["source_id"])
    # shards
    by_id = {r["source_id"]: r for r in records if r["status"] == "ok"}
    samples = []
    for c in sorted((c for c in clips if c["kept"]), key=lambda c: (c["split"], c["source_id"], c["key"])):
        rec = by_id[c["source_id"]]
        meta = {
            "key": c["key"],
            "source_id": c["source_id"],
            "source_path": rec["path"],
            "source_sha256": rec["sha256"],
            "start_frame": c["start_frame"],
            "end_frame": c["end_frame"],
            "start_seconds": c["start_seconds"],
            "end_seconds": c["end_seconds"],
            "fps": c["fps"],
            "num_frames": c["num_frames"],
            "width": c["width"],
            "height": c["height"],
            "split": c["split"],
            "pipeline_version": PIPELINE_VERSION,
            "source_fps": rec["probe"]["fps"],
            # source: every frame at its true time (variable-rate when variable_fps); cfr: resampled
            "timing": {
                "mode": c.get("timing"),
                "variable_fps": c.get("variable_fps"),
                "duration": c["duration"],
            },
            "motion": {
                k: c[k]
                for k in ("motion_mean", "motion_peak", "frame_diff_mean", "flow_mean", "shift_mean")
                + ("shake_rate", "shake_amplitude")
            },
            "clip_score": c["clip_score"],
            "caption": c["caption"],
            "caption_origin": c["caption_origin"],
            "caption_candidates": c["caption_candidates"],
        }
        if c["key"] in captions:
            meta["clip_calibrated"] = calibrated
        samples.append(
            {
                "key": c["key"],
                "split": c["split"],
                "txt": c["caption"],
                "json": meta,
                "mp4_path": str(work_dir(out, c["source_id"]) / "clips" / f"{c['key']}.mp4"),
                "emb": embeddings.get(c["key"]),
            }
        )
    where = write_shards(
        out, samples, maxcount=cfg.shards.maxcount, maxsize=cfg.shards.maxsize, progress=cfg.progress
    )
    for c in clips:
        c["shard"] = where.get(c["key"])
    sources_tbl, clips_tbl = tables(records, clips)
    write_atomic(out / "sources.parquet", _parquet_bytes(sources_tbl))
    write_atomic(out / "clips.parquet", _parquet_bytes(clips_tbl))
    return report.write_report(out, sources_tbl, clips_tbl, run)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def tables(records: list[dict], clips: list[dict]) -> tuple[pa.Table, pa.Table]:
    rows = []
    for r in records:
        p = r.get("probe") or {}
        kept = [c for c in r["clips"] if c["kept"]]
        rows.append(
            {
                "source_id": r["source_id"],
                "path": r["path"],
                "status": r["status"],
                "reason": r["reason"],
                "duration": p.get("duration"),
                "fps": p.get("fps"),
                "variable_fps": p.get("variable_fps"),
                "num_frames": p.get("num_frames"),
                "width": p.get("width"),
                "height": p.get("height"),
                "rotation": p.get("rotation"),
                "codec": p.get("codec"),
                "num_scenes": r["num_scenes"],
                "num_clips": len(r["clips"]),
                "num_kept": len(kept),
                "seconds_kept": float(sum(c["duration"] for c in kept)),
                "split": r.get("split"),
                "elapsed_s": r.get("elapsed_s"),
            }
        )
    schema_s = pa.schema(
        [
            ("source_id", pa.string()),
            ("path", pa.string()),
            ("status", pa.string()),
            ("reason", pa.string()),
            ("duration", pa.float64()),
            ("fps", pa.float64()),
            ("variable_fps", pa.bool_()),
            ("num_frames", pa.int64()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("rotation", pa.int64()),
            ("codec", pa.string()),
            ("num_scenes", pa.int64()),
            ("num_clips", pa.int64()),
            ("num_kept", pa.int64()),
            ("seconds_kept", pa.float64()),
            ("split", pa.string()),
            ("elapsed_s", pa.float64()),
        ]
    )
    f64 = pa.float64()
    types = {
        "key": pa.string(),
        "source_id": pa.string(),
        "scene_index": pa.int64(),
        "clip_index": pa.int64(),
        "start_frame": pa.int64(),
        "end_frame": pa.int64(),
        "start_seconds": f64,
        "end_seconds": f64,
        "num_frames": pa.int64(),
        "duration": f64,
        "fps": f64,
        "width": pa.int64(),
        "height": pa.int64(),
        "motion_mean": f64,
        "motion_peak": f64,
        "timing": pa.string(),  # source (true frame times) | cfr (resampled to extract.fps)
        "variable_fps": pa.bool_(),
        "boundary_start": pa.string(),  # source | cut | transition | split
        "boundary_end": pa.string(),
        "trim_start": pa.int64(),  # frames trimmed at that boundary (a transition's frames included)
        "trim_end": pa.int64(),
        "frame_diff_mean": f64,
        "flow_mean": f64,
        "shift_mean": f64,
        "shake_rate": f64,  # direction reversals of the camera's global shift per second
        "shake_amplitude": f64,
        "kept": pa.bool_(),
        "stage": pa.string(),
        "reason": pa.string(),
        "clip_score": f64,
        "caption": pa.string(),
        "caption_origin": pa.string(),
        "duplicate_of": pa.string(),
        "split": pa.string(),
        "shard": pa.string(),
        "thumb": pa.string(),
    }
    schema_c = pa.schema([(k, types[k]) for k in CLIP_COLUMNS])

    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    crow = [{k: clean(c.get(k)) for k in CLIP_COLUMNS} for c in clips]
    return pa.Table.from_pylist(rows, schema=schema_s), pa.Table.from_pylist(crow, schema=schema_c)
