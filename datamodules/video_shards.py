"""`VideoShardsDataModule`: webdataset shards -> decord -> buckets or packs -> contract batches.

One loader worker, read top to bottom:

    shard list (expanded; shuffled with seed+epoch; split by rank, then by worker)   stream.py
      -> raw samples (webdataset tar parsing; a broken shard is counted and skipped)   shards.py
      -> shuffle buffer (seeded) -> plan: json/caption/label, held-out check, bucket or
         pack shape, frame indices, crop, flip (no decode)                             planning.py
      -> one-shape groups (`buckets.BucketBatcher`) or token-budget packs
         (`packing.StreamPacker`) of plans; decord decodes only the grouped plans,
         at the cover size                                                             loader.py
      -> uint8 batches across processes; float [-1, 1] in the loader's iterator, or
         after the batch transfer (`on_after_batch_transfer`, the training default)    collate.py

Epoch length (epochs.py: from ``shards/index.json`` when present, reading no tar), the epoch
quota per worker, exact resume without decoding what was already trained on, and equal
validation batch counts on every DDP rank (loader.py). Shuffles and draws are pure functions of
(seed, epoch, key / rank / worker), so every epoch is reproducible and differs from the others.

Validation and test read their own shards once per epoch in file order with centred temporal
offsets and crops, no flip, no keep-probability draws: the same clips, offsets and batches every
time (leftover partial batches are emitted). A training shard list that shares a shard with the
validation list is an error, and a training sample whose json says ``split != "train"`` is
dropped and counted (``heldout``).

Videos cross from the workers as uint8 in channels-last memory (4x less to move; the crop is a
plain row copy) and become the contract's contiguous float (B, 3, T, H, W) in [-1, 1] in
`on_after_batch_transfer` for training (on the accelerator, or in the main process on CPU) and in
the loader's iterator for validation and test (evaluation callbacks iterate those loaders directly).
Workers are persistent by default: the epoch reaches them through shared memory.

Counters (corrupt, short, heldout, no_bucket, shard_errors, samples, batches, tokens, budget,
padding) live in shared memory; each epoch they are printed on rank zero and written to the
trainer's logger under ``data/<split>/...`` (packing: ``data/train/utilization`` = real tokens / budget).
"""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from datamodules.collate import to_unit
from datamodules.epochs import planned_batches
from datamodules.loader import EpochLoader, ShardDataset
from datamodules.options import COUNTERS, Options, make_buckets
from datamodules.packing import TokenGrid
from datamodules.sampling import ShortPolicy
from datamodules.shards import expand_shards


