"""Read real and fake clips for evaluation: shards, folders of video files, folders of frames.

Every source becomes a sorted list of `VideoSource` (key, frame count, a loader of frame indices),
so clip selection is one deterministic function whatever the storage. Frames come out uint8
(K, H, W, 3).

Shards follow `curation/schema.py`: plain WebDataset tars, one sample per clip (`key.mp4`,
`key.json` with the exact `num_frames`). We index them with `tarfile` instead of streaming them
through `webdataset.WebDataset`: selection needs every key and frame count before decoding, and
random access then decodes only the selected members instead of reading every mp4 twice.
"""

from __future__ import annotations

import glob
import hashlib
import io
import itertools
import json
import os
import tarfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from curation import schema

VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mov", ".mkv", ".gif")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class VideoSource:
    key: str
    num_frames: int
    load: Callable[[list[int]], np.ndarray]  # frame indices -> uint8 (K, H, W, 3)
    size: int = 0  # bytes on disk, for the set fingerprint


@dataclass
class Clip:
    key: str
    start: int
    indices: list[int]
    source: VideoSource


# ---------------------------------------------------------------- decoding
def decode_frames(data: str | bytes, indices: list[int]) -> np.ndarray:
    """Frames `indices` of a video (path or encoded bytes) -> uint8 (K, H, W, 3). decord, PyAV for GIF."""
    is_gif = (isinstance(data, str) and data.lower().endswith(".gif")) or (
        isinstance(data, bytes) and data[:4] == b"GIF8"
    )
    if not is_gif:
        import decord

        reader = decord.VideoReader(data if isinstance(data, str) else io.BytesIO(data), ctx=decord.cpu(0))
        return reader.get_batch(list(indices)).asnumpy()
    return _decode_pyav(data, indices)


