"""Turn lists of samples into the two batch layouts of the contract.

A sample is a dict: ``video`` (3, T, H, W) float in [-1, 1], ``caption`` str, ``label`` int
(-1 = none), ``fps`` float (effective fps of the sampled frames), ``meta`` dict (the sample json
plus ``frame_indices``) and optionally ``latent`` (C, T', H', W').

Bucketed batch: ``video`` (B, 3, T, H, W) — every sample must have the same shape.
Packed batch: ``videos`` list of (3, T_i, H_i, W_i) and ``shapes`` (B, 3) = (T_i, H_i, W_i).
"""

from __future__ import annotations

import torch


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
    batch = {"video": torch.stack([s["video"] for s in samples])}  # (B, 3, T, H, W)
    batch.update(_common(samples))
    if all("latent" in s for s in samples):
        batch["latent"] = torch.stack([s["latent"] for s in samples])  # (B, C, T', H', W')
    return batch


def collate_packed(samples: list[dict]) -> dict:
    batch = {
        "videos": [s["video"] for s in samples],  # B x (3, T_i, H_i, W_i)
        "shapes": torch.tensor([list(s["video"].shape[1:]) for s in samples], dtype=torch.long),  # (B, 3)
    }
    batch.update(_common(samples))
    if all("latent" in s for s in samples):
        batch["latents"] = [s["latent"] for s in samples]
    return batch
