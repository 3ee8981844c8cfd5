"""Turn lists of samples into the two batch layouts of the contract.

A sample is a dict: ``video`` (3, T, H, W) float in [-1, 1] or uint8 in [0, 255] (converted
here, straight into the output buffer), ``caption`` str, ``label`` int
(-1 = none), ``fps`` float (effective fps of the sampled frames), ``meta`` dict (the sample json
plus ``frame_indices``) and optionally ``latent`` (C, T', H', W').

Bucketed batch: ``video`` (B, 3, T, H, W) — every sample must have the same shape.
Packed batch: ``videos`` list of (3, T_i, H_i, W_i) and ``shapes`` (B, 3) = (T_i, H_i, W_i).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from datamodules.buffers import release


def _empty(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor, allocated in shared memory inside a loader worker (as
    default_collate does) so handing it to the main process costs no copy."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    proto = torch.empty(0, dtype=dtype)
    return proto.new(proto._typed_storage()._new_shared(math.prod(shape))).view(shape)


def _empty_video(
    shape: tuple[int, ...], dtype: torch.dtype, flat: torch.Tensor | None = None
) -> torch.Tensor:
    """An uninitialised (..., 3, T, H, W) tensor; uint8 ones are laid out channels-last in memory
    (..., T, H, W, 3), the decoder's own layout, so a crop is gathered by plain row copies
    (~20x cheaper than transposing every pixel in the worker); `to_unit` transposes once, when
    it makes the float tensor (on the accelerator in training). `flat`: uint8 memory to use."""
    if dtype != torch.uint8:
        return _empty(shape, dtype)
    *lead, c, t, h, w = shape
    n = len(lead)
    cl = (*lead, t, h, w, c)
    x = flat[: math.prod(cl)].view(cl) if flat is not None else _empty(cl, dtype)
    return x.permute(*range(n), n + 3, n, n + 1, n + 2)


def _take(alloc, nbytes: int) -> tuple[torch.Tensor | None, object]:
    return alloc(nbytes) if alloc is not None else (None, None)


def _scale_(x: torch.Tensor) -> torch.Tensor:
    """In place: float values v in [0, 255] -> v / 127.5 - 1."""
    if x.device.type == "cpu" and x.is_contiguous():  # numpy: ~1.8x faster single-threaded here
        a = x.numpy()
        np.multiply(a, np.float32(1 / 127.5), out=a)
        np.subtract(a, np.float32(1.0), out=a)
        return x
    return x.mul_(1 / 127.5).sub_(1.0)


def _to_unit(video: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write `video` into `out`: uint8 -> float in [-1, 1] when `out` is float, else a plain copy."""
    out.copy_(video)  # gathers a strided view (and casts) in one pass
    return _scale_(out) if video.dtype == torch.uint8 and out.is_floating_point() else out


def _unit(v: torch.Tensor) -> torch.Tensor:
    """uint8 -> a new contiguous float tensor in [-1, 1] (one cast pass + one in-place pass)."""
    if v.device.type == "cpu" and v.is_contiguous():
        out = np.empty(tuple(v.shape), np.float32)
        np.multiply(v.numpy(), np.float32(1 / 127.5), out=out, casting="unsafe")
        np.subtract(out, np.float32(1.0), out=out)
        return torch.from_numpy(out)
    out = torch.empty(v.shape, dtype=torch.float32, device=v.device)  # contiguous, whatever v's layout
    return _scale_(out.copy_(v))


def to_unit(batch: dict) -> dict:
    """A batch whose `video` / `videos` travel as uint8 (4x less to move between processes and to
    the GPU) made float in [-1, 1], on whatever device they are; float batches pass unchanged.
    The worker's shared block, if any, is given back (buffers.py)."""
    if "video" in batch and batch["video"].dtype == torch.uint8:
        batch["video"] = _unit(batch["video"])  # (B, 3, T, H, W)
    if "videos" in batch:
        batch["videos"] = [_unit(v) if v.dtype == torch.uint8 else v for v in batch["videos"]]
    release(batch)
    return batch


def _common(samples: list[dict]) -> dict:
    return {
        "caption": [s["caption"] for s in samples],
        "label": torch.tensor([int(s["label"]) for s in samples], dtype=torch.long),  # (B,)
        "fps": torch.tensor([float(s["fps"]) for s in samples], dtype=torch.float32),  # (B,)
        "meta": [s["meta"] for s in samples],
    }


def collate_bucketed(samples: list[dict], *, scale: bool = True, alloc=None) -> dict:
    """`scale=False` keeps uint8 videos uint8 (see `to_unit`); `alloc(nbytes) -> (flat uint8, handle)`
    provides their memory (a worker's `buffers.BufferRing.take`)."""
    shapes = {tuple(s["video"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(
            f"a bucketed batch needs one shape, got {sorted(shapes)}: use packed batching instead"
        )
    first = samples[0]["video"]
    shape, dtype = (len(samples), *first.shape), torch.float32 if scale else first.dtype
    flat, handle = _take(alloc if dtype == torch.uint8 else None, math.prod(shape))
    video = _empty_video(shape, dtype, flat)  # (B, 3, T, H, W)
    for i, s in enumerate(samples):
        _to_unit(s["video"], video[i])
    batch = {"video": video}
    batch.update(_common(samples))
    if handle is not None:
        batch["_buffer"] = handle
    if all("latent" in s for s in samples):
        batch["latent"] = default_collate([s["latent"] for s in samples])  # (B, C, T', H', W')
    return batch


def collate_packed(samples: list[dict], *, scale: bool = True, alloc=None) -> dict:
    """`scale=False` keeps uint8 videos uint8 (see `to_unit`); `alloc` as in `collate_bucketed`
    (one block holds the whole pack)."""
    uint8 = not scale and samples[0]["video"].dtype == torch.uint8
    flat, handle = _take(alloc if uint8 else None, sum(s["video"].numel() for s in samples))
    videos, at = [], 0
    for s in samples:
        v = s["video"]  # (3, T_i, H_i, W_i)
        part = flat[at:] if flat is not None else None
        at += v.numel()
        videos.append(_to_unit(v, _empty_video(tuple(v.shape), torch.float32 if scale else v.dtype, part)))
    batch = {
        "videos": videos,  # B x (3, T_i, H_i, W_i)
        "shapes": torch.tensor([list(s["video"].shape[1:]) for s in samples], dtype=torch.long),  # (B, 3)
    }
    batch.update(_common(samples))
    if handle is not None:
        batch["_buffer"] = handle
    if all("latent" in s for s in samples):
        batch["latents"] = [s["latent"] for s in samples]
    return batch
