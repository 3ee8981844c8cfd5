"""`VideoShardsDataModule`: webdataset shards -> decord -> buckets or packs -> contract batches.

Pipeline of one loader worker (small generator stages, read top to bottom in `_train_batches`):

    shard list (expanded; shuffled with seed+epoch; split by rank, then by worker)
      -> raw samples (webdataset tar parsing; a broken shard is counted and skipped)
      -> shuffle buffer (seeded)  -> prepare: json/caption/label, held-out check, bucket or pack
         shape, frame indices, decord decode of only those frames at the cover size, crop, flip,
         [-1, 1]  (a sample that fails is counted and skipped)
      -> one-shape batches (`buckets.BucketBatcher`) or token-budget packs (`packing.StreamPacker`)

Epochs and DDP. Training is a stream with a *defined length*: every rank yields exactly
`batches_per_rank` batches per epoch, split over its workers (worker w gets
``batches_per_rank // W + (w < batches_per_rank % W)``), so ranks never wait on each other and
never run out of data. A worker reads its share of the shards in passes until it has its quota:
the share is fixed for the epoch (disjoint across ranks and workers), a pass reshuffles the sample
order, and a worker whose share is small simply starts another pass (its samples repeat, never
another rank's). With fewer shards than ranks x workers, the split is by sample instead (every
slot reads the shards, keeps every n-th sample). With `resampled=True` shards are drawn with
replacement per worker instead (webdataset's ResampledShards idea; disjointness is then only
statistical).

    batches_per_rank = ceil(batches_per_epoch / world_size) when `batches_per_epoch` is set, else
    ceil(N / world_size) with N from one metadata pass over the training shards' json (no video
    decode), for the epoch-0 draws:
      bucketing: N = sum over buckets b of ceil(n_b / batch_size_b)  (n_b clips assigned to b)
      fixed shape: the same with a single bucket (and one image bucket)
      packing:   N = ceil(sum of clip tokens / tokens_per_batch)
    image shards mixed at ratio r add n_videos * r / (1 - r) images to that count. N is at least 1:
    a tiny dataset repeats its samples rather than giving an empty epoch.

The epoch number reaches the workers through the loader: `EpochLoader.__iter__` reads the
trainer's epoch (or counts itself), so shuffles and keep-draws are deterministic given seed and
epoch and differ across epochs.

Validation and test read their own shards once per epoch in file order with centred temporal
offsets and crops, no flip, no keep-probability draws: the same clips, offsets and batches every
time (leftover partial batches are emitted). A training shard list that shares a shard with the
validation list is an error, and a training sample whose json says ``split != "train"`` is
dropped and counted (``heldout``).

Videos cross from the workers as uint8 (4x less to move) and become the contract's float in
[-1, 1] in the loader's iterator, or, for the training loader of a trainer on an accelerator, on
the device in `on_after_batch_transfer` (so the LightningModule always sees float, and so does
anyone iterating the val/test loaders directly).

Counters (corrupt, short, heldout, no_bucket, shard_errors, samples, batches, tokens, budget)
live in shared memory; each epoch they are printed on rank zero and written to the trainer's
logger under ``data/<split>/...`` (packing: ``data/train/utilization`` = real tokens / budget).
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import random
import zlib
from collections.abc import Callable, Iterator
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from curation.schema import EMB, JSON, LATENT, MP4, TXT
from datamodules.buckets import Bucket, BucketBatcher, Buckets, key_rng
from datamodules.collate import collate_bucketed, collate_packed, to_unit
from datamodules.decode import IMAGE_FIELDS, decode_image, decode_video, probe_video
from datamodules.packing import StreamPacker, TokenGrid
from datamodules.resumable import ResumableLoaderMixin
from datamodules.sampling import ShortPolicy, frame_indices, max_frames, sampling_step
from datamodules.shards import expand_shards, raw_samples, scan_metadata
from datamodules.transforms import LatentMappingError, cover_size, crop_offsets, latent_view, to_tensor

log = logging.getLogger(__name__)

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
]
_C = {name: i for i, name in enumerate(COUNTERS)}


class Options(dict):
    """The datamodule's hyper-parameters as attributes (a plain, picklable dict)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class ShardDataset(IterableDataset):
    """The per-worker stream for one split; yields finished batches (the loader's batch_size is None)."""

    def __init__(
        self,
        *,
        urls: list[str],
        image_urls: list[str],
        opts: Options,
        train: bool,
        rank: int,
        world_size: int,
        batches_per_rank: int | None,
        counters: torch.Tensor,
    ):
        self.urls, self.image_urls, self.o, self.train = urls, image_urls, opts, train
        self.rank, self.world_size, self.batches_per_rank = rank, world_size, batches_per_rank
        self.counters = counters  # (num_workers, len(COUNTERS)) int64, shared memory
        self.epoch = 0
        self.grid = TokenGrid(
            patch_size=tuple(opts.patch_size), latent_downsample=tuple(opts.latent_downsample)
        )
        self.buckets = make_buckets(opts, self.grid) if opts.batching == "bucket" else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # ---- bookkeeping -------------------------------------------------------------------------
    def _count(self, wid: int, name: str, n: int = 1) -> None:
        self.counters[wid, _C[name]] += n

    def _handler(self, wid: int) -> Callable[[Exception], bool]:
        def handler(exn: Exception) -> bool:
            self._count(wid, "shard_errors")
            log.warning("skipping unreadable shard data: %r", exn)
            return True

        return handler

    # ---- which shards / samples this worker reads ----------------------------------------------
    def _share(
        self, urls: list[str], wid: int, nw: int, level: int
    ) -> tuple[list[str], Callable[[int], bool]]:
        """(urls, keep(i)) for this rank/worker; level 1 = the whole rank share, 2 = everything."""
        order = list(urls)
        if self.train and self.o.shuffle_shards:
            random.Random(self.o.seed * 1_000_003 + self.epoch).shuffle(order)  # same order on every rank
        parts = [(self.world_size, self.rank), (nw, wid)][: 2 - level] if level < 2 else []
        keep_mod: list[tuple[int, int]] = []
        for n, i in parts:
            if n > 1 and len(order) >= n and not keep_mod:
                order = order[i::n]  # split by shard
            elif n > 1:
                keep_mod.append((n, i))  # too few shards: split by sample
        if not keep_mod:
            return order, lambda i: True
        total = math.prod(n for n, _ in keep_mod)
        slot = 0
        for n, i in keep_mod:
            slot = slot * n + i
        return order, lambda i: i % total == slot

    # ---- one sample: plan (cheap, no video decode), then realize (decode) ------------------------
    def _prepare(self, raw: dict, *, wid: int, pas: int) -> dict | None:
        """A plan: target shape, frame indices, crop and flip decided, the decode deferred to
        `_realize` (packing groups plans, so only clips that made a pack are decoded)."""
        o, train = self.o, self.train
        key = raw.get("__key__", "")
        try:
            meta = json.loads(raw[JSON]) if JSON in raw else {}
            meta.setdefault("key", key)
            meta["__url__"] = raw.get("__url__", "")
            if train and meta.get("split", "train") != "train":
                self._count(wid, "heldout")
                return None
            caption = raw[TXT].decode("utf-8", "replace") if TXT in raw else str(meta.get("caption", ""))
            label = int(raw["cls"].decode()) if "cls" in raw else int(meta.get("label", -1))
            rng = key_rng(key, o.seed, self.epoch, pas) if train else None
            image_field = next((f for f in IMAGE_FIELDS if f in raw), None)
            if MP4 in raw:
                plan = self._plan_video(raw[MP4], meta, rng, wid=wid)
            elif image_field:
                plan = self._plan_image(raw[image_field], meta, rng, wid=wid)
            else:
                raise ValueError(
                    f"no {MP4} or image field (has {sorted(k for k in raw if not k.startswith('__'))})"
                )
        except Exception as exn:  # noqa: BLE001 - a bad sample costs one sample, never the run
            self._count(wid, "corrupt")
            log.warning("sample %s (%s): %r, skipped", key, raw.get("__url__"), exn)
            return None
        if plan is None:
            return None
        plan.update(caption=caption, label=label, meta=meta)
        if o.load_latents and LATENT in raw:
            plan["latent_bytes"] = raw[LATENT]
        if EMB in raw:
            meta["has_emb"] = True
        return plan

    def _realize(self, plan: dict, *, wid: int) -> dict | None:
        """Decode a plan into a sample ({"video" (3, T, H, W) in [-1, 1], ...}); None if it fails."""
        meta = plan["meta"]
        try:
            frames = plan["load"]()  # (T, >=rh, >=rw, 3) uint8
            top, left, hh, ww = meta["crop"]
            video = to_tensor(
                frames, top=top, left=left, height=hh, width=ww, flip=meta["flip"]
            )  # (3, T, H, W) uint8; collate scales it to [-1, 1]
            sample = {k: plan[k] for k in ("caption", "label", "fps", "meta", "bucket", "tokens")}
            sample["video"] = video
            if "latent_bytes" in plan:  # the latent of exactly these frames, crop and flip
                sample["latent"] = latent_view(
                    torch.from_numpy(np.load(io.BytesIO(plan["latent_bytes"]))).float(),
                    frame_indices=meta["frame_indices"],
                    crop=meta["crop"],
                    flip=meta["flip"],
                    native=plan["native"],
                    resized=plan["resized"],
                    factors=tuple(self.o.latent_downsample),
                    key=meta.get("key", ""),
                )
        except LatentMappingError:
            raise  # a configuration error: skipping every sample would hide it
        except Exception as exn:  # noqa: BLE001 - a bad sample costs one sample, never the run
            self._count(wid, "corrupt")
            log.warning("sample %s (%s): %r, skipped", meta.get("key"), meta.get("__url__"), exn)
            return None
        self._count(wid, "samples")
        self._count(wid, "images", int(video.shape[1] == 1))
        return sample

    def _shape(self, h: int, w: int, n: int, step: float, *, image: bool, rng, wid: int):
        """(Bucket or None, T, H, W) for a clip of native (n, h, w) frames; None when refused."""
        if self.buckets is not None:
            b = self.buckets.assign(
                height=h,
                width=w,
                num_source=n,
                step=step,
                image=image,
                rng=key_rng("bucket", int(rng.integers(2**31))) if rng is not None else None,
            )
            if b is None:
                self._count(wid, "no_bucket")
                return None
            return b, b.num_frames, b.height, b.width
        t = 1 if image else min(self.o.max_frames or self.o.num_frames, max_frames(n, step))
        if t < self.o.min_frames and not image:
            self._count(wid, "short")
            return None
        t, hh, ww = self.grid.fit(t, h, w, max_tokens=self.o.max_tokens_per_sample or self.o.tokens_per_batch)
        return None, t, hh, ww

    def _plan(self, load, h, w, shape, rng, meta: dict, fps: float, idx: list[int]) -> dict:
        bucket, t, hh, ww = shape
        rh, rw = cover_size(h, w, hh, ww)
        top, left = crop_offsets(rh, rw, hh, ww, rng)
        if self.o.load_latents:  # crops on the latent grid, so that latents can follow them
            _, dh, dw = self.o.latent_downsample
            top, left = top - top % dh, left - left % dw
        flip = bool(self.o.hflip and rng is not None and rng.random() < 0.5)
        meta.update(frame_indices=idx, crop=[top, left, hh, ww], flip=flip)
        tokens = self.grid.tokens(t, hh, ww) if self.o.batching == "pack" else 0
        return {"load": lambda: load((rh, rw)), "fps": fps, "bucket": bucket, "tokens": tokens,
                "native": (h, w), "resized": (rh, rw)}  # fmt: skip

    def _plan_video(self, data: bytes, meta: dict, rng, *, wid: int) -> dict | None:
        o = self.o
        if all(k in meta for k in ("num_frames", "fps", "height", "width")):
            n, fps, h, w = (
                int(meta["num_frames"]),
                float(meta["fps"]),
                int(meta["height"]),
                int(meta["width"]),
            )
        else:
            info = probe_video(data)
            n, fps, h, w = info.num_frames, info.fps, info.height, info.width
        step = sampling_step(fps, frame_stride=o.frame_stride, target_fps=o.target_fps)
        as_image = o.num_frames == 1 or bool(
            rng is not None and not self.image_urls and o.image_ratio > 0 and rng.random() < o.image_ratio
        )
        shape = self._shape(h, w, n, step, image=as_image, rng=rng, wid=wid)
        if shape is None:
            return None
        if as_image:  # a frame drawn from the video (Latte/VDM joint training)
            idx, eff_fps = [int(rng.integers(0, n)) if rng is not None else n // 2], 0.0
        else:
            got = frame_indices(n, fps, num_frames=shape[1], step=step, rng=rng, short_clips=o.short_clips)
            if got is None:
                self._count(wid, "short")
                return None
            idx, eff_fps = got
        return self._plan(
            lambda size: decode_video(data, idx, size=size), h, w, shape, rng, meta, eff_fps, idx
        )

    def _plan_image(self, data: bytes, meta: dict, rng, *, wid: int) -> dict | None:
        frames = decode_image(data)  # (1, H, W, 3): images are small, decoded here to learn their size
        h, w = frames.shape[1:3]
        shape = self._shape(h, w, 1, 1.0, image=True, rng=rng, wid=wid)
        if shape is None:
            return None

        def load(size):
            if size == (h, w):
                return frames
            x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (1, 3, H, W)
            x = torch.nn.functional.interpolate(
                x, size=size, mode="bilinear", antialias=True, align_corners=False
            )
            return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()  # (1, rh, rw, 3)

        return self._plan(load, h, w, shape, rng, meta, 0.0, [0])

    # ---- streams -----------------------------------------------------------------------------
    def _shuffled(self, it: Iterator, rng: random.Random) -> Iterator:
        size = self.o.shuffle_buffer
        if size <= 1:
            yield from it
            return
        buf: list = []
        for x in it:
            if len(buf) < size:
                buf.append(x)
                continue
            j = rng.randrange(size)
            yield buf[j]
            buf[j] = x
        rng.shuffle(buf)
        yield from buf

    def _pass(
        self,
        urls: list[str],
        keep: Callable[[int], bool],
        *,
        wid: int,
        pas: int,
        seen: list[int],
    ) -> Iterator[dict]:
        raws = (r for i, r in enumerate(raw_samples(urls, handler=self._handler(wid))) if keep(i))
        if self.train:
            raws = self._shuffled(
                raws,
                random.Random(zlib.crc32(f"{self.o.seed}/{self.epoch}/{self.rank}/{wid}/{pas}".encode())),
            )
        for raw in raws:
            seen[0] += 1
            s = self._prepare(raw, wid=wid, pas=pas)
            if s is not None:
                yield s

    def _endless(self, urls: list[str], *, wid: int, nw: int) -> Iterator[dict]:
        """Training samples of this worker, pass after pass (or resampled shards), never ending."""
        if self.o.resampled:
            rng = random.Random(zlib.crc32(f"{self.o.seed}/{self.epoch}/{self.rank}/{wid}/r".encode()))
            seen, got = [0], 0
            for pas in itertools.count():
                for s in self._pass([rng.choice(urls)], lambda i: True, wid=wid, pas=pas, seen=seen):
                    got += 1
                    yield s
                if got == 0 and pas >= 10 * len(urls):
                    raise RuntimeError(
                        f"no usable sample in {len(urls)} shards after {seen[0]} samples: see the counters"
                    )
        level = 0
        for pas in itertools.count():
            share, keep = self._share(urls, wid, nw, level)
            seen, got = [0], 0
            for s in self._pass(share, keep, wid=wid, pas=pas, seen=seen):
                got += 1
                yield s
            if got:
                continue
            if seen[0] == 0 and level < 2:
                level += 1  # fewer samples than ranks x workers: borrow from the wider share
                log.warning(
                    "rank %d worker %d has no samples of its own; reading a wider share (level %d)",
                    self.rank,
                    wid,
                    level,
                )
                continue
            raise RuntimeError(
                f"no usable training sample in {len(urls)} shards ({seen[0]} read; counters "
                f"{dict(zip(COUNTERS, self.counters[wid].tolist()))}): check the shards, buckets and short_clips"
            )

    def _train_samples(self, wid: int, nw: int) -> Iterator[dict]:
        videos = self._endless(self.urls, wid=wid, nw=nw)
        if not self.image_urls or self.o.image_ratio <= 0:
            return videos
        images = self._endless(self.image_urls, wid=wid, nw=nw)
        rng = random.Random(zlib.crc32(f"{self.o.seed}/{self.epoch}/{self.rank}/{wid}/mix".encode()))
        return (
            next(images) if rng.random() < self.o.image_ratio else next(videos) for _ in itertools.count()
        )

    def _eval_samples(self, wid: int, nw: int) -> Iterator[dict]:
        share, keep = self._share(self.urls, wid, nw, 0)
        return self._pass(share, keep, wid=wid, pas=0, seen=[0])

    def _watched(self, plans: Iterator[dict], *, wid: int) -> Iterator[dict]:
        """Fail loudly instead of spinning when no planned sample ever decodes (all corrupt)."""
        limit, since, last = 4 * self.o.pack_window + 1000, 0, -1
        for p in plans:
            done = int(self.counters[wid, _C["samples"]])
            since = 0 if done != last else since + 1
            last = done
            if since > limit:
                raise RuntimeError(
                    f"{since} samples in a row failed to decode (counters "
                    f"{dict(zip(COUNTERS, self.counters[wid].tolist()))}): the training shards look broken"
                )
            yield p

    def _batches(self, plans: Iterator[dict], *, wid: int, final_flush: bool) -> Iterator[dict]:
        plans = self._watched(plans, wid=wid)
        if self.o.batching == "bucket":  # decode first: a batch is emitted only when full
            samples = (s for s in (self._realize(p, wid=wid) for p in plans) if s is not None)
            for group in BucketBatcher(flush=final_flush)(samples):
                self._count(wid, "batches")
                yield collate_bucketed(group, scale=False)  # uint8 across processes
            return
        size = lambda s: s["tokens"]  # noqa: E731
        packer = StreamPacker(
            tokens_per_batch=self.o.tokens_per_batch,
            window=self.o.pack_window,
            min_fill=self.o.pack_min_fill,
            size=size,
        )
        for group in packer(plans):  # pack plans, decode only what made a pack
            samples = [s for s in (self._realize(p, wid=wid) for p in group) if s is not None]
            if not samples:
                continue
            self._count(wid, "batches")
            self._count(wid, "tokens", sum(size(s) for s in samples))
            self._count(wid, "budget", self.o.tokens_per_batch)
            yield collate_packed(samples, scale=False)  # uint8 across processes

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            torch.set_num_threads(1)  # decord and torch ops per worker: workers are the parallelism
        if not self.train:
            yield from self._batches(self._eval_samples(wid, nw), wid=wid, final_flush=True)
            return
        quota = self.batches_per_rank // nw + (wid < self.batches_per_rank % nw)
        if quota:
            yield from itertools.islice(
                self._batches(self._train_samples(wid, nw), wid=wid, final_flush=False), quota
            )


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


class EpochLoader(ResumableLoaderMixin, DataLoader):
    """A DataLoader that tells its dataset the epoch before each pass (Lightning only tells samplers).

    Its stream is a pure function of (seed, epoch), so it resumes exactly mid-epoch (resumable.py).
    """

    def __init__(
        self,
        dataset: ShardDataset,
        *,
        epoch_fn: Callable[[], int | None] | None = None,
        on_epoch_start: Callable[[], None] | None = None,
        **kw,
    ):
        super().__init__(dataset, batch_size=None, **kw)
        self.epoch_fn, self.on_epoch_start, self._count = epoch_fn, on_epoch_start, 0

    normalize_on_device = False  # set by the datamodule when a trainer moves batches to an accelerator

    def __iter__(self):
        if self.on_epoch_start is not None:
            self.on_epoch_start()
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        self.dataset.set_epoch(self._count if epoch is None else epoch)
        self._count += 1
        it = self._resumable(super().__iter__(), self.dataset.epoch)
        # workers ship uint8; the contract's float [-1, 1] is made here, or on the GPU after transfer
        return it if self.normalize_on_device else map(to_unit, it)

    def __len__(self) -> int:  # training: the defined epoch length; evaluation: unknown
        if self.dataset.batches_per_rank is None:
            raise TypeError("evaluation loaders stream their shards once; their length is not known up front")
        return self.dataset.batches_per_rank


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
        self.opts = Options(self.hparams)
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
        """N of the module docstring: batches in one epoch over all ranks, from the shards' json."""
        o = self.opts
        if o.batches_per_epoch:
            return int(o.batches_per_epoch)
        metas = [
            m
            for url in tqdm(
                urls, desc="sizing the epoch (shard json)", disable=len(urls) < 16 or self._dist()[0] != 0
            )
            for m in _safe_scan(url)
        ]
        videos = [m for m in metas if MP4 in m["__fields__"] and m.get("split", "train") == "train"]
        if not videos:
            rank_zero_warn(
                f"found no training clips in the json of {len(urls)} shards: the epoch is 1 batch; "
                "set batches_per_epoch (needed for shards without per-sample json)"
            )

        def step_of(m):
            return sampling_step(
                float(m.get("fps", 30.0)), frame_stride=o.frame_stride, target_fps=o.target_fps
            )

        if o.batching == "pack":
            total = 0
            for m in videos:
                if not all(k in m for k in ("num_frames", "height", "width")):
                    continue
                t = min(o.max_frames or o.num_frames, max_frames(int(m["num_frames"]), step_of(m)))
                if t >= o.min_frames:
                    total += math.ceil(
                        self.grid.tokens(
                            *self.grid.fit(
                                t,
                                int(m["height"]),
                                int(m["width"]),
                                max_tokens=o.max_tokens_per_sample or o.tokens_per_batch,
                            )
                        )
                    )
            return max(
                1, math.ceil(total / o.tokens_per_batch / (1 - (o.image_ratio if o.image_shards else 0)))
            )
        buckets = make_buckets(o, self.grid)
        counts: dict[Bucket, int] = {}
        for m in videos:
            key = m["__key__"]
            rng = key_rng(key, o.seed, 0, 0)
            image = o.num_frames == 1 or bool(
                not o.image_shards and o.image_ratio > 0 and rng.random() < o.image_ratio
            )
            h, w, n = (
                int(m.get("height", o.height)),
                int(m.get("width", o.width)),
                int(m.get("num_frames", 10**6)),
            )
            b = buckets.assign(
                height=h,
                width=w,
                num_source=n,
                step=step_of(m),
                image=image,
                rng=key_rng("bucket", int(rng.integers(2**31))),
            )
            too_short = b is not None and not image and max_frames(n, step_of(m)) < b.num_frames
            if b is not None and not (too_short and o.short_clips == "skip"):
                counts[b] = counts.get(b, 0) + 1
        total = sum(math.ceil(n / b.batch_size) for b, n in counts.items())
        if o.image_shards and o.image_ratio > 0:
            image_bs = [b.batch_size for b in buckets.all if b.num_frames == 1] or [o.batch_size]
            total += math.ceil(len(videos) * o.image_ratio / (1 - o.image_ratio) / max(image_bs))
        return max(1, total)

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
            persistent_workers=False,
        )
        trainer = self.trainer
        # training only: evaluation callbacks may iterate val/test loaders themselves and need float
        loader.normalize_on_device = bool(
            train and trainer is not None and trainer.strategy.root_device.type != "cpu"
        )
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


def _safe_scan(url: str) -> list[dict]:
    try:
        return scan_metadata(url)
    except Exception as exn:  # noqa: BLE001 - the loader will count the broken shard
        log.warning("could not scan %s for metadata (%r); it counts as empty when sizing the epoch", url, exn)
        return []
