"""The curation pipeline: per-source stages in parallel, then captions, dedup, split, shards, report.

Stages and where their results live (OUT = `cfg.out`):

  discover        every input, a stable source_id (curation/discover.py)
  process_source  per source, in a worker (local pool or Ray): probe -> one analysis decode pass
                  (cuts, motion, kept frames) -> candidate clips -> motion filter -> frame-accurate
                  extraction -> thumbnails; written to OUT/work/<source_id>/ and sealed by
                  `record.json` (written last, atomically): a rerun skips sealed sources.
  captions        in this process, batched (one model, GPU-friendly): OUT/work/<id>/captions.json
  finalize        from the records alone, deterministically: dedup, split by source, shards,
                  sources.parquet, clips.parquet, report (curation/finalize.py). A killed run,
                  rerun, ends identical. OUT/work/ layout: curation/workdir.py.

Every input gets a sources row and every candidate clip a clips row, whatever happens to it.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from curation import executors
from curation.config import CurateConfig, caption_hash, config_hash, source_hash, to_dict
from curation.discover import Source, discover
from curation.finalize import caption_sources, finalize
from curation.workdir import work_dir, write_atomic

log = logging.getLogger("curation")


class ConfigChanged(RuntimeError):
    """OUT holds results made with a different config."""


# ----------------------------------------------------------------------------- small helpers


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
    import cv2

    cv2.setNumThreads(1)  # one source per worker process: no thread oversubscription (as bench/curation.py)
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
    write_atomic(wd / "record.json", json.dumps(rec, indent=1))
    return rec


def _process(src: Source, cfg: CurateConfig, out: Path, wd: Path, rec: dict) -> None:
    import cv2

    from curation import motion
    from curation.analysis import analyze, encode_jpeg
    from curation.clips import ClipSpec, extract
    from curation.probe import Unreadable, check, probe
    from curation.scenes import candidates, find_transitions

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
    transitions = find_transitions(a.lin_ratio, a.lin_diff, a.tiny, a.luma, a.cuts, fps, cfg.clips)
    rec["transitions"] = [list(t) for t in transitions]
    cands = candidates(src.source_id, a.cuts, transitions, a.luma, a.times, cfg.clips)
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
            "start_seconds": float(a.times[c.start]),  # true timestamps (variable frame rates)
            "end_seconds": float(a.times[c.end]),
            "num_frames": c.end - c.start,
            "duration": float(a.times[c.end] - a.times[c.start]),
            "timing": "",  # set at extraction: source | cfr (curation/clips.py)
            "variable_fps": None,
            "boundary_start": c.boundary_start,
            "boundary_end": c.boundary_end,
            "trim_start": c.trim_start,
            "trim_end": c.trim_end,
            "fps": fps,
            "width": info.width,
            "height": info.height,
            **{
                k: s[k]
                for k in ("motion_mean", "motion_peak", "frame_diff_mean", "flow_mean", "shift_mean")
                + ("shake_rate", "shake_amplitude")
            },
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
            write_atomic(out / "thumbs" / f"{c.key}.jpg", encode_jpeg(strip))
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
            frame_times=a.times,
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
            duration=r.duration,
            timing=r.timing,
            variable_fps=r.variable_fps,
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
            write_atomic(wd / "frames" / f"{row['key']}.jpg", encode_jpeg(np.concatenate(tiles, axis=1), 95))
            row["caption_frames"] = len(tiles)
            if cfg.dedup.enabled:
                from curation import dedup

                row["phash"] = int(dedup.phash(np.stack(tiles)))
    rec["clips"] = rows


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
    chash = source_hash(cfg)  # stamps per-source records (config.SOURCE_KEYS)
    if cfg.caption.enabled:  # fail before any processing when weights are missing
        from curation.captions import check_weights

        check_weights(cfg.caption)
    found = discover(cfg.raw, progress=cfg.progress, exclude=str(out))
    sources = [s for s in found if not s.skipped]
    if not sources:
        raise FileNotFoundError(
            f"no video files found in raw={cfg.raw!r} (extensions: mp4 mov mkv webm avi m4v; "
            f"{len(found)} other file(s) skipped)"
        )
    unique: dict[str, Source] = {}  # content hash -> the first source with those bytes
    for s in sources:
        unique.setdefault(s.sha256 or s.source_id, s)
    originals = {s.source_id: s for s in unique.values()}
    done, changed = load_records(out, list(unique.values()), chash, cfg.on_config_change)
    write_atomic(
        out / "run.json",
        json.dumps(
            {"config_hash": config_hash(cfg), "source_hash": chash, "config": to_dict(cfg)},
            indent=1,
            default=str,
        ),
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
    counts = {"ok": 0, "rejected": 0, "error": 0, "skipped": 0}
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
    for s in found:  # every file in RAW has a row: non-videos as `skipped` with the reason
        if s.skipped:
            rec = on_crash({"source": asdict(s)}, s.skipped)
            rec.update(status="skipped", elapsed_s=0.0)
            records.append(rec)
    if cfg.caption.enabled:
        caption_sources(
            [r for r in records if r["status"] == "ok"], cfg, out, caption_hash(cfg), cfg.progress
        )
    run_info = {
        "elapsed_s": round(time.time() - t0, 3),
        "config_hash": config_hash(cfg),
        "workers": cfg.workers or executors.default_workers(),
        "executor": cfg.executor,
        "sources_processed": len(tasks),
        "sources_resumed": len(records) - len(tasks),
        "config_changed_sources": changed,
        "source_frames": int(sum((r.get("probe") or {}).get("num_frames") or 0 for r in records)),
    }
    rep = finalize(records, cfg, out, run_info)
    failures = [
        (r["path"], r["status"], r["reason"]) for r in records if r["status"] not in ("ok", "skipped")
    ]
    rep = dict(rep or {})
    rep["failures"] = failures
    rep["skipped"] = [(r["path"], r["reason"]) for r in records if r["status"] == "skipped"]
    rep["num_ok"] = sum(r["status"] == "ok" for r in records)
    return rep
