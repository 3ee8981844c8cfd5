"""Decoded frames the analysis pass hands to extraction, so a clip is not decoded twice.

The analysis pass decodes every frame of a source; extraction needs the frames of the clips that
pass the motion filter, which is only known after the pass. Rather than decode those frames again
(a seek and a decode per stretch of clips), the analysis pass keeps its decoded frames, as
FFmpeg decoded them (no copy, no conversion), in a bounded window: at most
`extract.reuse_decoded_mb` of frame buffers per worker (auto: 1 GiB, less on machines with little
memory per CPU; `budget_bytes`), the newest ones (a source that fits is
held whole; of a longer one, its last frames). Extraction takes a frame from the window when it
is there and decodes the rest as before: the encoder sees the same frames either way, so the
clips are byte-identical (tests/test_decoded_reuse.py).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import av


class DecodedFrames:
    """A window of consecutive decoded frames, indices [lo, lo + len), at most `budget` bytes."""

    def __init__(self, budget_bytes: int):
        self.budget = max(0, int(budget_bytes))
        self.frames: deque[av.VideoFrame] = deque()
        self.lo = 0  # index of frames[0]
        self.bytes = 0
        self._sizes: deque[int] = deque()
        self._frame_bytes: dict[tuple, int] = {}  # (w, h, format) -> bytes of one frame's planes

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def end(self) -> int:
        """One past the newest index held."""
        return self.lo + len(self.frames)

    def add(self, index: int, frame: av.VideoFrame) -> None:
        """Keep `frame` (decode-order `index`), dropping the oldest frames over the budget. Indices
        must come in order without gaps; anything else starts the window again."""
        if not self.budget:
            return
        if index != self.end:
            self.clear()
            self.lo = index
        key = (frame.width, frame.height, frame.format.name)
        size = self._frame_bytes.get(key)
        if size is None:
            size = self._frame_bytes[key] = sum(p.buffer_size for p in frame.planes)
        self.frames.append(frame)
        self._sizes.append(size)
        self.bytes += size
        while self.bytes > self.budget and self.frames:
            self.frames.popleft()
            self.bytes -= self._sizes.popleft()
            self.lo += 1

    def covers_from(self, index: int) -> bool:
        """Every frame from `index` to the end of the pass is held."""
        return bool(self.frames) and self.lo <= index < self.end

    def iter_from(self, index: int) -> Iterator[tuple[int, av.VideoFrame]]:
        """(index, frame) from `index` to the newest frame held; `covers_from(index)` must hold."""
        yield from enumerate(islice(self.frames, index - self.lo, None), start=index)

    def clear(self) -> None:
        self.frames.clear()
        self._sizes.clear()
        self.bytes = 0


_HEAP_KEPT = 0


def keep_freed_memory(budget_bytes: int) -> None:
    """Let this worker keep (rather than hand back to the OS) up to `budget_bytes` of freed heap, so
    the next source's held frames reuse pages already mapped instead of faulting in fresh zeroed
    ones (measured: ~0.25 CPU-s of page faults per GB held). glibc only: frame buffers (up to 32
    MiB per plane) come from the heap instead of their own mmap, and the heap is trimmed only above
    the budget. The worker's memory stays at what `extract.reuse_decoded_mb` allows anyway."""
    global _HEAP_KEPT
    if budget_bytes <= _HEAP_KEPT:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): nothing to tune
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
    trim = min(int(budget_bytes) + (64 << 20), 2**31 - 1)  # a C int: 2 GiB at most
    if mallopt(M_MMAP_THRESHOLD, 32 << 20) and mallopt(M_TRIM_THRESHOLD, trim):
        _HEAP_KEPT = budget_bytes


AUTO_MAX_MB = 1024  # the most extract.reuse_decoded_mb=-1 (auto) holds per worker


def budget_bytes(reuse_decoded_mb: int) -> int:
    """Bytes of decoded frames a worker holds for `extract.reuse_decoded_mb`: as given, or for -1
    (auto) AUTO_MAX_MB, but no more than a quarter of this machine's memory per CPU (one worker
    per CPU is the default; a cgroup memory limit counts)."""
    if reuse_decoded_mb >= 0:
        return reuse_decoded_mb << 20
    total = _memory_bytes()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(AUTO_MAX_MB << 20, total // (4 * cpus)) if total else AUTO_MAX_MB << 20


def _memory_bytes() -> int:
    """This machine's memory, or the container's cgroup limit when lower (0 if unknown)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = open(limit).read().strip()
        except OSError:
            continue
        if value.isdigit() and (not total or int(value) < total):
            total = int(value)
    return total
