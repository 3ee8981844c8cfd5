"""Reusable shared-memory batch blocks for loader workers.

A batch crosses from a worker to the main process in shared memory. A fresh shared block per
batch costs a shm file, an mmap and a page fault per 4 KiB in the worker (measured: ~2.5 ms of CPU
per 16x256x256 clip, an eighth of decoding it), and every tensor sent costs a file-descriptor
round trip to the worker (a socket handshake that stalls under load). So each worker keeps up to
SLOTS blocks (made on first use, grown when a batch does not fit) and writes its next batch's videos
into one the main process has released; a block travels to the main process once, with the first
batch written into it, and after that a batch says only where its videos lie (`detach`); the main
process rebuilds the views (`attach`). Small per-batch tensors (labels, fps, shapes) travel as
lists. Only the slot flags (workers x SLOTS bytes) are allocated before the workers start; a
loader's blocks are freed with it.

`release` frees a block once the uint8 videos have been copied out: by `to_unit` (the float
conversion), by `attach` when it pins them for CUDA, or after the transfer to the accelerator
(`on_after_batch_transfer`), or when the last view `attach` made of the batch's videos is garbage
collected (a view of such a view does not hold the block). Slots of batches that never reached the
consumer (a pass of persistent workers left early: the loader drops what they had prefetched) are
reclaimed at the next pass. With every slot busy the worker falls back to a fresh block sent the
usual way.
"""

from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import dataclass

import torch

SLOTS = 4  # per worker: the loader's prefetch (2 per worker) plus batches the consumer still holds
_SMALL = ("label", "fps", "shapes")  # per-batch tensors that travel as lists

# this process's tables by id, weakly: a loader's blocks go when its dataset goes
_TABLES: weakref.WeakValueDictionary[int, BlockTable] = weakref.WeakValueDictionary()
_ids = itertools.count()


class BlockTable:
    """The block slots of one loader's workers; create it in the main process before the workers.

    A slot's flag is 0 when free, else the tag (1..100) of the loader pass that filled it. `blocks`
    holds, in a worker, the blocks it made, and in the main process the ones it received."""

    def __init__(self, workers: int):
        self.id = next(_ids)
        self.flags = torch.zeros(max(1, workers), SLOTS, dtype=torch.int8).share_memory_()
        self.blocks: dict[tuple[int, int], torch.Tensor] = {}  # (row, slot) -> flat uint8
        self.live: dict[tuple[int, int], weakref.ref] = {}  # main process: slots whose batch is out
        _TABLES[self.id] = self

    def __getstate__(self):  # a spawned worker makes its own blocks
        return {**self.__dict__, "blocks": {}, "live": {}}

    def __setstate__(self, state):
        self.__dict__.update(state)
        _TABLES.setdefault(self.id, self)

    def take(self, row: int, n: int, tag: int = 1) -> tuple[torch.Tensor, tuple | None]:
        """(flat uint8 tensor of n bytes, its handle (id, row, slot, new block?); None for a one-off
        block) for worker `row`."""
        for slot in range(SLOTS):
            if int(self.flags[row, slot]) == 0:
                block = self.blocks.get((row, slot))
                new = block is None or block.numel() < n
                if new:  # a little headroom, so that slightly larger batches reuse it
                    block = self.blocks[(row, slot)] = shared_bytes(math.ceil(n * 1.25))
                self.flags[row, slot] = tag
                return block[:n], (self.id, row, slot, new)
        return shared_bytes(n), None

    def reclaim(self, tag: int) -> None:
        """Main process, at the start of a pass tagged `tag` of persistent workers (after the
        loader's reset drained the last pass): free the slots of batches no one ever received,
        never those of batches still out."""
        for row, slot in (self.flags != 0).nonzero().tolist():
            out = self.live.get((row, slot))
            if int(self.flags[row, slot]) != tag and (out is None or out() is None):
                self.flags[row, slot] = 0


def pass_tag(n: int) -> int:
    """The flag value (1..100) of loader pass number n."""
    return n % 100 + 1


