"""The curation pipeline: per-source stages in parallel, then captions, dedup, split, shards, report.

Stages and where their results live (OUT = `cfg.out`):

  discover        every input, a stable source_id (curation/discover.py)
  process_source  per source, in a worker (local pool or Ray): probe -> one analysis decode pass
                  (cuts, motion, kept frames) -> candidate clips -> motion filter -> frame-accurate
                  extraction -> thumbnails; written to OUT/work/<source_id>/ and sealed by
                  `record.json` (written last, atomically): a rerun skips sealed sources.
  captions        in this process, batched (one model, GPU-friendly): OUT/work/<id>/captions.json
  finalize        from the records alone, deterministically: dedup, split by source, shards,
                  sources.parquet, clips.parquet, report. A killed run, rerun, ends identical.

Every input gets a sources row and every candidate clip a clips row, whatever happens to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from curation import executors
from curation.config import CurateConfig, config_hash, to_dict
from curation.discover import Source, discover
from curation.schema import PIPELINE_VERSION

log = logging.getLogger("curation")

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
    "motion_mean",
    "motion_peak",
    "frame_diff_mean",
    "flow_mean",
    "shift_mean",
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


class ConfigChanged(RuntimeError):
    """OUT holds results made with a different config."""


# ----------------------------------------------------------------------------- small helpers


def _write_atomic(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)


def work_dir(out: Path, source_id: str) -> Path:
    return out / "work" / source_id


def source_caption_spans(path: str, csv_caption: str | None) -> list[dict]:
    """The source's own captions: a csv caption column, or a sidecar `<stem>.json`
    ({"captions": [{"start_frame", "end_frame", "caption"}]}) or `<stem>.txt` next to the file."""
    if csv_caption:
        return [{"start_frame": 0, "end_frame": 1 << 62, "caption": csv_caption}]
    p = Path(path)
    side_json, side_txt = p.with_suffix(".json"), p.with_suffix(".txt")
    try:
        if side_json.is_file():
            spans = json.loads(side_json.read_text(encoding="utf-8")).get("captions", [])
            return [s for s in spans if isinstance(s, dict) and s.get("caption")]
        if side_txt.is_file():
            text = side_txt.read_text(encoding="utf-8").strip()
            return [{"start_frame": 0, "end_frame": 1 << 62, "caption": text}] if text else []
    except (OSError, ValueError, AttributeError):
        return []
    return []


def caption_for(spans: list[dict], start: int, end: int) -> str | None:
    """The source caption overlapping [start, end) the most."""
    best, best_overlap = None, 0
    for s in spans:
        overlap = min(end, int(s["end_frame"])) - max(start, int(s["start_frame"]))
        if overlap > best_overlap:
            best, best_overlap = s["caption"], overlap
    return best


def _strip(frames: list[np.ndarray], height: int) -> np.ndarray:
    """Frames side by side at a common height: (height, sum W, 3)."""
    import cv2

    tiles = [cv2.resize(f, (max(1, round(f.shape[1] * height / f.shape[0])), height)) for f in frames]
    return np.concatenate(tiles, axis=1)


# ----------------------------------------------------------------------------- stage 1: per source


def process_source(task: dict) -> dict:
    """Probe, analyse, cut, filter and extract one source; seal OUT/work/<id>/record.json.

    Never raises: any failure becomes the record's status and reason.
    """
    t0 = time.time()
    cfg: CurateConfig = task["cfg"]
    out = Path(task["out"])
    src = Source(**task["source"])
    rec = {
        "source_id": src.source_id,
        "path": src.path,
        "sha256": src.sha256,
        "config_hash": task["config_hash"],
        "status": "ok",
        "reason": "",
        "probe": None,
        "num_scenes": 0,
        "cuts": [],
        "corrupt_packets": 0,
        "clips": [],
    }
    wd = work_dir(out, src.source_id)
    try:
        _process(src, cfg, out, wd, rec)
    except Exception as e:  # noqa: BLE001 - a bad source must never stop the run
        from curation.probe import Rejected, Unreadable

        rec["status"] = "rejected" if isinstance(e, Rejected) else "error"
        rec["reason"] = str(e) if isinstance(e, (Rejected, Unreadable)) else f"{type(e).__name__}: {e}"
        if not isinstance(e, (Rejected, Unreadable)):
            rec["traceback"] = traceback.format_exc(limit=8)
    rec["elapsed_s"] = round(time.time() - t0, 3)
    wd.mkdir(parents=True, exist_ok=True)
    _write_atomic(wd / "record.json", json.dumps(rec, indent=1))
    return rec


def _process(src: Source, cfg: CurateConfig, out: Path, wd: Path, rec: dict) -> None:
    import cv2

    from curation import motion
    from curation.analysis import analyze, encode_jpeg
    from curation.clips import ClipSpec, extract
    from curation.probe import Unreadable, check, probe
    from curation.scenes import candidates

    if src.error:
        raise Unreadable(src.error)
    info = probe(src.path)
    rec["probe"] = info.as_dict()
    check(
        info,
        min_seconds=cfg.probe.min_seconds,
        min_short_side=cfg.probe.min_short_side,
        max_pixels=cfg.probe.max_pixels,
    )
    a = analyze(src.path, cfg.analysis, fps=info.fps, rotation=info.rotation)
    if a.num_frames < 2:
        raise Unreadable(f"only {a.num_frames} frame(s) decodable")
    rec["cuts"], rec["corrupt_packets"] = a.cuts, a.corrupt_packets
    if a.corrupt_packets:
        rec["reason"] = f"{a.corrupt_packets} corrupt packet(s) skipped while decoding"
    fps = info.fps
    cands = candidates(src.source_id, a.cuts, a.num_frames, a.diffs, a.luma, fps, cfg.clips)
    rec["num_scenes"] = len(a.cuts) + 1
    spans = source_caption_spans(src.path, src.caption)
    (wd / "clips").mkdir(parents=True, exist_ok=True)
    (wd / "frames").mkdir(parents=True, exist_ok=True)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    rows, specs = [], []
    for c in cands:
        s = motion.scores(a, c.start, c.end)
        row = {
            "key": c.key,
            "source_id": src.source_id,
            "scene_index": c.scene_index,
            "clip_index": c.clip_index,
            "start_frame": c.start,
            "end_frame": c.end,
            "start_seconds": c.start / fps,
            "end_seconds": c.end / fps,
            "num_frames": c.end - c.start,
            "duration": (c.end - c.start) / fps,
            "fps": fps,
            "width": info.width,
            "height": info.height,
            **{k: s[k] for k in ("motion_mean", "motion_peak", "frame_diff_mean", "flow_mean", "shift_mean")},
            "kept": False,
            "stage": "",
            "reason": "",
            "source_caption": caption_for(spans, c.start, c.end),
            "thumb": "",
            "phash": None,
        }
        if c.dropped:
            row["stage"], row["reason"] = "scene", c.dropped
        elif reason := motion.reject_reason(s, cfg.motion):
            row["stage"], row["reason"] = "motion", reason
        else:
            specs.append(ClipSpec(c.key, c.start, c.end, str(wd / "clips" / f"{c.key}.mp4")))
        # thumbnails for every candidate, kept or not
        frames = a.kept_frames(c.start, c.end, cfg.clips.thumb_frames)
        if not frames and a.kept:
            near = min(a.kept, key=lambda i: abs(i - c.start))
            frames = a.kept_frames(near, near + 1, 1)
        if frames:
            strip = _strip([f for _, f in frames], cfg.clips.thumb_height)
            _write_atomic(out / "thumbs" / f"{c.key}.jpg", encode_jpeg(strip))
            row["thumb"] = f"thumbs/{c.key}.jpg"
        rows.append(row)
    results = {
        r.key: r
        for r in extract(
            src.path,
            specs,
            source_rate=info.rate,
            rotation=info.rotation,
            cfg=cfg.extract,
            threads=cfg.analysis.threads,
            frame_pts=a.frame_pts,
        )
    }
    for row in rows:
        r = results.get(row["key"])
        if r is None:
            continue
        if r.error:
            row["stage"], row["reason"] = "extract", r.error
            continue
        row.update(
            kept=True,
            stage="kept",
            num_frames=r.num_frames,
            fps=r.fps,
            width=r.width,
            height=r.height,
            duration=r.num_frames / r.fps,
        )
        # K frames for the captioner and the perceptual hash, stored as one JPEG strip
        frames = [
            f for _, f in a.kept_frames(row["start_frame"], row["end_frame"], cfg.caption.frames_per_clip)
        ]
        if frames:
            h = min(f.shape[0] for f in frames)
            tiles = [
                f if f.shape[0] == h else cv2.resize(f, (round(f.shape[1] * h / f.shape[0]), h))
                for f in frames
            ]
            _write_atomic(wd / "frames" / f"{row['key']}.jpg", encode_jpeg(np.concatenate(tiles, axis=1), 95))
            row["caption_frames"] = len(tiles)
            if cfg.dedup.enabled:
                from curation import dedup

                row["phash"] = int(dedup.phash(np.stack(tiles)))
    rec["clips"] = rows


def load_caption_frames(wd: Path, row: dict) -> np.ndarray:
    """(K, H, W, 3) uint8 RGB frames saved for the captioner."""
    from curation.analysis import decode_jpeg

    strip = decode_jpeg((wd / "frames" / f"{row['key']}.jpg").read_bytes())
    k = row.get("caption_frames", 1)
    w = strip.shape[1] // k
    return np.stack([strip[:, i * w : (i + 1) * w] for i in range(k)])


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
        doc = {"config_hash": chash, "clips": caps, "errors": errors, "failed": failed}
        _write_atomic(wd / "captions.json", json.dumps(doc, indent=1, default=float))
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
    captions, embeddings, caption_errors = {}, {}, {}
    for rec in records:
        wd = work_dir(out, rec["source_id"])
        if cfg.caption.enabled and (wd / "captions.json").exists() and rec["status"] == "ok":
            doc = json.loads((wd / "captions.json").read_text())
            captions.update(doc["clips"])
            caption_errors.update(doc.get("errors", {}))
            with np.load(wd / "emb.npz") as z:
                embeddings.update({k: z[k] for k in z.files})
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
                "embedding": embeddings.get(c["key"]),
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
            "motion": {
                k: c[k] for k in ("motion_mean", "motion_peak", "frame_diff_mean", "flow_mean", "shift_mean")
            },
            "clip_score": c["clip_score"],
            "caption": c["caption"],
            "caption_origin": c["caption_origin"],
            "caption_candidates": c["caption_candidates"],
        }
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
    _write_atomic(out / "sources.parquet", _parquet_bytes(sources_tbl))
    _write_atomic(out / "clips.parquet", _parquet_bytes(clips_tbl))
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
        "frame_diff_mean": f64,
        "flow_mean": f64,
        "shift_mean": f64,
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


# ----------------------------------------------------------------------------- the run


def _crash_record(out: Path, chash: str):
    def on_crash(task: dict, msg: str) -> dict:
        s = task["source"]
        return {
            "source_id": s["source_id"],
            "path": s["path"],
            "sha256": s["sha256"],
            "config_hash": chash,
            "status": "error",
            "reason": msg,
            "probe": None,
            "num_scenes": 0,
            "cuts": [],
            "clips": [],
            "corrupt_packets": 0,
            "elapsed_s": None,
        }

    return on_crash


def load_records(out: Path, sources: list[Source], chash: str, on_change: str) -> tuple[dict, list[str]]:
    """Sealed records of this config by source_id, and the ids sealed under another config."""
    done, changed = {}, []
    for s in sources:
        p = work_dir(out, s.source_id) / "record.json"
        if not p.exists():
            continue
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue  # a torn record cannot exist (atomic rename), but never trust one
        if rec.get("config_hash") != chash:
            changed.append(s.source_id)
            continue
        done[s.source_id] = rec
    if changed and on_change == "error":
        raise ConfigChanged(
            f"{out} holds results of {len(changed)} source(s) made with a different config "
            f"(e.g. {changed[0]}); this run's config hash is {chash}. Use a new out=<dir>, restore the "
            "old settings, or pass on_config_change=redo to reprocess those sources with this config."
        )
    return done, changed


def run(cfg: CurateConfig) -> dict:
    """Run the whole pipeline; return the report dict (plus a `failures` summary)."""
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    chash = config_hash(cfg)
    if cfg.caption.enabled:  # fail before any processing when weights are missing
        from curation.captions import check_weights

        check_weights(cfg.caption)
    sources = discover(cfg.raw, progress=cfg.progress)
    if not sources:
        raise FileNotFoundError(
            f"no video files found in raw={cfg.raw!r} (extensions: mp4 mov mkv webm avi m4v)"
        )
    unique: dict[str, Source] = {}  # content hash -> the first source with those bytes
    for s in sources:
        unique.setdefault(s.sha256 or s.source_id, s)
    originals = {s.source_id: s for s in unique.values()}
    done, changed = load_records(out, list(unique.values()), chash, cfg.on_config_change)
    _write_atomic(
        out / "run.json", json.dumps({"config_hash": chash, "config": to_dict(cfg)}, indent=1, default=str)
    )
    todo = [s for sid, s in originals.items() if sid not in done]
    tasks = [{"source": asdict(s), "cfg": cfg, "out": str(out), "config_hash": chash} for s in todo]
    on_crash = _crash_record(out, chash)
    if cfg.executor == "ray":
        results = executors.run_ray(
            process_source,
            tasks,
            address=cfg.ray.address,
            num_cpus=cfg.ray.num_cpus or cfg.workers,
            on_crash=on_crash,
        )
    else:
        results = executors.run_local(process_source, tasks, workers=cfg.workers, on_crash=on_crash)
    counts = {"ok": 0, "rejected": 0, "error": 0}
    bar = tqdm(total=len(tasks), desc="sources", unit="src", disable=not cfg.progress)
    if done:
        bar.write(f"resuming: {len(done)} source(s) already done, {len(tasks)} to go")
    for rec in results:
        done[rec["source_id"]] = rec
        counts[rec["status"]] += 1
        if rec["status"] != "ok":
            bar.write(f"{rec['status']}: {rec['path']}: {rec['reason']}")  # one line per failed source
        bar.update()
        bar.set_postfix(counts)
    bar.close()
    records = [done[sid] for sid in originals]
    for s in sources:  # byte-identical copies: one source (never in both splits), each keeps a row
        first = unique[s.sha256 or s.source_id]
        if first.path != s.path:
            records.append(
                {
                    "source_id": s.source_id,
                    "path": s.path,
                    "sha256": s.sha256,
                    "config_hash": chash,
                    "status": "rejected",
                    "reason": f"same content as {first.path}",
                    "probe": done[first.source_id].get("probe"),
                    "num_scenes": 0,
                    "cuts": [],
                    "clips": [],
                    "corrupt_packets": 0,
                    "elapsed_s": 0.0,
                }
            )
    if cfg.caption.enabled:
        caption_sources([r for r in records if r["status"] == "ok"], cfg, out, chash, cfg.progress)
    run_info = {
        "elapsed_s": round(time.time() - t0, 3),
        "config_hash": chash,
        "workers": cfg.workers or executors.default_workers(),
        "executor": cfg.executor,
        "sources_processed": len(tasks),
        "sources_resumed": len(records) - len(tasks),
        "config_changed_sources": changed,
        "source_frames": int(sum((r.get("probe") or {}).get("num_frames") or 0 for r in records)),
    }
    rep = finalize(records, cfg, out, run_info)
    failures = [(r["path"], r["status"], r["reason"]) for r in records if r["status"] != "ok"]
    rep = dict(rep or {})
    rep["failures"] = failures
    rep["num_ok"] = sum(r["status"] == "ok" for r in records)
    return rep
