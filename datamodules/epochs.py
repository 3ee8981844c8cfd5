"""How many batches one training epoch has, without decoding any video.

    N = batches in one epoch over all ranks (each rank yields ceil(N / world_size)):
      `batches_per_epoch` when set; else, for the epoch-0 draws of every training clip,
      bucketing: N = sum over buckets b of ceil(n_b / batch_size_b)  (n_b clips assigned to b)
      fixed shape: the same with a single bucket (and one image bucket)
      packing:   N = ceil(sum of clip tokens / tokens_per_batch)
    image shards mixed at ratio r add n_videos * r / (1 - r) images to that count. N is at least 1:
    a tiny dataset repeats its samples rather than giving an empty epoch.

The per-clip facts (key, frames, fps, size) come from ``index.json`` beside the shards when it
lists every training shard with its clip columns (curation writes it; ``python -m
datamodules.epochs SHARD_DIR`` writes one for shards made elsewhere): each rank reads that one
file and no tar. Otherwise every shard's json is scanned (seeking past the videos of local tars,
streaming remote ones), with a progress bar and a warning.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import warnings
from collections import defaultdict

from tqdm.auto import tqdm

from curation.schema import INDEX_CLIP_FIELDS, MP4, SHARD_INDEX
from datamodules.buckets import Bucket, key_rng
from datamodules.options import Options, bucket_rng, draws_image, make_buckets
from datamodules.sampling import max_frames, sampling_step
from datamodules.shards import expand_shards, open_url, scan_metadata

log = logging.getLogger(__name__)


def _parent(url: str) -> str:
    return os.path.dirname(url) if "://" not in url else url.rsplit("/", 1)[0]


def _read_index(parent: str) -> dict | None:
    try:
        with open_url(f"{parent}/{SHARD_INDEX}") as f:
            return json.loads(f.read())
    except Exception:  # noqa: BLE001 - no (readable) index: the caller scans instead
        return None


def index_metas(urls: list[str]) -> list[dict] | None:
    """The clips of `urls` as `scan_metadata` would give them, from the index.json beside them;
    None when a shard is missing from its index or the index lacks the clip columns."""
    if not urls or any(u.startswith("pipe:") for u in urls):
        return None
    indexes = {p: _read_index(p) for p in {_parent(u) for u in urls}}
    shards: dict[tuple[str, str], tuple[str, dict]] = {}
    for parent, index in indexes.items():
        for split, info in ((index or {}).get("splits") or {}).items():
            for shard in info.get("shards", []):
                shards[(parent, shard.get("name"))] = (split, shard)
    metas = []
    for url in urls:
        split, shard = shards.get((_parent(url), os.path.basename(url)), (None, {}))
        cols = shard.get("clips")
        if split is None or not isinstance(cols, dict) or set(INDEX_CLIP_FIELDS) - set(cols):
            return None
        per_clip = cols.get("split") or [split] * len(cols["key"])  # write_index: each clip's own split
        for row, clip_split in zip(zip(*(cols[f] for f in INDEX_CLIP_FIELDS)), per_clip):
            meta = {k: v for k, v in zip(INDEX_CLIP_FIELDS, row) if v is not None}
            metas.append({**meta, "__key__": meta["key"], "__fields__": [MP4], "split": clip_split})
    return metas


def clip_metas(urls: list[str], *, progress: bool) -> list[dict]:
    """Per-clip facts of the shards: from index.json when it covers them, else a json scan."""
    metas = index_metas(urls)
    if metas is not None:
        return metas
    if len(urls) >= 16:
        warnings.warn(
            f"no index.json covers these {len(urls)} shards: reading every shard's json to size the epoch "
            "(write one with `python -m datamodules.epochs SHARD_DIR`, or set batches_per_epoch)",
            stacklevel=2,
        )
    bar = tqdm(urls, desc="sizing the epoch (shard json)", disable=not progress or len(urls) < 16)
    return [m for url in bar for m in _safe_scan(url)]


def planned_batches(o: Options, urls: list[str], *, progress: bool = True) -> int:
    """N of the module docstring: batches in one epoch over all ranks."""
    if o.batches_per_epoch:
        return int(o.batches_per_epoch)
    grid = o.grid
    videos = [m for m in clip_metas(urls, progress=progress)
              if MP4 in m["__fields__"] and m.get("split", "train") == "train"]  # fmt: skip
    if not videos:
        warnings.warn(
            f"found no training clips in the json of {len(urls)} shards: the epoch is 1 batch; "
            "set batches_per_epoch (needed for shards without per-sample json)",
            stacklevel=2,
        )

    def step_of(m):
        return sampling_step(float(m.get("fps", 30.0)), frame_stride=o.frame_stride, target_fps=o.target_fps)

    image_mix = o.image_ratio if o.image_shards else 0.0
    if o.batching == "pack":
        total = 0
        for m in videos:
            if not all(k in m for k in ("num_frames", "height", "width")):
                continue
            t = min(o.max_frames or o.num_frames, max_frames(int(m["num_frames"]), step_of(m)))
            if t >= o.min_frames:
                shape = grid.fit(t, int(m["height"]), int(m["width"]), max_tokens=o.sample_token_cap)
                total += grid.tokens(*shape)
        return max(1, math.ceil(total / o.tokens_per_batch / (1 - image_mix)))
    buckets = make_buckets(o, grid)
    counts: dict[Bucket, int] = defaultdict(int)
    for m in videos:
        rng = key_rng(m["__key__"], o.seed, 0, 0)  # the loader's epoch-0, pass-0 draws, in its order
        image = draws_image(o, rng, image_shards=bool(o.image_shards))
        h, w = int(m.get("height", o.height)), int(m.get("width", o.width))
        n = int(m.get("num_frames", 10**6))
        b = buckets.assign(height=h, width=w, num_source=n, step=step_of(m), image=image, rng=bucket_rng(rng))
        too_short = b is not None and not image and max_frames(n, step_of(m)) < b.num_frames
        if b is not None and not (too_short and o.short_clips == "skip"):
            counts[b] += 1
    total = sum(math.ceil(n / b.batch_size) for b, n in counts.items())
    if image_mix > 0:
        image_bs = [b.batch_size for b in buckets.all if b.num_frames == 1] or [o.batch_size]
        total += math.ceil(len(videos) * image_mix / (1 - image_mix) / max(image_bs))
    return max(1, total)


def _safe_scan(url: str) -> list[dict]:
    try:
        return scan_metadata(url)
    except Exception as exn:  # noqa: BLE001 - the loader will count the broken shard
        log.warning("could not scan %s for metadata (%r); it counts as empty when sizing the epoch", url, exn)
        return []


def write_index(shard_dir: str) -> str:
    """Write ``index.json`` for the tars in a folder: per shard its clips' tar keys, frames, fps,
    size and split (the split from each clip's json, default train), as curation writes it."""
    splits: dict[str, dict] = {}
    for url in tqdm(expand_shards(shard_dir), desc="indexing shards"):
        metas = [m for m in scan_metadata(url) if MP4 in m["__fields__"]]
        cols = {f: [m["__key__"] if f == "key" else m.get(f) for m in metas] for f in INDEX_CLIP_FIELDS}
        cols["split"] = [m.get("split", "train") for m in metas]
        group = cols["split"][0] if len(set(cols["split"])) == 1 else "mixed"
        entry = {"name": os.path.basename(url), "count": len(metas), "clips": cols}
        splits.setdefault(group, {"shards": [], "clips": 0})["shards"].append(entry)
        splits[group]["clips"] += len(metas)
    path = os.path.join(shard_dir, SHARD_INDEX)
    with open(path, "w") as f:
        json.dump({"splits": splits, "total_clips": sum(s["clips"] for s in splits.values())}, f)
    return path


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="write index.json for a folder of webdataset shards")
    p.add_argument("shard_dir")
    print(write_index(p.parse_args().shard_dir))
