"""Deterministic in-memory videos with the same batches as the shard datamodule (no files).

Each sample ``i`` of a split is a textured square moving over a colour gradient, drawn from a
per-sample seed (``seed`` + a split offset + ``i``): the same index gives the same pixels on every
run, rank and worker. With ``num_classes > 0`` the label is ``i % num_classes`` and sets the motion
direction, and the caption names colour and direction, so class and text conditioning have
something to learn.

Batches are planned up front: bucketed mode chunks the samples (one shape) into ``batch_size``
batches; packed mode gives the samples mixed shapes (``shapes``) and groups them first-fit-
decreasing under ``tokens_per_batch`` (or ``batch_size`` clips when no budget is given). The
dataset is a list of batches, so Lightning's distributed sampler hands every rank whole batches
and equal counts (``ceil(num_batches / world_size)`` each).
"""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.collate import collate_bucketed, collate_packed
from datamodules.packing import TokenGrid, first_fit_decreasing
from datamodules.resumable import EpochShuffleSampler, ResumableLoaderMixin

_DIRECTIONS = ["right", "left", "down", "up", "down-right", "up-left", "down-left", "up-right"]
_VELOCITY = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (-1, 1), (1, -1)]
_COLOURS = {
    "red": (1, -1, -1),
    "green": (-1, 1, -1),
    "blue": (-1, -1, 1),
    "yellow": (1, 1, -1),
    "white": (1, 1, 1),
    "magenta": (1, -1, 1),
}
_SPLIT_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_003}


def make_video(
    seed: int, *, num_frames: int, height: int, width: int, label: int = -1
) -> tuple[torch.Tensor, str]:
    """One deterministic clip (3, T, H, W) in [-1, 1] and its caption."""
    g = torch.Generator().manual_seed(seed)
    u = lambda: float(torch.rand((), generator=g))  # noqa: E731
    colour = list(_COLOURS)[int(torch.randint(len(_COLOURS), (), generator=g))]
    direction = (
        label % len(_DIRECTIONS) if label >= 0 else int(torch.randint(len(_DIRECTIONS), (), generator=g))
    )
    vx, vy = _VELOCITY[direction]
    side = max(2, int(min(height, width) * (0.25 + 0.2 * u())))
    speed = max(1.0, min(height, width) / 16) * (1.0 + u())  # >= 1 px per frame: visible motion
    x0, y0, period = u() * width, u() * height, 2 + int(4 * u())
    bg0, bg1 = torch.rand(3, generator=g) * 2 - 1, torch.rand(3, generator=g) * 2 - 1

    t = torch.arange(num_frames, dtype=torch.float32).view(-1, 1, 1)  # (T, 1, 1)
    y = torch.arange(height, dtype=torch.float32).view(1, -1, 1)  # (1, H, 1)
    x = torch.arange(width, dtype=torch.float32).view(1, 1, -1)  # (1, 1, W)
    ramp = (x / max(width - 1, 1) + y / max(height - 1, 1)) / 2  # (1, H, W)
    video = bg0.view(3, 1, 1, 1) * (1 - ramp) + bg1.view(3, 1, 1, 1) * ramp  # (3, 1, H, W)
    video = video.expand(3, num_frames, height, width).clone()  # (3, T, H, W)
    cx = (x0 + vx * speed * t) % (width + side) - side  # (T, 1, 1) left edge, wraps around
    cy = (y0 + vy * speed * t) % (height + side) - side
    inside = (x >= cx) & (x < cx + side) & (y >= cy) & (y < cy + side)  # (T, H, W)
    checker = (((x - cx) // period + (y - cy) // period) % 2) * 0.5 + 0.5  # (T, H, W) texture
    rgb = torch.tensor(_COLOURS[colour], dtype=torch.float32).view(3, 1, 1, 1)
    video = torch.where(inside.unsqueeze(0), rgb * checker.unsqueeze(0), video)  # (3, T, H, W)
    caption = f"a {colour} checkered square moving {_DIRECTIONS[direction]} over a gradient"
    return video.clamp(-1, 1), caption


class _BatchList(Dataset):
    """Item b is the whole batch b (a list of sample specs rendered on access)."""

    def __init__(self, plan: list[list[dict]], *, packed: bool, fps: float):
        self.plan, self.packed, self.fps = plan, packed, fps

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, b: int) -> dict:
        samples = []
        for spec in self.plan[b]:
            video, caption = make_video(
                spec["seed"],
                num_frames=spec["num_frames"],
                height=spec["height"],
                width=spec["width"],
                label=spec["label"],
            )
            meta = dict(spec, frame_indices=list(range(spec["num_frames"])), fps=self.fps)
            samples.append(
                {
                    "video": video,
                    "caption": caption if spec["with_caption"] else "",
                    "label": spec["label"],
                    "fps": self.fps,
                    "meta": meta,
                }
            )
        return (collate_packed if self.packed else collate_bucketed)(samples)


class _TrainLoader(ResumableLoaderMixin, DataLoader):
    """The training loader: (seed, epoch)-shuffled batches that resume exactly mid-epoch."""

    def __iter__(self):  # Lightning has set the sampler's epoch before this
        epoch, skip = self._resume_skip(getattr(self.sampler, "epoch", 0))
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)  # a resume from the last batch of an epoch starts the next
        return self._resumable(super().__iter__(), epoch, skip=skip)


