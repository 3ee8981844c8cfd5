"""The shard loader: one worker's batches (plans grouped into bucket batches or token packs, then
decoded), the epoch quota, resume without decoding what was trained on, equal evaluation batch
counts on every rank, and the `EpochLoader` that hands the epoch to persistent workers.

Epochs and DDP. Training is a stream with a defined length: every rank yields exactly
`batches_per_rank` batches per epoch, split over its workers (worker w gets
``batches_per_rank // W + (w < batches_per_rank % W)``; the DataLoader takes them round robin),
so ranks never wait on each other and never run out of data (stream.py says which samples).

Resume. A loaded state "k batches of epoch e taken" reaches the workers as a skip: worker w
plays the part of worker (w + k) % W of the uninterrupted run (the loader restarts its round
robin at worker 0), re-plans that worker's first ``k // W + (w' < k % W)`` batches (json and
draws only, no decode) and yields the rest: exactly the batches an uninterrupted run yields after
its first k, in its order.
A batch whose every sample fails to decode is replaced by the next one (a resume past such a batch
is then one batch late in that worker; corrupt samples are counted either way).

Evaluation. Every rank and worker plans the whole split in file order (tar and json reading, no
decode) and the batches are formed from that one stream: global batch i belongs to rank
``i % world_size`` and, there, to worker ``(i // world_size) % W``. Every rank yields
``ceil(N / world_size)`` batches: a rank short of that repeats the split's last batch, with
``meta["padding"] = True`` on its samples (DistributedSampler's rule), so DDP ranks never wait on
each other in validation; a batch that fails to decode is replaced the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datamodules.buckets import BucketBatcher
from datamodules.buffers import BlockTable, attach, detach, pass_tag
from datamodules.collate import collate_bucketed, collate_packed, to_unit
from datamodules.options import Options
from datamodules.packing import StreamPacker
from datamodules.planning import Planner
from datamodules.resumable import ResumableLoaderMixin
from datamodules.stream import ShardStream


class ShardDataset(IterableDataset):
    """The per-worker stream of one split; yields finished batches (the loader's batch_size is None)."""

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
        # [epoch, batches to skip, pass number]: shared memory, so persistent workers see each pass
        self.control = torch.zeros(3, dtype=torch.long).share_memory_()
        # reusable batch blocks for the workers (buffers.py), allocated here, before they start
        self.blocks = BlockTable(opts.num_workers) if opts.num_workers > 0 else None
        self._alloc = None  # a worker's `take` from its row of blocks

    @property
    def epoch(self) -> int:
        return int(self.control[0])

    def set_epoch(self, epoch: int) -> None:
        self.control[0] = int(epoch)

    def skip_batches(self, n: int) -> None:
        """Leave out the first `n` batches of the next pass (planned, not decoded)."""
        self.control[1] = int(n)

    # ---- plans -> groups -> batches ----------------------------------------------------------------
    def _groups(self, plans: Iterator[dict], *, final_flush: bool) -> Iterator[list[dict]]:
        if self.o.batching == "bucket":  # one shape per group, the bucket's batch size
            return BucketBatcher(flush=final_flush)(plans)
        packer = StreamPacker(
            tokens_per_batch=self.o.tokens_per_batch,
            window=self.o.pack_window,
            min_fill=self.o.pack_min_fill,
            size=lambda p: p["tokens"],
        )
        return packer(plans)

    def _emit(self, group: list[dict], planner: Planner, *, wid: int) -> dict | None:
        """Decode a group and collate it (uint8 across processes); None if every sample failed."""
        samples = [s for s in (planner.realize(p, wid=wid) for p in group) if s is not None]
        if not samples:
            return None
        planner.count(wid, "batches")
        if self.o.batching == "bucket":
            batch = collate_bucketed(samples, scale=False, alloc=self._alloc)
        else:
            planner.count(wid, "tokens", sum(s["tokens"] for s in samples))
            planner.count(wid, "budget", self.o.tokens_per_batch)
            batch = collate_packed(samples, scale=False, alloc=self._alloc)
        return detach(batch) if self._alloc is not None else batch

    def _train(
        self, stream: ShardStream, planner: Planner, *, wid: int, nw: int, skip: int
    ) -> Iterator[dict]:
        quota = self.batches_per_rank // nw + (wid < self.batches_per_rank % nw)
        skip = skip // nw + (wid < skip % nw)  # this worker's share of the batches already taken
        groups = self._groups(stream.train_plans(wid, nw), final_flush=False)
        done = 0
        while done < quota:
            group = next(groups)
            if done < skip:
                done += 1  # planned, never decoded
                continue
            batch = self._emit(group, planner, wid=wid)
            if batch is not None:
                done += 1
                yield batch

    def _eval(self, stream: ShardStream, planner: Planner, *, wid: int, nw: int) -> Iterator[dict]:
        world, rank = self.world_size, self.rank
        n, last, good, owed = 0, None, None, 0
        for i, group in enumerate(self._groups(stream.eval_plans(wid), final_flush=True)):
            n, last = i + 1, group
            if i % world != rank or (i // world) % nw != wid:
                continue
            batch = self._emit(group, planner, wid=wid)
            if batch is None:
                owed += 1  # keep the count: repeat a decoded group in its place
                continue
            good = group
            yield batch
            for _ in range(owed):
                yield from self._padding(good, planner, wid)
            owed = 0
        local = len(range(rank, n, world))  # this rank's batches; every rank yields ceil(n / world)
        if local < -(-n // world) and local % nw == wid:
            owed += 1
        for _ in range(owed):
            yield from self._padding(good or last, planner, wid)

    def _padding(self, group: list[dict] | None, planner: Planner, wid: int) -> Iterator[dict]:
        """`group` decoded again, its samples saying ``padding: True`` (equal counts per rank).
        (A group that fails to decode again costs the count one batch: logged as corrupt.)"""
        batch = self._emit(group, planner, wid=wid) if group else None
        if batch is not None:
            planner.count(wid, "padding")
            batch["meta"] = [{**m, "padding": True} for m in batch["meta"]]
            yield batch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            torch.set_num_threads(1)  # decord and torch ops per worker: workers are the parallelism
            if self.blocks is not None:  # this pass's batches carry its tag (buffers.BlockTable.reclaim)
                tag = pass_tag(int(self.control[2]))
                self._alloc = functools.partial(self.blocks.take, info.id, tag=tag)
        planner = Planner(
            self.o, train=self.train, image_shards=bool(self.image_urls), counters=self.counters
        )
        stream = ShardStream(urls=self.urls, image_urls=self.image_urls, opts=self.o, train=self.train,
                             rank=self.rank, world_size=self.world_size, planner=planner, epoch=self.epoch)  # fmt: skip
        if self.train:
            skip = int(self.control[1])
            # the DataLoader takes batches round robin from worker 0; the uninterrupted run's next batch
            # (number `skip`) is worker skip % nw's: rename the workers so that one goes first
            yield from self._train(stream, planner, wid=(wid + skip) % nw, nw=nw, skip=skip)
        else:
            yield from self._eval(stream, planner, wid=wid, nw=nw)


class EpochLoader(ResumableLoaderMixin, DataLoader):
    """A DataLoader that tells its dataset the epoch before each pass (Lightning only tells samplers).

    Its stream is a pure function of (seed, epoch), so it resumes exactly mid-epoch (resumable.py);
    the epoch and the resume skip travel in shared memory, so persistent workers see them.
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

    normalize_on_device = False  # set by the datamodule when the training step scales batches itself

    def __iter__(self):
        if self.on_epoch_start is not None:
            self.on_epoch_start()
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        epoch = self._count if epoch is None else epoch
        self._count += 1
        epoch, skip = self._resume_skip(epoch)
        self.dataset.set_epoch(epoch)
        self.dataset.skip_batches(skip)  # before the workers start (or resume) this pass
        self.dataset.control[2] += 1
        base = super().__iter__()  # (persistent workers: the last pass's leftovers are drained here)
        if (
            self.dataset.blocks is not None and self.persistent_workers
        ):  # (new workers: old ones may still write)
            self.dataset.blocks.reclaim(pass_tag(int(self.dataset.control[2])))
        batches = (attach(b, pin=self.pin_memory) for b in base)  # videos from the workers' blocks
        it = self._resumable(batches, epoch, skip=skip, skipped=True)
        # workers ship uint8; the contract's float [-1, 1] is made here, or after the batch transfer
        return it if self.normalize_on_device else map(to_unit, it)

    def __len__(self) -> int:  # training: the defined epoch length; evaluation: unknown
        if self.dataset.batches_per_rank is None:
            raise TypeError("evaluation loaders stream their shards once; their length is not known up front")
        return self.dataset.batches_per_rank
