"""Exact mid-epoch resume for training loaders.

Lightning restores a train loader mid-epoch only when the loader has `state_dict` /
`load_state_dict` (it saves that state in the checkpoint and loads it before the resumed epoch
starts). Our training loaders yield a batch stream that is a pure function of (seed, epoch): the
synthetic module shuffles with a (seed, epoch) sampler, the shard module draws everything from
(seed, epoch, rank, worker). So the state is one number, the batches already taken this epoch, and
resuming replays the same epoch's stream and drops that many batches first. A loader whose dataset
can skip batches itself (`skip_batches(n)`: the shard loader re-plans them without decoding) hands
the skip down; otherwise the dropped batches are still produced once (the synthetic loader, cheap).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableLoaderMixin:
    """Mix into a DataLoader subclass before DataLoader; wrap `super().__iter__()` in
    `_resumable(it, epoch)`, where `epoch` is the epoch of the pass that is starting.

    The state is (epoch, batches taken in it). A checkpoint written at the end of an epoch says
    (e, len): the resumed pass is e + 1 from its start (see `_resume_skip`); the skip only applies
    to a pass of the same epoch.
    """

    _epoch = 0  # epoch of the current pass
    _taken = 0  # batches yielded in the current pass
    _resume: dict | None = None  # state to honour at the start of the next pass (load_state_dict)

    def _resume_skip(self, epoch: int) -> tuple[int, int]:
        """(epoch, batches to skip) of the pass that is starting, given `epoch`, the pass the trainer
        asks for, and a loaded state. A state that closed its epoch e ((e, len) from a checkpoint
        written on the last batch) makes the pass e + 1 from its start: Lightning re-enters e on such
        a resume, counts that pass as e + 1, and would otherwise get an empty pass and skip an epoch."""
        resume, self._resume = self._resume, None
        if not resume or resume.get("epoch", epoch) != epoch:
            return epoch, 0
        if resume["taken"] >= len(self):
            return epoch + 1, 0
        return epoch, resume["taken"]

    def _resumable(self, it, epoch: int, *, skip: int | None = None, skipped: bool = False) -> Iterator:
        """Count the batches of `it`; drop the first `skip` (default: from a loaded state), or, with
        `skipped=True`, only count them: the dataset already left them out."""
        if skip is None:
            epoch, skip = self._resume_skip(epoch)
        self._epoch, self._taken = epoch, 0
        if skipped:
            self._taken = skip
            skip = 0
        for batch in it:
            self._taken += 1
            if self._taken > skip:
                yield batch

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "taken": self._taken}

    def load_state_dict(self, state: dict) -> None:
        self._resume = {"epoch": int(state.get("epoch", 0)), "taken": int(state.get("taken", 0))}


class EpochShuffleSampler(Sampler[int]):
    """A permutation of range(n) drawn from (seed, epoch): the same on every rerun of an epoch.

    torch's RandomSampler draws from the global RNG, so a resumed run would shuffle differently.
    Lightning calls `set_epoch` each epoch (and wraps this sampler for DDP).
    """

    def __init__(self, n: int, *, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())
