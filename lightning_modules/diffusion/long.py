"""Long videos from a model trained on short windows: temporal interpolation between keyframes
(VDM's frameskip scheme, Ho et al. 2022 section 3.1; FDM / NUWA-XL fill in between the same way).

Keyframes are generated `stride` frames apart (as an ordinary video, chunk by chunk); then each gap
is filled by one window of the training length holding the two keyframes at positions 0 and
`stride`, conditioned on them (replacement for mask-trained models, reconstruction guidance
otherwise: whatever `generate_window` does with `given` / `mask`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def keyframe_count(total_frames: int, stride: int) -> int:
    """Keyframes `stride` apart that span `total_frames` frames (the last one may lie past the end)."""
    return -(-(total_frames - 1) // stride) + 1


def fill_between(
    generate_window: Callable[..., torch.Tensor],
    keys: torch.Tensor,
    *,
    stride: int,
    num_frames: int,
    seed: int,
) -> torch.Tensor:
    """(n, 3, (K - 1) * stride + 1, H, W) from keyframes (n, 3, K, H, W): keyframe j lands at frame
    j * stride and the stride - 1 frames between two keyframes come from
    `generate_window(n, num_frames=..., seed=..., given=..., mask=...)` (n, 3, num_frames, H, W)."""
    if not 1 < stride < num_frames:
        raise ValueError(f"frameskip={stride} must lie in [2, num_frames - 1 = {num_frames - 1}]")
    n, c, k, h, w = keys.shape
    known = torch.zeros(n, 1, num_frames, h, w, dtype=torch.bool)
    known[:, :, 0] = known[:, :, stride] = True
    parts = [keys[:, :, :1]]
    for j in range(k - 1):
        cond = torch.zeros(n, c, num_frames, h, w)
        cond[:, :, 0], cond[:, :, stride] = keys[:, :, j], keys[:, :, j + 1]
        window = generate_window(
            n, num_frames=num_frames, seed=seed + 104729 * (j + 1), given=cond, mask=known
        )
        parts += [window[:, :, 1:stride], keys[:, :, j + 1 : j + 2]]
    return torch.cat(parts, dim=2)