class _Hold:
    """A received batch's claim on its block: freed by `release`, or when the last of its video
    views is garbage collected (each view holds it), whichever comes first; only once."""

    def __init__(self, table: BlockTable, row: int, slot: int):
        self.table, self.row, self.slot, self.done = table, row, slot, False
        table.live[(row, slot)] = weakref.ref(self)
        weakref.finalize(self, _free, table, row, slot)

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.table.live.pop((self.row, self.slot), None)
            self.table.flags[self.row, self.slot] = 0


def _free(table: BlockTable, row: int, slot: int) -> None:
    ref = table.live.get((row, slot))
    if ref is not None and ref() is None:  # the hold died unreleased: its views are gone
        table.live.pop((row, slot), None)
        table.flags[row, slot] = 0


def shared_bytes(n: int) -> torch.Tensor:
    """A flat uint8 tensor of `n` bytes in a fresh shared-memory block."""
    proto = torch.empty(0, dtype=torch.uint8)
    return proto.new(proto._typed_storage()._new_shared(max(1, n)))[:n]


@dataclass(frozen=True)
class _Where:
    """A view into a table block (a plain object: the DataLoader's convert step leaves it alone)."""

    offset: int
    shape: tuple
    stride: tuple

    @classmethod
    def of(cls, v: torch.Tensor) -> _Where:
        return cls(v.storage_offset(), tuple(v.shape), tuple(v.stride()))

    def view(self, data: torch.Tensor) -> torch.Tensor:
        return data.as_strided(self.shape, self.stride, self.offset)


@dataclass(frozen=True)
class _List:
    """A small tensor as a list (no shared memory, no descriptor passing)."""

    dtype: str
    values: list

    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.values, dtype=getattr(torch, self.dtype))


def detach(batch: dict) -> dict:
    """Worker side: videos in a table block become their places in it (a new block goes along
    once); small tensors become lists."""
    handle = batch.get("_buffer")
    if handle is not None:
        if handle[3]:
            batch["_block"] = _TABLES[handle[0]].blocks[(handle[1], handle[2])]
        if "video" in batch:
            batch["video"] = _Where.of(batch["video"])
        if "videos" in batch:
            batch["videos"] = [_Where.of(v) for v in batch["videos"]]
    for k in _SMALL:
        if isinstance(batch.get(k), torch.Tensor):
            batch[k] = _List(str(batch[k].dtype).removeprefix("torch."), batch[k].tolist())
    return batch


def attach(batch: dict, *, pin: bool = False) -> dict:
    """Main side, inverse of `detach`; `pin`: copy the videos to pinned memory (and free the block)."""
    for k in _SMALL:
        if isinstance(batch.get(k), _List):
            batch[k] = batch[k].tensor()
    handle = batch.get("_buffer")
    if handle is not None and not isinstance(handle, _Hold):
        table, key = _TABLES[handle[0]], (handle[1], handle[2])
        if "_block" in batch:
            table.blocks[key] = batch.pop("_block")
        block = table.blocks[key]
        hold = batch["_buffer"] = _Hold(table, *key)

        def view(w: _Where) -> torch.Tensor:
            v = w.view(block)
            v._block_hold = hold  # the block stays claimed while any view of it lives
            return v

        if isinstance(batch.get("video"), _Where):
            batch["video"] = view(batch["video"])
        if "videos" in batch:
            batch["videos"] = [view(v) if isinstance(v, _Where) else v for v in batch["videos"]]
    if pin and torch.cuda.is_available():
        if "video" in batch:
            batch["video"] = batch["video"].pin_memory()
        if "videos" in batch:
            batch["videos"] = [v.pin_memory() for v in batch["videos"]]
        release(batch)
    return batch


def release(batch: dict) -> None:
    """Give a batch's block back to its worker (call once its uint8 videos have been copied out)."""
    hold = batch.pop("_buffer", None)
    if isinstance(hold, _Hold):
        hold.release()
