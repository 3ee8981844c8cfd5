"""Write kept clips as WebDataset shards with `webdataset.ShardWriter`, atomically.

Shards are built in `OUT/shards.tmp/` and swapped in as `OUT/shards/` only when complete, so a
reader never sees a half-written set and a killed run leaves the previous set (or none). Sample
order is (split, source_id, key) and tar members carry a fixed mtime, so the same clips always
give byte-identical shards.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

from curation.schema import (
    EMB,
    INDEX_CLIP_FIELDS,
    JSON,
    MOTION_KEYS,
    MP4,
    SHARD_INDEX,
    SHARD_PATTERN,
    SPLITS,
    TXT,
    check_key,
    missing_meta,
)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def duration_bucket(seconds: float) -> str:
    for hi in (2, 4, 8, 16, 32):
        if seconds < hi:
            return f"<{hi}s"
    return ">=32s"


def write_shards(
    out: Path, samples: list[dict], *, maxcount: int, maxsize: float, progress: bool = False
) -> dict:
    """Write `samples` ({"key", "split", "mp4_path", "txt", "json", "emb" or None}, already in
    final order) to OUT/shards/; return {key: shard name} and write shards/index.json."""
    final, tmp = out / "shards", out / "shards.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    where: dict[str, str] = {}
    index = {"splits": {}, "total_clips": 0, "total_hours": 0.0, "histogram": {}}
    hist: Counter = Counter()
    bar = tqdm(total=len(samples), desc="shards", unit="clip", disable=not progress)
    for split in SPLITS:
        group = [s for s in samples if s["split"] == split]
        shards: dict[str, dict] = {}
        if group:
            pattern = str(tmp / SHARD_PATTERN.format(split=split))
            with wds.ShardWriter(pattern, maxcount=maxcount, maxsize=maxsize, verbose=0, mtime=0.0) as sink:
                for s in group:
                    meta = s["json"]
                    assert not missing_meta(meta), f"{s['key']}: json lacks {missing_meta(meta)}"
                    sample = {
                        "__key__": check_key(s["key"]),
                        MP4: Path(s["mp4_path"]).read_bytes(),
                        TXT: s["txt"].encode("utf-8"),
                        JSON: json.dumps(meta, sort_keys=True).encode("utf-8"),
                    }
                    if s.get("emb") is not None:
                        sample[EMB] = npy_bytes(np.asarray(s["emb"], np.float16))
                    sink.write(sample)
                    name = os.path.basename(sink.fname)
                    where[s["key"]] = name
                    info = shards.setdefault(name, {"name": name, "count": 0, "seconds": 0.0,
                                                    "clips": {f: [] for f in INDEX_CLIP_FIELDS}})  # fmt: skip
                    info["count"] += 1
                    for f in INDEX_CLIP_FIELDS:  # what a loader needs to size an epoch, no tar read
                        info["clips"][f].append(meta[f])
                    seconds = meta["num_frames"] / meta["fps"]
                    info["seconds"] += seconds
                    hist[f"{min(meta['width'], meta['height'])}p {duration_bucket(seconds)}"] += 1
                    bar.update()
        for info in shards.values():
            info["bytes"] = (tmp / info["name"]).stat().st_size
            info["seconds"] = round(info["seconds"], 3)
        seconds = sum(i["seconds"] for i in shards.values())
        index["splits"][split] = {
            "shards": sorted(shards.values(), key=lambda i: i["name"]),
            "clips": len(group),
            "hours": round(seconds / 3600, 6),
        }
        index["total_clips"] += len(group)
        index["total_hours"] += seconds / 3600
    bar.close()
    index["total_hours"] = round(index["total_hours"], 6)
    index["histogram"] = dict(sorted(hist.items()))
    (tmp / SHARD_INDEX).write_text(json.dumps(index, indent=1, sort_keys=True))
    old = out / "shards.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return where


def shard_samples(
    clips: list[dict], records: list[dict], out: Path, embeddings: dict, calibrated: bool
) -> list:
    """The kept clips as shard samples (json per the contract in curation/schema.py), in final
    order: by split, source, key."""
    from curation.schema import PIPELINE_VERSION
    from curation.workdir import work_dir

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
            "motion": {k: c[k] for k in MOTION_KEYS},
            "clip_score": c["clip_score"],
            "caption": c["caption"],
            "caption_origin": c["caption_origin"],
            "caption_candidates": c["caption_candidates"],
        }
        if c["key"] in embeddings:
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
    return samples
