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

import torch
from torch.utils.data import default_collate, get_worker_info


def _empty(shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 tensor, allocated in shared memory inside a loader worker (as default_collate
    does) so handing it to the main process costs no copy."""
    if get_worker_info() is None:
        return torch.empty(shape)
    storage = torch.empty(0)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0).new(storage).view(shape)


def _to_unit(video: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write `video` into `out` as float in [-1, 1] (uint8 is scaled, float copied)."""
    out.copy_(video)  # gathers a strided view and casts in one pass
    return out.mul_(1 / 127.5).sub_(1.0) if video.dtype == torch.uint8 else out


def _common(samples: list[dict]) -> dict:
    return {
        "caption": [s["caption"] for s in samples],
        "label": torch.tensor([int(s["label"]) for s in samples], dtype=torch.long),  # (B,)
        "fps": torch.tensor([float(s["fps"]) for s in samples], dtype=torch.float32),  # (B,)
        "meta": [s["meta"] for s in samples],
    }


def collate_bucketed(samples: list[dict]) -> dict:
    shapes = {tuple(s["video"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(
            f"a bucketed batch needs one shape, got {sorted(shapes)}: use packed batching instead"
        )
    video = _empty((len(samples), *samples[0]["video"].shape))  # (B, 3, T, H, W)
    for i, s in enumerate(samples):
        _to_unit(s["video"], video[i])
    batch = {"video": video}
    batch.update(_common(samples))
    if all("latent" in s for s in samples):
        batch["latent"] = default_collate([s["latent"] for s in samples])  # (B, C, T', H', W')
    return batch


def collate_packed(samples: list[dict]) -> dict:
    batch = {
        "videos": [
            _to_unit(s["video"], _empty(tuple(s["video"].shape))) for s in samples
        ],  # B x (3, T_i, H_i, W_i)
        "shapes": torch.tensor([list(s["video"].shape[1:]) for s in samples], dtype=torch.long),  # (B, 3)
    }
    batch.update(_common(samples))
    if all("latent" in s for s in samples):
        batch["latents"] = [s["latent"] for s in samples]
    return batch
