"""The curation pipeline: per-source stages in parallel, then captions, dedup, split, shards, report.

Stages and where their results live (OUT = `cfg.out`):

  discover        every input, a stable source_id from its content hash, hashed by the workers
                  (curation/discover.py; OUT/work/hashes.json spares unchanged files a rehash)
  process_source  per source, in a worker (curation/executors.py: local processes or Ray actors,
                  with a time limit and retries): analyse (probe -> one decode pass: cuts, motion,
                  kept frames -> candidate clips with scores, thumbnails, caption frames), then
                  filter_and_extract (motion filter -> frame-accurate extraction of the clips that
                  pass); written to OUT/work/<source_id>/ and sealed by `record.json` (written last,
                  atomically): a rerun skips sealed sources, and one whose only change is a motion
                  threshold refilters the stored scores without a decode pass.
  captions        in this process, batched (one model, GPU-friendly): curation/captioning.py
  finalize        from the records alone, deterministically: dedup, split by source, shards,
                  sources.parquet, clips.parquet, report (curation/finalize.py). A killed run,
                  rerun, ends identical. OUT/work/ layout: curation/workdir.py.

Every input gets a sources row and every candidate clip a clips row, whatever happens to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from curation import executors
from curation.captioning import caption_sources
from curation.config import (
    CurateConfig,
    analysis_hash,
    caption_hash,
    config_hash,
    extract_hash,
    source_hash,
    to_dict,
)
from curation.decoded import DecodedFrames, budget_bytes, keep_freed_memory
from curation.discover import Source, discover
from curation.finalize import finalize
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


def spans_hash(spans: list[dict]) -> str:
    """Hash of a source's own captions (record field `caption_inputs`): an edited sidecar or csv
    caption is noticed on rerun."""
    return hashlib.sha256(json.dumps(spans, sort_keys=True, default=str).encode()).hexdigest()[:16]


def refresh_source_captions(rec: dict, src: Source) -> bool:
    """Re-read the source's own captions onto rec's candidate and clip rows if they changed since
    it was sealed (no decode: they map frames to text). True if rec changed."""
    spans = source_caption_spans(src.path, src.caption)
    h = spans_hash(spans)
    if rec.get("caption_inputs") == h:
        return False
    for row in [*rec.get("candidates", []), *rec.get("clips", [])]:
        row["source_caption"] = caption_for(spans, row["start_frame"], row["end_frame"])
    rec["caption_inputs"] = h
    return True


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


# ----------------------------------------------------------------------------- the record


def stage_hashes(cfg: CurateConfig) -> dict:
    """The hashes a record is stamped with (see curation/config.py)."""
    return {"source": source_hash(cfg), "analysis": analysis_hash(cfg), "extract": extract_hash(cfg)}


def new_record(source: dict, hashes: dict, status: str = "ok", reason: str = "", **fields) -> dict:
    """A per-source record (OUT/work/<id>/record.json): the one place its fields are listed."""
    rec = {
        "source_id": source["source_id"],
        "path": source["path"],
        "sha256": source["sha256"],
        "config_hash": hashes["source"],  # everything the record depends on
        "analysis_hash": hashes["analysis"],  # what `candidates` depends on
        "extract_hash": hashes["extract"],  # what the clips' mp4 bytes depend on
        "status": status,  # ok / rejected / error / skipped
        "reason": reason,
        "probe": None,
        "num_scenes": 0,
        "cuts": [],
        "transitions": [],  # [start, end) frames of fades / dissolves / wipes (curation/scenes.py)
        "corrupt_packets": 0,
        "candidates": [],  # every candidate clip with its scores, before the motion filter
        "clips": [],  # the candidates after the motion filter and extraction: clips.parquet rows
        "caption_inputs": None,  # spans_hash of the source's own captions (sidecar / csv column)
        "elapsed_s": None,
    }
    rec.update(fields)
    return rec


# What a refilter takes over from a record whose analysis is still valid.
ANALYSIS_FIELDS = ("probe", "num_scenes", "cuts", "transitions", "corrupt_packets", "candidates", "reason")
# What extraction sets on a kept clip row (from the encoded mp4).
EXTRACTED_FIELDS = ("num_frames", "fps", "width", "height", "duration", "timing", "variable_fps")


def seal(out: Path, rec: dict) -> dict:
    wd = work_dir(out, rec["source_id"])
    wd.mkdir(parents=True, exist_ok=True)
    write_atomic(wd / "record.json", json.dumps(rec, indent=1))
    return rec


# ----------------------------------------------------------------------------- stage 1: per source


def limit_threads() -> None:
    """One source per worker process: OpenCV gets one thread (no oversubscription). Decoder and
    encoder threads come from analysis.threads and extract.threads. bench/curation.py calls this too."""
    import cv2

    cv2.setNumThreads(1)


def process_source(task: dict) -> dict:
    """Analyse (or take over a valid analysis), filter and extract one source; seal its record.

    Never raises: any failure becomes the record's status and reason.
    """
    limit_threads()
    t0 = time.time()
    cfg: CurateConfig = task["cfg"]
    out = Path(task["out"])
    src = Source(**task["source"])
    rec = new_record(task["source"], task["hashes"])
    wd = work_dir(out, src.source_id)
    prior = task.get("prior")
    decoded = DecodedFrames(budget_bytes(cfg.extract.reuse_decoded_mb))  # analysis -> extraction
    keep_freed_memory(decoded.budget)
    try:
        if prior:  # same analysis settings: its candidates and scores stand, nothing is decoded for them
            rec.update({k: prior[k] for k in ANALYSIS_FIELDS}, caption_inputs=prior.get("caption_inputs"))
            frame_pts = None
        else:
            frame_pts = analyse(src, cfg, out, wd, rec, decoded)
        same_encoder = prior is not None and prior.get("extract_hash") == rec["extract_hash"]
        filter_and_extract(
            src, cfg, wd, rec, frame_pts, reuse=prior if same_encoder else None, decoded=decoded
        )
    except Exception as e:  # noqa: BLE001 - a bad source must never stop the run
        from curation.probe import Rejected, Unreadable

        rec["status"] = "rejected" if isinstance(e, Rejected) else "error"
        rec["reason"] = str(e) if isinstance(e, (Rejected, Unreadable)) else f"{type(e).__name__}: {e}"
        if not isinstance(e, (Rejected, Unreadable)):
            rec["traceback"] = traceback.format_exc(limit=8)
    finally:
        decoded.clear()  # the frame buffers go back now, not when the worker's next source starts
    rec["elapsed_s"] = round(time.time() - t0, 3)
    return seal(out, rec)


def analyse(
    src: Source, cfg: CurateConfig, out: Path, wd: Path, rec: dict, decoded: DecodedFrames | None = None
) -> dict:
    """Probe, one decode pass, candidate clips with their scores, thumbnails and caption frames.
    Fills rec's analysis fields (and `decoded` with the pass's frames); returns the pts, times and
    key frames of every frame (for extraction)."""
    from curation.analysis import analyze
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
    a = analyze(src.path, cfg.analysis, fps=info.fps, rotation=info.rotation, decoded=decoded)
    if a.num_frames < 2:
        raise Unreadable(f"only {a.num_frames} frame(s) decodable")
    rec["cuts"], rec["corrupt_packets"] = a.cuts, a.corrupt_packets
    if a.corrupt_packets:
        rec["reason"] = f"{a.corrupt_packets} corrupt packet(s) skipped while decoding"
    transitions = find_transitions(a.lin_ratio, a.lin_diff, a.tiny, a.luma, a.cuts, info.fps, cfg.clips)
    rec["transitions"] = [list(t) for t in transitions]
    cands = candidates(src.source_id, a.cuts, transitions, a.luma, a.times, cfg.clips)
    rec["num_scenes"] = len(a.cuts) + 1
    spans = source_caption_spans(src.path, src.caption)
    rec["caption_inputs"] = spans_hash(spans)
    (wd / "frames").mkdir(parents=True, exist_ok=True)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    frames = {"pts": a.frame_pts, "times": a.times.tolist(), "key_frames": a.key_frames}
    write_atomic(wd / "frame_pts.json", json.dumps(frames))  # a later refilter may extract
    rec["candidates"] = [candidate_row(c, src, info, a, spans, cfg, out, wd) for c in cands]
    return frames


def candidate_row(c, src: Source, info, a, spans: list, cfg: CurateConfig, out: Path, wd: Path) -> dict:
    """One candidate clip's row before the motion filter: its span, scores, thumbnail and (unless
    the scene stage dropped it) the frames kept for captioning and its perceptual hash."""
    from curation import motion

    fps = info.fps
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
        **motion.scores(a, c.start, c.end),  # all of them: a refilter reads them back
        "kept": False,
        "stage": "scene" if c.dropped else "",
        "reason": c.dropped or "",
        "source_caption": caption_for(spans, c.start, c.end),
        "thumb": write_thumb(a, c.key, c.start, c.end, cfg, out),
        "phash": None,
    }
    if not c.dropped:
        keep_caption_frames(a, row, cfg, wd)
    return row


def write_thumb(a, key: str, start: int, end: int, cfg: CurateConfig, out: Path) -> str:
    """A strip of kept frames for every candidate, kept or not: thumbs/<key>.jpg ('' if none)."""
    from curation.analysis import encode_jpeg

    frames = a.kept_frames(start, end, cfg.clips.thumb_frames)
    if not frames and a.kept:
        near = min(a.kept, key=lambda i: abs(i - start))
        frames = a.kept_frames(near, near + 1, 1)
    if not frames:
        return ""
    write_atomic(
        out / "thumbs" / f"{key}.jpg", encode_jpeg(_strip([f for _, f in frames], cfg.clips.thumb_height))
    )
    return f"thumbs/{key}.jpg"


def keep_caption_frames(a, row: dict, cfg: CurateConfig, wd: Path) -> None:
    """K frames for the captioner and the perceptual hash, stored as one JPEG strip."""
    import cv2

    from curation.analysis import encode_jpeg

    frames = [f for _, f in a.kept_frames(row["start_frame"], row["end_frame"], cfg.caption.frames_per_clip)]
    if not frames:
        return
    h = min(f.shape[0] for f in frames)
    tiles = [f if f.shape[0] == h else cv2.resize(f, (round(f.shape[1] * h / f.shape[0]), h)) for f in frames]
    write_atomic(wd / "frames" / f"{row['key']}.jpg", encode_jpeg(np.concatenate(tiles, axis=1), 95))
    row["caption_frames"] = len(tiles)
    if cfg.dedup.enabled:
        from curation import dedup

        row["phash"] = int(dedup.phash(np.stack(tiles)))


def filter_and_extract(
    src: Source,
    cfg: CurateConfig,
    wd: Path,
    rec: dict,
    frame_pts: dict | None,
    reuse: dict | None,
    decoded: DecodedFrames | None = None,
) -> None:
    """Motion filter over the candidates' stored scores, then frame-accurate extraction of the clips
    that pass (from the analysis pass's `decoded` frames where it holds them); clips that `reuse`
    (a record made with the same encoder settings) kept are not encoded again. Sets rec["clips"]."""
    from curation import motion
    from curation.clips import ClipSpec

    (wd / "clips").mkdir(parents=True, exist_ok=True)
    before = {c["key"]: c for c in (reuse or {}).get("clips", []) if c["kept"]}
    rows, specs = [], []
    for cand in rec["candidates"]:
        row = dict(cand)
        mp4 = wd / "clips" / f"{row['key']}.mp4"
        if row["stage"] == "scene":
            pass
        elif reason := motion.reject_reason(row, cfg.motion):
            row["stage"], row["reason"] = "motion", reason
        elif row["key"] in before and mp4.exists():
            row.update({k: before[row["key"]][k] for k in EXTRACTED_FIELDS}, kept=True, stage="kept")
        else:
            specs.append(ClipSpec(row["key"], row["start_frame"], row["end_frame"], str(mp4)))
        rows.append(row)
    if specs:
        extract_clips(src, cfg, wd, rec["probe"], specs, rows, frame_pts, decoded)
    kept = {row["key"] for row in rows if row["kept"]}
    for mp4 in (wd / "clips").glob("*.mp4"):  # clips a tightened threshold no longer keeps
        if mp4.stem not in kept:
            mp4.unlink()
    for tmp in (wd / "clips").glob("*.mp4.tmp"):  # half-written by a worker killed at its time limit
        tmp.unlink(missing_ok=True)
    rec["clips"] = rows


def extract_clips(
    src: Source,
    cfg: CurateConfig,
    wd: Path,
    probe: dict,
    specs: list,
    rows: list,
    frame_pts: dict | None,
    decoded: DecodedFrames | None = None,
) -> None:
    """Encode `specs` from the source in one forward decode; mark their rows kept (with the mp4's
    frame count, rate and size) or dropped at stage `extract`."""
    from curation.clips import extract
    from curation.probe import ProbeInfo

    info = ProbeInfo(**probe)
    if frame_pts is None:  # a refilter: analyse() stored the frames' pts and times by the record
        frame_pts = json.loads((wd / "frame_pts.json").read_text())
    results = extract(
        src.path,
        specs,
        source_rate=info.rate,
        rotation=info.rotation,
        cfg=cfg.extract,
        threads=cfg.analysis.threads,
        frame_pts=frame_pts["pts"],
        frame_times=np.asarray(frame_pts["times"], np.float64),
        key_frames=frame_pts.get("key_frames"),  # absent in records written before they were kept
        decoded=decoded,
    )
    by_key = {r.key: r for r in results}
    for row in rows:
        r = by_key.get(row["key"])
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


# ----------------------------------------------------------------------------- the run


def plan(out: Path, sources: list[Source], hashes: dict, cfg: CurateConfig) -> tuple[dict, list, list]:
    """From the sealed records: (records that stand, by source_id; [(source, prior record or None)]
    to process; ids sealed under settings that need on_config_change=redo)."""
    done, todo, changed = {}, [], []
    for s in sources:
        rec = None
        p = work_dir(out, s.source_id) / "record.json"
        if p.exists():
            try:
                rec = json.loads(p.read_text())
            except (OSError, ValueError):
                rec = None  # a torn record cannot exist (atomic rename), but never trust one
        if rec is None:
            todo.append((s, None))
        elif cfg.retry_errors and rec["status"] == "error":
            todo.append((s, None))
        elif rec.get("config_hash") == hashes["source"]:
            done[s.source_id] = seal(out, rec) if refresh_source_captions(rec, s) else rec
        elif rec.get("analysis_hash") != hashes["analysis"]:
            changed.append(s.source_id)
            todo.append((s, None))
        elif (
            rec["status"] != "ok"
            and (
                not rec.get("candidates")
                and (not rec.get("crashed") or rec.get("extract_hash") == hashes["extract"])
            )
        ):  # failed before extraction (probe, decode, no candidates): a new threshold or encoder changes nothing
            done[s.source_id] = dict(rec, config_hash=hashes["source"], extract_hash=hashes["extract"])
        elif rec["status"] != "ok" and not rec.get("candidates"):
            changed.append(s.source_id)  # a timeout or dead worker under other encoder settings: again
            todo.append((s, None))
        elif rec.get("extract_hash") == hashes["extract"]:
            todo.append((s, _as_prior(rec, s)))  # only motion thresholds changed: refilter the stored scores
        else:
            changed.append(s.source_id)  # encoder settings changed: every kept clip is encoded again
            todo.append((s, _as_prior(rec, s)))  # (an extraction error is retried)
    if changed and cfg.on_config_change == "error":
        raise ConfigChanged(
            f"{out} holds results of {len(changed)} source(s) made with a different config (analysis "
            f"or extract settings; e.g. {changed[0]}); this run's source hash is {hashes['source']}. Use a new "
            "out=<dir>, restore the old settings, or pass on_config_change=redo to reprocess those "
            "sources with this config."
        )
    return done, todo, changed


def _as_prior(rec: dict, src: Source) -> dict:
    """A record whose analysis stands, for a refilter (with the source's current own captions): an
    extraction error's reason is not carried."""
    refresh_source_captions(rec, src)
    if rec["status"] == "ok":
        return rec
    n = rec.get("corrupt_packets") or 0
    return dict(rec, reason=f"{n} corrupt packet(s) skipped while decoding" if n else "")


def _executor(cfg: CurateConfig):
    """`map(fn, tasks, on_crash)` over the configured executor (results in completion order)."""
    common = dict(timeout_s=cfg.source_timeout_s, retries=cfg.retries)
    if cfg.executor == "ray":
        return lambda fn, tasks, on_crash: executors.run_ray(
            fn,
            tasks,
            address=cfg.ray.address,
            num_cpus=cfg.ray.num_cpus or cfg.workers,
            workers=cfg.workers,
            on_crash=on_crash,
            **common,
        )
    return lambda fn, tasks, on_crash: executors.run_local(
        fn, tasks, workers=cfg.workers, on_crash=on_crash, **common
    )


def _hash_failed(chunk: list[str], msg: str) -> list[tuple]:
    return [(path, None, None, "", f"hashing failed: {msg}") for path in chunk]


def find_sources(cfg: CurateConfig, out: Path, run_tasks) -> list[Source]:
    workers = cfg.workers or executors.default_workers()
    return discover(
        cfg.raw,
        progress=cfg.progress,
        exclude=str(out),
        limit=cfg.limit,
        run_tasks=lambda fn, tasks: run_tasks(fn, tasks, _hash_failed),
        chunks=8 * workers,
        cache=out / "work" / "hashes.json",
    )


def process_all(cfg: CurateConfig, out: Path, todo: list, hashes: dict, done: dict, run_tasks) -> None:
    """Run process_source over `todo` (completion order, progress bar); records land in `done`."""

    def on_crash(task: dict, msg: str) -> dict:  # timeout or a worker that kept dying: sealed
        return seal(out, new_record(task["source"], hashes, status="error", reason=msg, crashed=True))

    tasks = (
        {"source": asdict(s), "cfg": cfg, "out": str(out), "hashes": hashes, "prior": prior}
        for s, prior in todo
    )
    counts = {"ok": 0, "rejected": 0, "error": 0}
    bar = tqdm(total=len(todo), desc="sources", unit="src", disable=not cfg.progress)
    if done:
        bar.write(f"resuming: {len(done)} source(s) already done, {len(todo)} to go")
    for rec in run_tasks(process_source, _Sized(tasks, len(todo)), on_crash):
        done[rec["source_id"]] = rec
        counts[rec["status"]] += 1
        if rec["status"] != "ok":
            bar.write(f"{rec['status']}: {rec['path']}: {rec['reason']}")  # one line per failed source
        bar.update()
        bar.set_postfix(counts, refresh=False)
    bar.close()


class _Sized:
    """A lazy iterable that knows its length (executors size their pool by it)."""

    def __init__(self, it, n: int):
        self.it, self.n = it, n

    def __iter__(self):
        return iter(self.it)

    def __len__(self) -> int:
        return self.n


def all_records(found: list[Source], unique: dict, done: dict, hashes: dict) -> list[dict]:
    """One record per file: processed ones, byte-identical copies (rejected, pointing at the first
    path), and files that are not videos (skipped, with the reason)."""
    records = [done[s.source_id] for s in unique.values()]
    for s in found:
        if s.skipped:
            records.append(new_record(asdict(s), hashes, status="skipped", reason=s.skipped, elapsed_s=0.0))
            continue
        first = unique[s.sha256 or s.source_id]
        if first.path != s.path:  # one source (never in both splits), each copy keeps a row
            probe = done[first.source_id].get("probe")
            records.append(
                new_record(
                    asdict(s), hashes, "rejected", f"same content as {first.path}", probe=probe, elapsed_s=0.0
                )
            )
    return records


def run(cfg: CurateConfig) -> dict:
    """Run the whole pipeline; return the report dict (plus a `failures` summary)."""
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    hashes = stage_hashes(cfg)
    if cfg.caption.enabled:  # fail before any processing when weights are missing
        from curation.captions import check_weights

        check_weights(cfg.caption)
    run_tasks = _executor(cfg)
    with executors.session(cfg.executor, address=cfg.ray.address, num_cpus=cfg.ray.num_cpus or cfg.workers):
        found = find_sources(cfg, out, run_tasks)
        sources = [s for s in found if not s.skipped]
        if not sources:
            raise FileNotFoundError(
                f"no video files found in raw={cfg.raw!r} (extensions: mp4 mov mkv webm avi m4v; "
                f"{len(found)} other file(s) skipped)"
            )
        unique: dict[str, Source] = {}  # content hash -> the first source with those bytes
        for s in sources:
            unique.setdefault(s.sha256 or s.source_id, s)
        done, todo, changed = plan(out, list(unique.values()), hashes, cfg)
        write_atomic(
            out / "run.json",
            json.dumps(
                {"config_hash": config_hash(cfg), "source_hash": hashes["source"], "config": to_dict(cfg)},
                indent=1,
                default=str,
            ),
        )
        process_all(cfg, out, todo, hashes, done, run_tasks)
    records = all_records(found, unique, done, hashes)
    if cfg.caption.enabled:
        caption_sources(
            [r for r in records if r["status"] == "ok"], cfg, out, caption_hash(cfg), cfg.progress
        )
    run_info = {
        "elapsed_s": round(time.time() - t0, 3),
        "config_hash": config_hash(cfg),
        "workers": cfg.workers or executors.default_workers(),
        "executor": cfg.executor,
        "sources_processed": len(todo),
        "sources_refiltered": sum(prior is not None for _, prior in todo),
        "sources_resumed": len(records) - len(todo),
        "config_changed_sources": changed,
        "source_frames": int(sum((r.get("probe") or {}).get("num_frames") or 0 for r in records)),
    }
    rep = dict(finalize(records, cfg, out, run_info) or {})
    rep["failures"] = [
        (r["path"], r["status"], r["reason"]) for r in records if r["status"] not in ("ok", "skipped")
    ]
    rep["skipped"] = [(r["path"], r["reason"]) for r in records if r["status"] == "skipped"]
    rep["num_ok"] = sum(r["status"] == "ok" for r in records)
    return rep
