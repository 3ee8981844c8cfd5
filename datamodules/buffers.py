"""Reusable shared-memory batch blocks for loader workers.

A batch crosses from a worker to the main process in shared memory. A fresh shared block per
batch costs a shm file, an mmap and a page fault per 4 KiB in the worker (measured: ~2.5 ms of CPU
per 16x256x256 clip, an eighth of decoding it), and every tensor sent costs a file-descriptor
round trip to the worker (a socket handshake that stalls under load). So the main process
allocates, before the workers start, one shared table of blocks (workers x SLOTS x the largest
batch in bytes; pages only become memory when written), and a worker writes its next batch's
videos into a block the main process has released and sends only where they lie (`detach`); the
main process rebuilds the views (`attach`). Small per-batch tensors (labels, fps, shapes) travel
as lists. `release` frees a block once the uint8 videos have been copied out: by `to_unit` (the
float conversion), by `attach` when it pins them for CUDA, or after the transfer to the
accelerator (`on_after_batch_transfer`). A block never released (a batch dropped unconverted)
only costs its slot: with every slot busy, or a batch larger than a block, the worker falls back
to a fresh block sent the usual way.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

SLOTS = 6  # per worker: the loader's prefetch (2 per worker) plus batches the consumer still holds
_SMALL = ("label", "fps", "shapes")  # per-batch tensors that travel as lists

_TABLES: dict[int, BlockTable] = {}  # this process's tables, by id (the main process releases)
_ids = itertools.count()


class BlockTable:
    """Blocks for every worker of one loader; create it in the main process before the workers."""

    def __init__(self, workers: int, nbytes: int):
        self.id, self.nbytes = next(_ids), int(nbytes)
        self.flags = torch.zeros(max(1, workers), SLOTS, dtype=torch.int8).share_memory_()  # 1 = in use
        self.data = torch.empty(
            max(1, workers), SLOTS, max(1, self.nbytes), dtype=torch.uint8
        ).share_memory_()
        _TABLES[self.id] = self

    def __setstate__(self, state):  # a spawned worker: register the table it received
        self.__dict__.update(state)
        _TABLES.setdefault(self.id, self)

    def take(self, row: int, n: int) -> tuple[torch.Tensor, tuple[int, int, int] | None]:
        """(flat uint8 tensor of n bytes, its handle; None for a one-off block) for worker `row`."""
        if n <= self.nbytes:
            for slot in range(SLOTS):
                if int(self.flags[row, slot]) == 0:
                    self.flags[row, slot] = 1
                    return self.data[row, slot, :n], (self.id, row, slot)
        return shared_bytes(n), None


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
    """Worker side: videos in a table block become their places in it; small tensors become lists."""
    if "_buffer" in batch:
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
    if handle is not None:
        data = _TABLES[handle[0]].data
        if isinstance(batch.get("video"), _Where):
            batch["video"] = batch["video"].view(data)
        if "videos" in batch:
            batch["videos"] = [v.view(data) if isinstance(v, _Where) else v for v in batch["videos"]]
    if pin and torch.cuda.is_available():
        if "video" in batch:
            batch["video"] = batch["video"].pin_memory()
        if "videos" in batch:
            batch["videos"] = [v.pin_memory() for v in batch["videos"]]
        release(batch)
    return batch


def release(batch: dict) -> None:
    """Give a batch's block back to its worker (call once its uint8 videos have been copied out)."""
    handle = batch.pop("_buffer", None)
    if handle is not None and handle[0] in _TABLES:
        _TABLES[handle[0]].flags[handle[1], handle[2]] = 0
