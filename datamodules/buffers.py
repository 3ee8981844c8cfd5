"""Reusable shared-memory batch buffers for loader workers.

A batch crosses from a worker to the main process in shared memory. A fresh shared block per batch
costs a shm file, an mmap and a page fault per 4 KiB in the worker (measured: ~2.5 ms of CPU per
16x256x256 clip, an eighth of decoding it), so each worker keeps a small ring of blocks and writes
its next batch into one the main process has released. The batch names its block
(``batch["_buffer"]``); `release` frees it once the uint8 videos have been copied out: by `to_unit`
(the float conversion) or by the transfer to the accelerator (pinned or not, the host memory has
been read when `on_after_batch_transfer` runs). A block never released (a batch dropped unconverted)
only costs the ring that slot: with every slot busy, the worker allocates a fresh block as before.
"""

from __future__ import annotations

import itertools

import torch

SLOTS = 6  # per worker: the loader's prefetch (2 per worker) plus batches the consumer still holds

_RINGS: dict[int, torch.Tensor] = {}  # ring id -> (workers, SLOTS) int8 "in use" flags, in shared memory
_ids = itertools.count()


def shared_bytes(n: int) -> torch.Tensor:
    """A flat uint8 tensor of `n` bytes in a fresh shared-memory block."""
    proto = torch.empty(0, dtype=torch.uint8)
    return proto.new(proto._typed_storage()._new_shared(max(1, n)))[:n]


class BufferRing:
    """One worker's reusable blocks; `flags` is shared with the main process, which frees slots."""

    def __init__(self, ring: tuple[int, torch.Tensor], row: int):
        self.id, self.flags, self.row = ring[0], ring[1], row
        self.blocks: list[torch.Tensor | None] = [None] * self.flags.shape[1]

    def take(self, n: int) -> tuple[torch.Tensor, tuple[int, int, int] | None]:
        """(flat uint8 tensor of n bytes, its handle for `release`; None for a one-off block)."""
        for slot, block in enumerate(self.blocks):
            if int(self.flags[self.row, slot]) == 0:
                if block is None or block.numel() < n:
                    block = self.blocks[slot] = shared_bytes(n)
                self.flags[self.row, slot] = 1
                return block[:n], (self.id, self.row, slot)
        return shared_bytes(n), None  # every slot still held by the consumer


def new_ring(workers: int) -> tuple[int, torch.Tensor]:
    """A ring table for a loader with `workers` processes, registered for `release` in this process."""
    rid = next(_ids)
    _RINGS[rid] = torch.zeros(max(1, workers), SLOTS, dtype=torch.int8).share_memory_()
    return rid, _RINGS[rid]


def release(batch: dict) -> None:
    """Give a batch's block back to its worker (call once its uint8 videos have been copied out)."""
    handle = batch.pop("_buffer", None)
    if handle is not None and handle[0] in _RINGS:
        _RINGS[handle[0]][handle[1], handle[2]] = 0