class SyntheticVideoDataModule(L.LightningDataModule):
    """Moving-pattern videos in the batch contract of `VideoShardsDataModule`, for debug runs and tests."""

    def __init__(
        self,
        *,
        num_samples: int = 64,
        num_val_samples: int = 16,
        num_test_samples: int = 16,
        num_frames: int = 8,
        height: int = 32,
        width: int = 32,
        batch_size: int = 4,
        num_workers: int = 0,
        fps: float = 8.0,
        num_classes: int = 0,
        captions: bool = True,
        mode: Literal["bucketed", "packed"] = "bucketed",
        shapes: list[tuple[int, int, int]] | None = None,
        tokens_per_batch: int | None = None,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        latent_downsample: tuple[int, int, int] = (1, 1, 1),
        seed: int = 0,
    ):
        """
        Args:
            num_samples / num_val_samples / num_test_samples: clips per split.
            num_frames, height, width: the clip shape of bucketed mode (the largest shape in packed mode).
            batch_size: clips per batch (packed mode without `tokens_per_batch` too).
            num_classes: 0 = unlabelled (label -1); else label = index % num_classes.
            captions: False gives empty captions.
            mode: "bucketed" -> batch["video"] (B, 3, T, H, W); "packed" -> batch["videos"] + ["shapes"].
            shapes: packed-mode (T, H, W) shapes cycled over the samples; default: a mix derived from
                num_frames/height/width including single images (T=1).
            tokens_per_batch: packed-mode token budget (tokens counted with patch_size and latent_downsample).
            seed: base seed; sample i of a split uses seed + split offset + i.
        """
        super().__init__()
        self.save_hyperparameters()
        self.grid = TokenGrid(patch_size=tuple(patch_size), latent_downsample=tuple(latent_downsample))
        mh, mw = self.grid.multiple
        if height % mh or width % mw:
            raise ValueError(
                f"height/width {height}x{width} must be multiples of {mh}x{mw} (latent_downsample*patch_size)"
            )
        self.shapes = [tuple(s) for s in shapes] if shapes else self._default_shapes()
        for s in self.shapes:
            self.grid.tokens(*s)  # validates multiples

    def _default_shapes(self) -> list[tuple[int, int, int]]:
        h = self.hparams
        mh, mw = self.grid.multiple
        half_h, half_w = max(mh, h.height // 2 // mh * mh), max(mw, h.width // 2 // mw * mw)
        if h.mode == "bucketed":
            return [(h.num_frames, h.height, h.width)]
        return [
            (h.num_frames, h.height, h.width),
            (max(1, h.num_frames // 2), h.height, h.width),
            (h.num_frames, half_h, h.width),
            (h.num_frames, h.height, half_w),
            (1, h.height, h.width),
            (max(1, h.num_frames // 2), half_h, half_w),
        ]

    def plan(self, split: str) -> list[list[dict]]:
        """The batches of a split: lists of sample specs (seed, shape, label), deterministic."""
        h = self.hparams
        n = {"train": h.num_samples, "val": h.num_val_samples, "test": h.num_test_samples}[split]
        specs = []
        for i in range(n):
            t, hh, ww = self.shapes[i % len(self.shapes)]
            specs.append(
                {
                    "key": f"synthetic_{split}_{i:06d}",
                    "seed": h.seed + _SPLIT_OFFSET[split] + i,
                    "num_frames": t,
                    "height": hh,
                    "width": ww,
                    "split": split,
                    "label": i % h.num_classes if h.num_classes > 0 else -1,
                    "with_caption": h.captions,
                }
            )
        if h.mode == "packed" and h.tokens_per_batch:
            sizes = [self.grid.tokens(s["num_frames"], s["height"], s["width"]) for s in specs]
            bins = first_fit_decreasing(sizes, h.tokens_per_batch)
            return [[specs[i] for i in sorted(b)] for b in sorted(bins, key=min)]
        return [specs[i : i + h.batch_size] for i in range(0, n, h.batch_size)]

    def num_batches(self, split: str) -> int:
        return len(self.plan(split))

    def _loader(self, split: str, *, shuffle: bool) -> DataLoader:
        ds = _BatchList(self.plan(split), packed=self.hparams.mode == "packed", fps=self.hparams.fps)
        sampler = EpochShuffleSampler(len(ds), seed=self.hparams.seed) if shuffle else None
        return (_TrainLoader if shuffle else DataLoader)(
            ds,
            batch_size=None,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def expected_batches_per_rank(num_batches: int, world_size: int) -> int:
    """What DistributedSampler gives each rank (it pads by repeating batches)."""
    return math.ceil(num_batches / world_size)


# ---- tiny shards in the contract format (tests and benchmarks; no curation code) -------------


def encode_mp4(frames, fps: float = 24.0, *, crf: int | None = 0) -> bytes:
    """uint8 (T, H, W, 3) -> H.264 yuv420p mp4 bytes (PyAV, libx264; crf 0 = lossless)."""
    import io
    from fractions import Fraction

    import av

    buf = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"preset": "ultrafast", "x264-params": "threads=1"} | (
            {"qp": "0"} if crf == 0 else {"crf": str(crf)}
        )
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


MAX_INDEX_FRAMES = 42


def index_frames(num_frames: int, height: int, width: int):
    """uint8 (T, H, W, 3) where frame i is a flat grey of level 20 + 5 i (grey survives yuv420p and
    the decoder's resize to within 2 levels); `frame_index` reads a decoded frame back."""
    import numpy as np

    if num_frames > MAX_INDEX_FRAMES:
        raise ValueError(f"index_frames encodes at most {MAX_INDEX_FRAMES} frames, got {num_frames}")
    levels = (20 + 5 * np.arange(num_frames)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def frame_index(frame) -> int:
    """The source index of a decoded `index_frames` frame: (H, W, 3) uint8, or (3, H, W) in [-1, 1]."""
    import numpy as np

    x = np.asarray(frame, dtype=np.float64)
    if x.shape[0] == 3 and x.shape[-1] != 3:  # (3, H, W) in [-1, 1]
        x = (x + 1) * 127.5
    return round((x.mean() - 20) / 5)


def clip_meta(
    key: str, *, num_frames: int, fps: float, height: int, width: int, split: str = "train", **extra
) -> dict:
    """A sample json with every REQUIRED_META key (curation/schema.py)."""
    from curation.schema import PIPELINE_VERSION

    return {
        "key": key,
        "source_id": key.split("_")[0],
        "source_path": f"/raw/{key}.mp4",
        "source_sha256": "0" * 64,
        "start_frame": 0,
        "end_frame": num_frames,
        "start_seconds": 0.0,
        "end_seconds": num_frames / fps,
        "fps": fps,
        "num_frames": num_frames,
        "width": width,
        "height": height,
        "split": split,
        "pipeline_version": PIPELINE_VERSION,
        **extra,
    }


def write_shards(pattern: str, samples: list[dict], *, maxcount: int = 100000) -> list[str]:
    """Write samples ({"__key__", "mp4": bytes, "json": dict, "txt": str, ...}) with webdataset's
    ShardWriter (`pattern` like "dir/train-%06d.tar"); returns the shard paths written."""
    import webdataset as wds

    written: list[str] = []
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0) as sink:
        for s in samples:
            if sink.fname not in written and sink.fname:
                written.append(sink.fname)
            sink.write(s)
            if sink.fname not in written:
                written.append(sink.fname)
    return written


def clip_sample(
    key: str,
    *,
    num_frames: int,
    height: int,
    width: int,
    fps: float,
    split: str = "train",
    caption: str | None = None,
    **extra,
) -> dict:
    """One shard sample of `index_frames` content (mp4 + json + txt)."""
    return {
        "__key__": key,
        "mp4": encode_mp4(index_frames(num_frames, height, width), fps),
        "json": clip_meta(
            key, num_frames=num_frames, fps=fps, height=height, width=width, split=split, **extra
        ),
        "txt": caption if caption is not None else f"clip {key}",
    }