def _decode_pyav(data: str | bytes, indices: list[int]) -> np.ndarray:
    import av

    wanted = set(indices)
    frames = {}
    with av.open(data if isinstance(data, str) else io.BytesIO(data)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
            if i >= max(wanted):
                break
    missing = wanted - set(frames)
    if missing:
        raise ValueError(f"video has no frames {sorted(missing)[:5]} (it ended at frame {len(frames)})")
    return np.stack([frames[i] for i in indices])


def count_frames(path: str) -> int:
    if path.lower().endswith(".gif"):
        import av

        with av.open(path) as container:
            return sum(1 for _ in container.decode(video=0))
    import decord

    return len(decord.VideoReader(path, ctx=decord.cpu(0)))


# ---------------------------------------------------------------- sources
def shard_files(spec: str, split: str = "val") -> list[str]:
    """Tar files of a shard spec: a .tar, a glob, a brace pattern, or a folder (its `{split}-*.tar`)."""
    if os.path.isdir(spec) and os.path.isdir(os.path.join(spec, "shards")):
        spec = os.path.join(spec, "shards")  # a curation OUT folder
    if os.path.isdir(spec):
        files = sorted(glob.glob(os.path.join(spec, f"{split}-*.tar"))) or sorted(
            glob.glob(os.path.join(spec, "*.tar"))
        )
    elif "{" in spec:
        import braceexpand

        files = sorted(f for pattern in braceexpand.braceexpand(spec) for f in glob.glob(pattern))
    else:
        files = sorted(glob.glob(spec))
    return files


def shard_sources(files: list[str]) -> list[VideoSource]:
    """One source per shard sample, frame counts from its json (schema.REQUIRED_META['num_frames'])."""
    members: dict[str, dict] = {}
    for tar_path in files:
        with tarfile.open(tar_path) as tar:
            for info in tar.getmembers():
                key, _, ext = info.name.partition(".")
                entry = members.setdefault(key, {"tar": tar_path})
                if ext == schema.MP4:
                    entry["mp4"] = info.name
                    entry["size"] = info.size
                elif ext == schema.JSON:
                    entry["meta"] = json.loads(tar.extractfile(info).read())
    sources = []
    for key, entry in members.items():
        if "mp4" not in entry or "meta" not in entry:
            raise ValueError(
                f"shard sample {key!r} in {entry['tar']} lacks its .mp4 or .json (see curation/schema.py)"
            )
        sources.append(
            VideoSource(
                key, int(entry["meta"]["num_frames"]), _tar_loader(entry["tar"], entry["mp4"]), entry["size"]
            )
        )
    return sorted(sources, key=lambda s: s.key)


def _tar_loader(tar_path: str, member: str) -> Callable[[list[int]], np.ndarray]:
    def load(indices: list[int]) -> np.ndarray:
        with tarfile.open(tar_path) as tar:
            data = tar.extractfile(member).read()
        return decode_frames(data, indices)

    return load


def file_sources(folder: str) -> list[VideoSource]:
    """Video files under `folder` (recursive), keyed by relative path, sorted."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file())
    return [
        VideoSource(
            str(p.relative_to(folder)),
            count_frames(str(p)),
            (lambda idx, p=str(p): decode_frames(p, idx)),
            p.stat().st_size,
        )
        for p in paths
    ]


def frame_folder_sources(folder: str) -> list[VideoSource]:
    """Each subfolder of image files is one video (frames in sorted file-name order)."""
    sources = []
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        images = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if images:
            sources.append(
                VideoSource(
                    sub.name,
                    len(images),
                    (lambda idx, ims=images: _read_images(ims, idx)),
                    sum(p.stat().st_size for p in images),
                )
            )
    return sources


def _read_images(images: list[Path], indices: list[int]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(images[i]).convert("RGB")) for i in indices])


def open_sources(spec: str, *, split: str = "val") -> tuple[str, list[VideoSource]]:
    """(kind, sources) for a shard spec, a folder of videos or a folder of frame folders."""
    tars = (
        shard_files(spec, split)
        if (os.path.isdir(spec) or spec.endswith(".tar") or "*" in spec or "{" in spec)
        else []
    )
    if tars:
        return "shards", shard_sources(tars)
    if not os.path.isdir(spec):
        raise FileNotFoundError(
            f"{spec!r} is neither shards (.tar, glob, folder of .tar) nor a folder of videos"
        )
    videos = file_sources(spec)
    if videos:
        return "videos", videos
    frames = frame_folder_sources(spec)
    if frames:
        return "frames", frames
    raise FileNotFoundError(
        f"no shards, video files ({', '.join(VIDEO_EXTS)}) or frame folders found in {spec!r}"
    )


# ---------------------------------------------------------------- selection
def select_clips(
    sources: list[VideoSource],
    *,
    count: int,
    num_frames: int,
    stride: int = 1,
    selection: str = "first",
    clip_start: str = "first",
    seed: int = 0,
    short: str = "discard",
    what: str = "real",
) -> tuple[list[Clip], dict]:
    """Pick `count` clips of `num_frames` frames every `stride`, one per video, deterministically.

    selection: videos in sorted key order ("first") or a seeded permutation ("random").
    clip_start: frame 0 ("first") or a start drawn from (seed, key) ("random").
    short: "discard" videos shorter than the span (StyleGAN-V), or "error".
    """
    span = (num_frames - 1) * stride + 1
    ordered = sorted(sources, key=lambda s: s.key)
    short_ones = [s for s in ordered if s.num_frames < span]
    if short_ones and short == "error":
        s = short_ones[0]
        raise ValueError(
            f"{what} clip {s.key!r} has {s.num_frames} frames but the protocol needs {span} "
            f"({num_frames} frames, stride {stride}); {len(short_ones)} of {len(ordered)} {what} clips are too short"
        )
    usable = [s for s in ordered if s.num_frames >= span]
    if selection == "random":
        usable = [usable[i] for i in np.random.RandomState(seed).permutation(len(usable))]
    if len(usable) < count:
        raise ValueError(
            f"only {len(usable)} {what} videos have at least {span} frames ({len(short_ones)} shorter ones discarded) "
            f"but the protocol needs {count}; add data or use a custom protocol with a smaller count"
        )
    clips = []
    for s in usable[:count]:
        start = 0
        if clip_start == "random":
            start = int(
                np.random.RandomState([seed, zlib.crc32(s.key.encode())]).randint(0, s.num_frames - span + 1)
            )
        clips.append(Clip(s.key, start, list(range(start, start + span, stride)), s))
    info = {
        "available": len(ordered),
        "discarded_short": len(short_ones),
        "selected": len(clips),
        "selection": selection,
        "clip_start": clip_start,
        "seed": seed,
        "stride": stride,
        "frames": num_frames,
        "clips_sha256": hashlib.sha256(
            "\n".join(
                f"{c.key}:{c.start}:{s.size}" for c, s in zip(clips, [c.source for c in clips])
            ).encode()
        ).hexdigest(),
        "first_keys": [c.key for c in clips[:5]],
    }
    return clips, info


def iter_clip_batches(clips: list[Clip], batch_size: int, *, workers: int = 4) -> Iterator[torch.Tensor]:
    """uint8 (B, 3, T, H, W) batches in clip order; a batch ends early where the frame size changes.

    Clips are decoded by `workers` threads (decord and PyAV release the GIL) with a bounded
    look-ahead of two batches, so memory stays flat however many clips there are.
    """
    batch: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        todo = iter(clips)
        for clip in itertools.islice(todo, 2 * batch_size):
            pending.append(pool.submit(clip.source.load, clip.indices))
        while pending:
            frames = pending.popleft().result()  # (T, H, W, 3)
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(nxt.source.load, nxt.indices))
            if batch and (frames.shape != batch[0].shape or len(batch) == batch_size):
                yield _to_bcthw(batch)
                batch = []
            batch.append(frames)
    if batch:
        yield _to_bcthw(batch)


def _to_bcthw(frames: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(frames)).permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, T, H, W)
