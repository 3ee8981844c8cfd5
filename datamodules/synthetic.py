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
        return DataLoader(
            ds,
            batch_size=None,
            shuffle=shuffle,
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
