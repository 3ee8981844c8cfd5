"""Which shards and samples a loader worker reads, in which order: shard assignment by rank and
worker (with borrowing from a wider share when a slot has none), seeded shuffles, passes and
resampling, and the image/video mix. Yields plans (planning.py); nothing here decodes video.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import zlib
from collections.abc import Callable, Iterator

from datamodules.options import Options
from datamodules.planning import Planner
from datamodules.shards import raw_samples

log = logging.getLogger(__name__)


def shuffled(it: Iterator, size: int, rng: random.Random) -> Iterator:
    """A seeded shuffle buffer of `size` items (webdataset's idea, with our generator)."""
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


class ShardStream:
    """The plan stream of one rank's worker for one split and epoch."""

    def __init__(self, *, urls: list[str], image_urls: list[str], opts: Options, train: bool,
                 rank: int, world_size: int, planner: Planner, epoch: int):  # fmt: skip
        self.urls, self.image_urls, self.o, self.train = urls, image_urls, opts, train
        self.rank, self.world_size, self.planner, self.epoch = rank, world_size, planner, epoch

    def _handler(self, wid: int) -> Callable[[Exception], bool]:
        def handler(exn: Exception) -> bool:
            self.planner.count(wid, "shard_errors")
            log.warning("skipping unreadable shard data: %r", exn)
            return True

        return handler

    def share(
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

    def one_pass(self, urls: list[str], keep: Callable[[int], bool], *, wid: int, pas: int,
                 seen: list[int]) -> Iterator[dict]:  # fmt: skip
        raws = (r for i, r in enumerate(raw_samples(urls, handler=self._handler(wid))) if keep(i))
        if self.train:
            seed = zlib.crc32(f"{self.o.seed}/{self.epoch}/{self.rank}/{wid}/{pas}".encode())
            raws = shuffled(raws, self.o.shuffle_buffer, random.Random(seed))
        for raw in raws:
            seen[0] += 1
            plan = self.planner.prepare(raw, wid=wid, epoch=self.epoch, pas=pas)
            if plan is not None:
                yield plan

    def endless(self, urls: list[str], *, wid: int, nw: int) -> Iterator[dict]:
        """Training plans of this worker, pass after pass (or resampled shards), never ending."""
        if self.o.resampled:
            rng = random.Random(zlib.crc32(f"{self.o.seed}/{self.epoch}/{self.rank}/{wid}/r".encode()))
            seen, got = [0], 0
            for pas in itertools.count():
                for plan in self.one_pass([rng.choice(urls)], lambda i: True, wid=wid, pas=pas, seen=seen):
                    got += 1
                    yield plan
                if got == 0 and pas >= 10 * len(urls):
                    raise RuntimeError(
                        f"no usable sample in {len(urls)} shards after {seen[0]} samples: see the counters"
                    )
        level = 0
        for pas in itertools.count():
            share, keep = self.share(urls, wid, nw, level)
            seen, got = [0], 0
            for plan in self.one_pass(share, keep, wid=wid, pas=pas, seen=seen):
                got += 1
                yield plan
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
                f"{self.planner.stats(wid)}): check the shards, buckets and short_clips"
            )

    def train_plans(self, wid: int, nw: int) -> Iterator[dict]:
        videos = self.endless(self.urls, wid=wid, nw=nw)
        if not self.image_urls or self.o.image_ratio <= 0:
            return videos
        images = self.endless(self.image_urls, wid=wid, nw=nw)
        rng = random.Random(zlib.crc32(f"{self.o.seed}/{self.epoch}/{self.rank}/{wid}/mix".encode()))
        return (
            next(images) if rng.random() < self.o.image_ratio else next(videos) for _ in itertools.count()
        )

    def eval_plans(self, wid: int) -> Iterator[dict]:
        """Every evaluation sample in file order, on every rank and worker: the batches are formed
        from the whole stream (the same on any world size), and each slot decodes only its own."""
        return self.one_pass(self.urls, lambda i: True, wid=wid, pas=0, seen=[0])
