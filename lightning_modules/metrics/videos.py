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
import math
import os
import re
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
    label: int | None = None  # class label (shards: `.cls` member or the json's label field)
    caption: str | None = None  # the shard's `.txt`


@dataclass
class Clip:
    key: str
    start: int
    indices: list[int]
    source: VideoSource


# ---------------------------------------------------------------- decoding
def decode_frames(data: str | bytes, indices: list[int]) -> np.ndarray:
    """Frames `indices` of a video (path or encoded bytes) -> uint8 (K, H, W, 3). decord; PyAV for GIF
    and where decord fails (it cannot copy out frames of some widths, e.g. 24 or 48 pixels)."""
    is_gif = (isinstance(data, str) and data.lower().endswith(".gif")) or (
        isinstance(data, bytes) and data[:4] == b"GIF8"
    )
    if not is_gif:
        import decord

        reader = decord.VideoReader(data if isinstance(data, str) else io.BytesIO(data), ctx=decord.cpu(0))
        try:
            frames = reader.get_batch(list(indices)).asnumpy()
        except (
            decord.DECORDError
        ):  # decord 0.6 fails on some frame widths (e.g. 24, 48: not a multiple of 32)
            frames = None
        if frames is not None and frames.shape[-1] == 3:
            return frames
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
def shard_files(spec: str, split: str | None = "val") -> list[str]:
    """Tar files of a shard spec: a .tar, a glob, a brace pattern, or a folder (its `{split}-*.tar`,
    else all its tars; `split=None`: all its tars, as for a folder of generated shards)."""
    if os.path.isdir(spec) and os.path.isdir(os.path.join(spec, "shards")):
        spec = os.path.join(spec, "shards")  # a curation OUT folder
    if os.path.isdir(spec):
        files = (
            sorted(glob.glob(os.path.join(spec, f"{split}-*.tar"))) if split is not None else []
        ) or sorted(glob.glob(os.path.join(spec, "*.tar")))
    elif "{" in spec:
        import braceexpand

        files = sorted(f for pattern in braceexpand.braceexpand(spec) for f in glob.glob(pattern))
    else:
        files = sorted(glob.glob(spec))
    return files


