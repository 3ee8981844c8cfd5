"""Token accounting and NaViT-style packing of variable-shape clips.

A clip of shape (T, H, W) in pixels becomes, after the latent codec (downsample dt, dh, dw) and
the patch embedding (patch pt, ph, pw), ``ceil(T/dt/pt) * (H/dh/ph) * (W/dw/pw)`` tokens (the
batch contract in ../shared contracts). H and W are kept multiples of ``dh*ph`` and ``dw*pw``.

Packing groups clips so the total tokens of a batch stay within ``tokens_per_batch``:
``StreamPacker`` buffers a shuffle *window* of clips, runs first-fit-decreasing over it, emits
every bin that is at least ``min_fill`` full and returns the rest to the window, so bins are
topped up by later clips. At the end of the stream everything left is flushed. No clip is ever
split, and a bin never exceeds the budget (a clip larger than the budget is an error: lower
``max_tokens_per_sample``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenGrid:
    """How many tokens a (T, H, W) pixel clip costs the model."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    latent_downsample: tuple[int, int, int] = (1, 8, 8)

    @property
    def multiple(self) -> tuple[int, int]:
        """(H, W) pixel multiples that give whole patches."""
        (_, ph, pw), (_, dh, dw) = self.patch_size, self.latent_downsample
        return dh * ph, dw * pw

    def tokens(self, t: int, h: int, w: int) -> int:
        (pt, ph, pw), (dt, dh, dw) = self.patch_size, self.latent_downsample
        mh, mw = self.multiple
        if h % mh or w % mw:
            raise ValueError(
                f"clip size {h}x{w} is not a multiple of {mh}x{mw} (latent_downsample*patch_size)"
            )
        return math.ceil(t / dt / pt) * (h // dh // ph) * (w // dw // pw)

    def fit(self, t: int, h: int, w: int, *, max_tokens: int | None) -> tuple[int, int, int]:
        """Native shape rounded down to whole patches, downscaled (aspect kept) to fit `max_tokens`.

        Only ever shrinks: the result's H, W are <= the input's. Raises if even the smallest
        patch grid does not fit.
        """
        mh, mw = self.multiple
        h2, w2 = max(mh, h // mh * mh), max(mw, w // mw * mw)
        if max_tokens is None or self.tokens(t, h2, w2) <= max_tokens:
            return t, h2, w2
        scale = math.sqrt(max_tokens / self.tokens(t, h2, w2))
        while True:
            h3, w3 = max(mh, int(h2 * scale) // mh * mh), max(mw, int(w2 * scale) // mw * mw)
            if self.tokens(t, h3, w3) <= max_tokens:
                return t, h3, w3
            if h3 == mh and w3 == mw:
                raise ValueError(
                    f"a {t}-frame clip cannot fit max_tokens_per_sample={max_tokens}: raise it or lower max_frames"
                )
            scale *= 0.97


def first_fit_decreasing(sizes: list[int], capacity: int) -> list[list[int]]:
    """Bins (lists of indices into `sizes`) with sum <= capacity; FFD, ties broken by index."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        if sizes[i] > capacity:
            raise ValueError(
                f"a clip of {sizes[i]} tokens exceeds tokens_per_batch={capacity}: "
                "raise tokens_per_batch or lower max_tokens_per_sample"
            )
        for b, r in enumerate(room):
            if sizes[i] <= r:
                bins[b].append(i)
                room[b] -= sizes[i]
                break
        else:
            bins.append([i])
            room.append(capacity - sizes[i])
    return bins


class StreamPacker:
    """Group a stream of items into bins under a token budget (FFD inside a sliding window)."""

    def __init__(
        self,
        *,
        tokens_per_batch: int,
        window: int = 256,
        min_fill: float = 0.97,
        size: Callable[[object], int],
    ):
        self.capacity, self.window, self.min_fill, self.size = tokens_per_batch, window, min_fill, size

    def _pack(self, items: list, *, final: bool) -> tuple[list[list], list]:
        sizes = [self.size(x) for x in items]
        bins = first_fit_decreasing(sizes, self.capacity)
        done, rest = [], []
        for b in bins:
            fill = sum(sizes[i] for i in b) / self.capacity
            (done if final or fill >= self.min_fill else rest).append(b)
        if not final and not done and rest:  # never stall: emit the fullest bin
            rest.sort(key=lambda b: -sum(sizes[i] for i in b))
            done.append(rest.pop(0))
        # keep emitted bins in stream order of their first item (stable, deterministic)
        done.sort(key=min)
        return [[items[i] for i in sorted(b)] for b in done], [items[i] for b in rest for i in b]

    def __call__(self, items: Iterable) -> Iterator[list]:
        buf: list = []
        for x in items:
            buf.append(x)
            if len(buf) >= self.window:
                out, buf = self._pack(buf, final=False)
                yield from out
        if buf:
            out, _ = self._pack(buf, final=True)
            yield from out
