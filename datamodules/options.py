"""The shard datamodule's settings as one dataclass, its counters, and the draws that the loader
and the epoch sizing must make identically (bucket table, image-or-clip, bucket keep draw)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from datamodules.buckets import Buckets, key_rng
from datamodules.packing import TokenGrid

COUNTERS = [
    "samples",
    "batches",
    "corrupt",
    "short",
    "heldout",
    "no_bucket",
    "shard_errors",
    "images",
    "tokens",
    "budget",
    "padding",
]
C = {name: i for i, name in enumerate(COUNTERS)}  # counter name -> column of the counters tensor


@dataclass
class Options:
    """`VideoShardsDataModule`'s arguments (their defaults and meaning live in its signature and
    docstring, stated once): picklable, handed to every loader worker."""

    data_dir: str | None
    train_shards: str | list[str] | None
    val_shards: str | list[str] | None
    test_shards: str | list[str] | None
    image_shards: str | list[str] | None
    image_ratio: float
    num_frames: int
    height: int
    width: int
    frame_stride: int | None
    target_fps: float | None
    short_clips: str
    hflip: bool
    batching: str
    batch_size: int
    image_batch_size: int | None
    buckets: dict | None
    aspect_ratios: list[float] | None
    max_upscale: float
    tokens_per_batch: int | None
    max_tokens_per_sample: int | None
    max_frames: int | None
    min_frames: int
    pack_window: int
    pack_min_fill: float
    patch_size: tuple[int, int, int]
    latent_downsample: tuple[int, int, int]
    shuffle_shards: bool
    shuffle_buffer: int
    resampled: bool
    batches_per_epoch: int | None
    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    load_latents: bool
    seed: int
    rank: int | None
    world_size: int | None

    @classmethod
    def from_hparams(cls, hparams) -> Options:
        return cls(**{f.name: hparams[f.name] for f in fields(cls)})

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def grid(self) -> TokenGrid:
        return TokenGrid(patch_size=tuple(self.patch_size), latent_downsample=tuple(self.latent_downsample))

    @property
    def sample_token_cap(self) -> int | None:
        return self.max_tokens_per_sample or self.tokens_per_batch


def make_buckets(o: Options, grid: TokenGrid) -> Buckets:
    if o.buckets:
        return Buckets(
            buckets=o.buckets,
            grid=grid,
            aspect_ratios=o.aspect_ratios,
            max_upscale=o.max_upscale,
            tokens_per_batch=o.tokens_per_batch,
        )
    return Buckets.fixed(
        num_frames=o.num_frames,
        height=o.height,
        width=o.width,
        batch_size=o.batch_size,
        image_batch_size=o.image_batch_size or o.batch_size * o.num_frames,
        grid=grid,
    )


def draws_image(o: Options, rng: np.random.Generator | None, *, image_shards: bool) -> bool:
    """Whether a training clip becomes one frame (image-video joint training without image shards).
    The one place this draw is made: the loader and the epoch sizing must consume `rng` alike."""
    if o.num_frames == 1:
        return True
    return bool(rng is not None and not image_shards and o.image_ratio > 0 and rng.random() < o.image_ratio)


def bucket_rng(rng: np.random.Generator | None) -> np.random.Generator | None:
    """The keep-probability draws of bucket assignment, from the sample's generator (None: evaluation)."""
    return key_rng("bucket", int(rng.integers(2**31))) if rng is not None else None