def shard_sources(files: list[str], *, label_field: str = "label") -> list[VideoSource]:
    """One source per shard sample, frame counts from its json (schema.REQUIRED_META['num_frames']).

    Label: the sample's `.cls` member, else its json's `label_field` (as the training datamodule
    reads it); caption: its `.txt`.
    """
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
                elif ext == schema.TXT:
                    entry["txt"] = tar.extractfile(info).read().decode("utf-8").strip()
                elif ext == "cls":
                    entry["cls"] = int(tar.extractfile(info).read().decode().strip())
    sources = []
    for key, entry in members.items():
        if "mp4" not in entry or "meta" not in entry:
            raise ValueError(
                f"shard sample {key!r} in {entry['tar']} lacks its .mp4 or .json (see curation/schema.py)"
            )
        label = entry.get("cls", entry["meta"].get(label_field))
        sources.append(
            VideoSource(
                key,
                int(entry["meta"]["num_frames"]),
                _tar_loader(entry["tar"], entry["mp4"]),
                entry["size"],
                label=None if label is None or int(label) < 0 else int(label),
                caption=entry.get("txt"),
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


def natural_key(name: str) -> list:
    """Sort key reading digit runs as numbers: frame 2 before frame 10 ("2.png" < "10.png")."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def frame_folder_sources(folder: str) -> list[VideoSource]:
    """Each subfolder of image files is one video, frames in natural file-name order (zero-padded
    names sort as plain sorting would; unpadded 0.png .. 10.png are not taken as 0, 1, 10, 2, ...)."""
    sources = []
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        images = sorted(
            (p for p in sub.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=lambda p: natural_key(p.name)
        )
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


def open_sources(
    spec: str, *, split: str | None = "val", label_field: str = "label"
) -> tuple[str, list[VideoSource]]:
    """(kind, sources) for a shard spec, a folder of videos or a folder of frame folders.

    `split`: which tars of a shard folder (`{split}-*.tar`); None reads them all (fakes).
    """
    tars = (
        shard_files(spec, split)
        if (os.path.isdir(spec) or spec.endswith(".tar") or "*" in spec or "{" in spec)
        else []
    )
    if tars:
        return "shards", shard_sources(tars, label_field=label_field)
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
def min_video_frames(num_frames: int, stride: int, rule: str = "span") -> int:
    """Frames a video needs to be kept: the clip's span (n - 1) * s + 1, or n * s (Latte's
    `discard_short_videos` threshold, `len(frames) >= load_n_consecutive * subsample_factor`)."""
    if rule not in ("span", "n_times_stride"):
        raise ValueError(f"min_length rule must be 'span' or 'n_times_stride', got {rule!r}")
    return (num_frames - 1) * stride + 1 if rule == "span" else num_frames * stride


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
    min_length: str = "span",
    when_fewer: str = "error",
    what: str = "real",
) -> tuple[list[Clip], dict]:
    """Pick `count` clips of `num_frames` frames every `stride`, deterministically.

    selection: "first": one clip per video, videos in sorted key order; "random": one clip per
    video, a seeded permutation of the videos; "windows": every start of every video is a
    candidate clip (torchvision `VideoClips`, as TATS's loader), a seeded permutation of all of
    them, so a long video can give several clips.
    clip_start (first / random selections): frame 0, or a start drawn from (seed, key).
    short: "discard" videos shorter than `min_length` frames (StyleGAN-V), or "error".
    min_length: "span" ((n - 1) * s + 1 frames) or "n_times_stride" (n * s, Latte).
    when_fewer: fewer usable clips than `count` is an "error", or "use_all" of them (StyleGAN-V
    and Latte take min(len(dataset), max_items)); `info["used_all"]` records it.
    """
    span = (num_frames - 1) * stride + 1
    need = min_video_frames(num_frames, stride, min_length)
    ordered = sorted(sources, key=lambda s: s.key)
    short_ones = [s for s in ordered if s.num_frames < need]
    if short_ones and short == "error":
        s = short_ones[0]
        raise ValueError(
            f"{what} clip {s.key!r} has {s.num_frames} frames but the protocol needs {need} "
            f"({num_frames} frames, stride {stride}); {len(short_ones)} of {len(ordered)} {what} clips are too short"
        )
    usable = [s for s in ordered if s.num_frames >= need]
    if selection == "windows":
        candidates = [(s, start) for s in usable for start in range(s.num_frames - span + 1)]
        candidates = [candidates[i] for i in np.random.RandomState(seed).permutation(len(candidates))]
    else:
        if selection == "random":
            usable = [usable[i] for i in np.random.RandomState(seed).permutation(len(usable))]
        elif selection != "first":
            raise ValueError(f"selection must be first, random or windows, got {selection!r}")
        candidates = [(s, None) for s in usable]
    unit = "clips" if selection == "windows" else "videos"
    used_all = len(candidates) < count
    if used_all and when_fewer != "use_all":
        raise ValueError(
            f"only {len(candidates)} {what} {unit} have at least {need} frames ({len(short_ones)} shorter ones "
            f"discarded) but the protocol needs {count}; add data or use a custom protocol with a smaller count"
        )
    clips = []
    for s, start in candidates[:count]:
        if start is None:
            start = 0
            if clip_start == "random":
                start = int(
                    np.random.RandomState([seed, zlib.crc32(s.key.encode())]).randint(
                        0, s.num_frames - span + 1
                    )
                )
        clips.append(Clip(s.key, start, list(range(start, start + span, stride)), s))
    info = {
        "available": len(ordered),
        "discarded_short": len(short_ones),
        "min_frames": need,
        "requested": count,
        "selected": len(clips),
        "used_all": used_all,
        "selection": selection,
        "clip_start": clip_start if selection != "windows" else "window",
        "seed": seed,
        "stride": stride,
        "frames": num_frames,
        "clips_sha256": hashlib.sha256(
            "\n".join(f"{c.key}:{c.start}:{c.source.size}" for c in clips).encode()
        ).hexdigest(),
        "first_keys": [c.key for c in clips[:5]],
    }
    return clips, info


def cover_size(h: int, w: int, size: tuple[int, int]) -> tuple[int, int]:
    """The (H, W) an (h, w) frame is resized to before the centre crop to `size`.

    TATS's floating-point expression (tats/data.py `preprocess`): scale = res / min(h, w), then
    ceil(side * scale) for the other side, so float error can add a pixel (187x187 -> 96: 97x96,
    273x546 -> 96: 96x193). On a tie (h == w for a square target) TATS keeps the width exact and
    ceils the height; so do we.
    """
    th, tw = size
    if th / h > tw / w:  # height sets the scale
        return th, max(tw, math.ceil(w * (th / h)))
    return max(th, math.ceil(h * (tw / w))), tw


def resize_center_crop(frames: np.ndarray, size: tuple[int, int], *, conversion: str = "round") -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (T, h, w, 3): scale so the frame covers (h, w), then centre crop.

    The float arithmetic of VideoGPT/TATS `preprocess` (tats/data.py): x / 255, bilinear
    (align_corners=False, no antialias) to the covering size (`cover_size`: the side that sets the
    scale gets exactly its target, the other ceil(side * scale) in floating point) — crop starting at (extra // 2), minus 0.5;
    back to uint8 as ((x + 0.5) * 255) truncated (`.byte()`, "truncate") or rounded ("round").
    For a square target this is TATS's "shorter side to resolution, centre crop".
    """
    import torch.nn.functional as F

    th, tw = size
    _, h, w, _ = frames.shape
    if (h, w) == (th, tw) and conversion == "round":
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
    target = cover_size(h, w, size)
    x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
    top, left = (target[0] - th) // 2, (target[1] - tw) // 2
    x = x[:, :, top : top + th, left : left + tw] - 0.5
    x = (x + 0.5) * 255
    x = x.to(torch.uint8) if conversion == "truncate" else x.round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def iter_clip_batches(
    clips: list[Clip],
    batch_size: int,
    *,
    workers: int = 4,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[torch.Tensor]:
    """uint8 (B, 3, T, H, W) batches in clip order; a batch ends early where the frame size changes.

    Clips are decoded by `workers` threads (decord and PyAV release the GIL) with a bounded
    look-ahead of two batches, so memory stays flat however many clips there are. `transform`
    (uint8 (T, H, W, 3) -> uint8 (T, h, w, 3), e.g. `resize_center_crop`) runs in the threads.
    """

    def load(clip: Clip) -> np.ndarray:
        frames = clip.source.load(clip.indices)
        return frames if transform is None else transform(frames)

    batch: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        todo = iter(clips)
        for clip in itertools.islice(todo, 2 * batch_size):
            pending.append(pool.submit(load, clip))
        while pending:
            frames = pending.popleft().result()  # (T, H, W, 3)
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(load, nxt))
            if batch and (frames.shape != batch[0].shape or len(batch) == batch_size):
                yield _to_bcthw(batch)
                batch = []
            batch.append(frames)
    if batch:
        yield _to_bcthw(batch)


def _to_bcthw(frames: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(frames)).permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, T, H, W)