class VideoShardsDataModule(L.LightningDataModule):
    """Video clips from webdataset shards in the batch contract (bucketed or packed)."""

    def __init__(
        self,
        *,
        data_dir: str | None = None,
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
        image_shards: str | list[str] | None = None,
        image_ratio: float = 0.0,
        num_frames: int = 16,
        height: int = 256,
        width: int = 256,
        frame_stride: int | None = None,
        target_fps: float | None = None,
        short_clips: ShortPolicy = "skip",
        hflip: bool = False,
        batching: Literal["bucket", "pack"] = "bucket",
        batch_size: int = 8,
        image_batch_size: int | None = None,
        buckets: dict[int, dict[int, tuple[float, int]]] | None = None,
        aspect_ratios: list[float] | None = None,
        max_upscale: float = 1.25,
        tokens_per_batch: int | None = None,
        max_tokens_per_sample: int | None = None,
        max_frames: int | None = None,
        min_frames: int = 1,
        pack_window: int = 256,
        pack_min_fill: float = 0.97,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        latent_downsample: tuple[int, int, int] = (1, 8, 8),
        shuffle_shards: bool = True,
        shuffle_buffer: int = 256,
        resampled: bool = False,
        batches_per_epoch: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        load_latents: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        """
        Args:
            data_dir: a curation OUT directory; defaults the shard lists to
                ``data_dir/shards/train-*.tar`` and ``data_dir/shards/val-*.tar``.
            train_shards / val_shards / test_shards: shard specs (paths, globs, brace patterns,
                ``pipe:`` commands, fsspec URLs; see datamodules/shards.py). Test defaults to val.
            image_shards: shards of images (jpg/png/webp + optional json/txt) mixed into training
                at `image_ratio`; without them `image_ratio` turns that fraction of training clips
                into single frames drawn from them.
            num_frames, height, width: the clip shape when `buckets` is None (fixed-shape mode: resize
                to cover + crop); `num_frames` is also the packing cap unless `max_frames` is set.
            frame_stride / target_fps: temporal sampling (one of them; default stride 1).
            short_clips: "skip" | "pad" | "fit" for clips shorter than the request (datamodules/sampling.py).
            hflip: random horizontal flips in training.
            batching: "bucket" (one shape per batch) or "pack" (variable shapes under tokens_per_batch).
            batch_size / image_batch_size: fixed-shape mode batch sizes (images default to batch_size * num_frames).
            buckets, aspect_ratios, max_upscale: bucket table (datamodules/buckets.py).
            tokens_per_batch: packing budget; in bucketing, sets batch sizes given as 0.
            max_tokens_per_sample: packing: clips are downscaled (never up) to fit (default tokens_per_batch).
            min_frames: packing: clips giving fewer frames are skipped as short.
            pack_window, pack_min_fill: packing shuffle window (clips) and the fill at which a pack is emitted.
            patch_size, latent_downsample: token counting (match the model and the latent codec).
            shuffle_shards, shuffle_buffer, resampled, batches_per_epoch: streaming (module docstring).
            num_workers, pin_memory: DataLoader's (pin for CUDA: faster host-to-device copies).
            persistent_workers: keep worker processes across epochs (their start-up is paid once;
                the epoch reaches them through shared memory).
            load_latents: attach ``latent.npy`` (the whole clip's latent at its stored size) as
                batch["latent"] / ["latents"], cut to the frames, crop and flip of the video through the
                codec factors `latent_downsample`; crops snap to the latent grid; a resize (height/width
                below the stored size, buckets) cannot be followed and stops the run (LatentMappingError).
            seed: everything random in the data is drawn from (seed, epoch, key / rank / worker).
            rank, world_size: override the trainer's (tests, custom launchers).
        """
        super().__init__()
        self.save_hyperparameters()
        if frame_stride is not None and target_fps is not None:
            raise ValueError("give frame_stride or target_fps, not both")
        if batching == "pack" and not tokens_per_batch:
            raise ValueError("batching='pack' needs tokens_per_batch (the token budget of a batch)")
        if not 0 <= image_ratio < 1:
            raise ValueError(f"image_ratio={image_ratio} must be in [0, 1)")
        self.opts = Options.from_hparams(self.hparams)
        self.grid = TokenGrid(patch_size=tuple(patch_size), latent_downsample=tuple(latent_downsample))
        if batching == "bucket" and not buckets:
            mh, mw = self.grid.multiple
            if height % mh or width % mw:
                raise ValueError(
                    f"height x width {height}x{width} must be multiples of {mh}x{mw} (patch x latent_downsample)"
                )
        if batching == "bucket":
            make_buckets(self.opts, self.grid)  # a bad bucket table fails here, not in a worker
        self._counters: dict[str, torch.Tensor] = {}
        self._reported: dict[str, int] = {}
        self.batches_per_rank: int | None = None

    # ---- shard lists -----------------------------------------------------------------------------
    def shard_urls(self, split: str) -> list[str]:
        o, base = self.opts, self.opts.data_dir
        spec = {"train": o.train_shards, "val": o.val_shards, "test": o.test_shards or o.val_shards}[split]
        if spec is None and base:
            spec = f"{base}/shards/{'train' if split == 'train' else 'val'}-*.tar"
        urls = expand_shards(spec)
        if split == "train":
            held = set(expand_shards(o.val_shards or (f"{base}/shards/val-*.tar" if base else None)))
            if held & set(urls):
                raise ValueError(
                    f"held-out shards {sorted(held & set(urls))[:3]} are also in train_shards: remove them"
                )
        return urls

    def _dist(self) -> tuple[int, int]:
        if self.opts.rank is not None or self.opts.world_size is not None:
            return int(self.opts.rank or 0), int(self.opts.world_size or 1)
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    # ---- epoch length ----------------------------------------------------------------------------
    def planned_batches(self, urls: list[str]) -> int:
        """N of datamodules/epochs.py: batches in one epoch over all ranks, reading no video."""
        return planned_batches(self.opts, urls, progress=self._dist()[0] == 0)

    def setup(self, stage: str | None = None) -> None:
        rank, world = self._dist()
        if stage in (None, "fit") and self.batches_per_rank is None:
            urls = self.shard_urls("train")
            if not urls:
                raise FileNotFoundError(
                    f"no training shards in {self.opts.train_shards or self.opts.data_dir!r}"
                )
            self.batches_per_rank = math.ceil(self.planned_batches(urls) / world)
            rank_zero_info(
                f"[data] {len(urls)} training shards, {self.batches_per_rank} batches per rank per epoch (world size {world})"
            )

    # ---- loaders ---------------------------------------------------------------------------------
    def _epoch(self) -> int | None:
        try:
            return self.trainer.current_epoch if self.trainer is not None else None
        except RuntimeError:
            return None

    def _loader(self, split: str) -> EpochLoader:
        rank, world = self._dist()
        o, train = self.opts, split == "train"
        if train and self.batches_per_rank is None:
            self.setup("fit")
        urls = self.shard_urls(split)
        if not urls:
            raise FileNotFoundError(f"no {split} shards: set {split}_shards or data_dir")
        self._report(split)
        counters = torch.zeros(max(1, o.num_workers), len(COUNTERS), dtype=torch.long).share_memory_()
        self._counters[split] = counters

        def new_epoch():  # report the epoch that just ended, then count afresh
            self._report(split)
            counters.zero_()

        ds = ShardDataset(
            urls=urls,
            image_urls=expand_shards(o.image_shards) if train else [],
            opts=o,
            train=train,
            rank=rank,
            world_size=world,
            batches_per_rank=self.batches_per_rank if train else None,
            counters=counters,
        )
        loader = EpochLoader(
            ds,
            epoch_fn=self._epoch,
            on_epoch_start=new_epoch,
            num_workers=o.num_workers,
            pin_memory=o.pin_memory,
            persistent_workers=bool(o.persistent_workers and o.num_workers > 0),
        )
        # training under a trainer: uint8 to `on_after_batch_transfer` (scaled on the accelerator);
        # evaluation callbacks iterate val/test loaders themselves and need float from the iterator
        loader.normalize_on_device = bool(train and self.trainer is not None)
        return loader

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """uint8 videos (when the loader left scaling to the device) -> float in [-1, 1] there."""
        return to_unit(batch) if isinstance(batch, dict) else batch

    def train_dataloader(self) -> EpochLoader:
        return self._loader("train")

    def _eval_loader(self, split: str) -> EpochLoader | list:
        explicit = self.opts.val_shards if split == "val" else (self.opts.test_shards or self.opts.val_shards)
        if not explicit and not self.shard_urls(split):  # e.g. a curation run too small for a val split
            rank_zero_warn(f"[data] no {split} shards under {self.opts.data_dir!r}: {split} is skipped")
            return []
        return self._loader(split)

    def val_dataloader(self) -> EpochLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> EpochLoader | list:
        return self._eval_loader("test")

    # ---- counters ----------------------------------------------------------------------------------
    def data_stats(self, split: str = "train") -> dict[str, float]:
        """This epoch's counters of a split's loader (summed over workers; this rank only)."""
        if split not in self._counters:
            return {}
        c = dict(zip(COUNTERS, self._counters[split].sum(0).tolist()))
        if c["budget"]:
            c["utilization"] = c["tokens"] / c["budget"]
        return c

    def _report(self, split: str) -> None:
        stats = self.data_stats(split)
        if not stats or not stats["samples"] + stats["corrupt"]:
            return
        msg = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items())
        rank_zero_info(f"[data/{split}] {msg}")
        if stats["corrupt"] or stats["shard_errors"]:
            rank_zero_warn(
                f"[data/{split}] skipped {stats['corrupt']} corrupt samples, {stats['shard_errors']} shard errors"
            )
        trainer = self.trainer
        if trainer is not None and trainer.logger is not None:
            trainer.logger.log_metrics(
                {f"data/{split}/{k}": float(v) for k, v in stats.items()}, step=trainer.global_step
            )

    def teardown(self, stage: str | None = None) -> None:
        for split in list(self._counters):
            self._report(split)

    def state_dict(self) -> dict:
        return {"batches_per_rank": self.batches_per_rank}

    def load_state_dict(self, state: dict) -> None:
        self.batches_per_rank = state.get("batches_per_rank", self.batches_per_rank)
