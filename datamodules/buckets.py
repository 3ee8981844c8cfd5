"""Aspect-ratio / resolution / duration buckets, the Open-Sora way, for a streaming loader.

Config (YAML under the datamodule's ``buckets``)::

    buckets:              # resolution -> frame count -> [keep probability, batch size]
      256: {1: [1.0, 64], 16: [1.0, 8], 32: [0.5, 4]}
      512: {16: [0.3, 2]}
    aspect_ratios: [0.5625, 0.75, 1.0, 1.3333, 1.7778]   # height / width
    max_upscale: 1.25     # a clip may be enlarged at most this much (linear) to fill a bucket

A *resolution* R names an area of R*R pixels; its bucket for aspect ratio a has
H = R*sqrt(a), W = R/sqrt(a), rounded to the model's patch multiple. Batch size 0 means "from
the token budget": ``tokens_per_batch // tokens(T, H, W)`` (a bucket larger than the budget is
an error).

Assignment of one clip (native h x w, n frames at its fps):
1. resolutions from large to small; at each, the aspect ratio nearest to h/w (in log space);
   skip the resolution if covering (H, W) would upscale the clip by more than ``max_upscale``;
2. frame counts from large to small among those the clip can supply at the sampling step
   (T = 1 buckets take images and frames drawn for image-video joint training, never whole
   clips); each is kept with its keep probability (a draw seeded by seed, epoch and the clip's
   key, so the assignment is deterministic given seed and epoch); a refused draw falls through
   to the next smaller frame count, then the next resolution;
3. no bucket -> the clip is dropped and counted (``no_bucket``).
In evaluation (``rng=None``) keep probabilities are ignored: every clip goes to its largest
bucket, the same one every time.

Batches: ``BucketBatcher`` streams samples into per-bucket lists and emits a batch when a bucket
holds its batch size, so every batch has one shape. How many batches an epoch has is set by the
datamodule (see video_shards.py): per rank ``ceil(sum_b ceil(n_b / bs_b) / world_size)`` where n_b
counts the training clips assigned to bucket b, unless ``batches_per_epoch`` fixes it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from datamodules.packing import TokenGrid
from datamodules.sampling import max_frames
from datamodules.transforms import upscale

DEFAULT_ASPECT_RATIOS = [9 / 21, 9 / 16, 3 / 4, 1.0, 4 / 3, 16 / 9, 21 / 9]  # height / width


@dataclass(frozen=True)
class Bucket:
    resolution: int
    num_frames: int
    height: int
    width: int
    keep_prob: float
    batch_size: int

    @property
    def name(self) -> str:
        return f"{self.resolution}r_{self.num_frames}x{self.height}x{self.width}"


def key_rng(key: str, *ints: int) -> np.random.Generator:
    """A generator that depends only on the sample key and `ints` (seed, epoch, ...): the same
    draws on any rank, worker or run."""
    return np.random.default_rng([zlib.crc32(key.encode()), *(int(i) for i in ints)])


class Buckets:
    """The bucket table built from the config, and the clip -> bucket rule."""

    def __init__(
        self,
        *,
        buckets: dict[int, dict[int, tuple[float, int]]],
        grid: TokenGrid,
        aspect_ratios: list[float] | None = None,
        max_upscale: float = 1.25,
        tokens_per_batch: int | None = None,
    ):
        self.grid, self.max_upscale = grid, max_upscale
        ratios = aspect_ratios or DEFAULT_ASPECT_RATIOS
        mh, mw = grid.multiple
        self.table: dict[int, dict[float, list[Bucket]]] = {}  # resolution -> ratio -> buckets (T desc)
        for res in sorted((int(r) for r in buckets), reverse=True):
            frames = buckets[res] if res in buckets else buckets[str(res)]
            per_ratio = {}
            for a in ratios:
                h = max(mh, round(res * math.sqrt(a) / mh) * mh)
                w = max(mw, round(res / math.sqrt(a) / mw) * mw)
                row = []
                for t in sorted((int(t) for t in frames), reverse=True):
                    keep, bs = frames[t] if t in frames else frames[str(t)]
                    if not bs:
                        if not tokens_per_batch:
                            raise ValueError(
                                f"bucket {res}/{t} has batch size 0 but no tokens_per_batch is set: "
                                "give a batch size or tokens_per_batch"
                            )
                        bs = tokens_per_batch // grid.tokens(t, h, w)
                        if bs < 1:
                            raise ValueError(
                                f"bucket {res}/{t} ({t}x{h}x{w}) has {grid.tokens(t, h, w)} tokens, more than "
                                f"tokens_per_batch={tokens_per_batch}: raise the budget or drop that bucket"
                            )
                    row.append(Bucket(res, t, h, w, float(keep), int(bs)))
                per_ratio[a] = row
            self.table[res] = per_ratio
        if not self.table:
            raise ValueError("buckets is empty: give at least one resolution with one frame count")

    @classmethod
    def fixed(
        cls,
        *,
        num_frames: int,
        height: int,
        width: int,
        batch_size: int,
        image_batch_size: int,
        grid: TokenGrid,
    ):
        """One clip shape (and one image shape) for every sample, whatever its size: resize + crop."""
        self = cls.__new__(cls)
        self.grid, self.max_upscale = grid, math.inf
        clip = Bucket(0, num_frames, height, width, 1.0, batch_size)
        image = Bucket(0, 1, height, width, 1.0, image_batch_size)
        self.table = {0: {height / width: [clip, image] if num_frames > 1 else [image]}}
        self.fixed_frames = num_frames
        return self

    fixed_frames: int | None = None  # set by `fixed`: clips are not filtered by length here

    @property
    def all(self) -> list[Bucket]:
        return [b for per in self.table.values() for row in per.values() for b in row]

    def assign(
        self,
        *,
        height: int,
        width: int,
        num_source: int,
        step: float,
        image: bool,
        rng: np.random.Generator | None,
    ) -> Bucket | None:
        """The bucket of a clip (or an image when `image`), or None when none fits."""
        for per_ratio in self.table.values():
            ratio = min(per_ratio, key=lambda a: abs(math.log(a) - math.log(height / width)))
            row = per_ratio[ratio]
            if not row or upscale(height, width, row[0].height, row[0].width) > self.max_upscale + 1e-9:
                continue
            can = 1 if image else self.fixed_frames or max_frames(num_source, step)
            for b in row:
                if (b.num_frames == 1) != image or b.num_frames > can:
                    continue
                if rng is None or b.keep_prob >= 1 or rng.random() < b.keep_prob:
                    return b
        return None


class BucketBatcher:
    """Stream samples (each with a "bucket") into one-shape batches of the bucket's batch size."""

    def __init__(self, *, flush: bool):
        self.flush = flush  # emit partial batches when the stream ends (evaluation)

    def __call__(self, samples: Iterable[dict]) -> Iterator[list[dict]]:
        pending: dict[Bucket, list[dict]] = {}
        for s in samples:
            b = s["bucket"]
            pending.setdefault(b, []).append(s)
            if len(pending[b]) >= b.batch_size:
                yield pending.pop(b)
        if self.flush:
            yield from (batch for batch in pending.values() if batch)
