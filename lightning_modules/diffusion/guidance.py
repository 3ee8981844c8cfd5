"""Conditioning on known frames for models trained without masks: VDM reconstruction guidance.

Replacement (what `sample` does with a mask: given positions fed clean, copied to the output) needs
a model trained with VDT masks. A model trained on whole clips only sees noisy inputs; VDM (Ho et
al. 2022, section 3.1) conditions it on known content x_a by

  1. replacing the known part of z_t with a noised copy of x_a at the same noise level, and
  2. correcting the model's estimate of the clean clip with the gradient of its error on x_a:
       x0~ = x0^ - (w_r * alpha_t / 2) * grad_{z_t} || x_a - x0^_a ||^2          (VDM eq. 7)

With rectified flow alpha_t = 1 - t (x_t = (1 - t) x0 + t eps). w_r = 0 is plain replacement of
the noisy known part (VDM's "replacement" baseline); VDM uses w_r > 1.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .common import bcast
from .flow import RectifiedFlow
from .samplers import _randn


def x0_estimate(flow: RectifiedFlow, x_t: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The network's clean-clip estimate from its output at (x_t, t)."""
    return out if flow.prediction == "x0" else x_t - bcast(t, x_t) * out


def reconstruction_guided_sample(
    model,
    flow: RectifiedFlow,
    shape: tuple[int, ...],
    *,
    given: torch.Tensor,
    mask: torch.Tensor,
    weight: float = 2.0,
    steps: int = 50,
    model_kwargs: dict | None = None,
    generator=None,
    progress: bool = False,
    keep_given: bool = True,
) -> torch.Tensor:
    """Euler sampling of (B, C, T, H, W) with the positions where `mask` (B, 1, T, H, W) is True known
    to be `given` (B, C, T, H, W): replacement of the noisy known part plus reconstruction guidance of
    weight `weight` (VDM eq. 7). The model is called without a mask (it was trained without one).
    The output keeps `given` exactly at known positions (`keep_given=False`: the model's own values
    there, to measure how well it reconstructs them)."""
    if not isinstance(flow, RectifiedFlow):
        raise ValueError(
            f"reconstruction guidance is implemented for rectified flow, got {type(flow).__name__}"
        )
    device = next(model.parameters()).device
    given, mask = given.to(device), mask.to(device)
    x = _randn(shape, generator, device)
    known_noise = _randn(shape, generator, device)  # the noise of the known part, fixed for the run
    grid = flow.sampling_timesteps(steps, tuple(shape[1:]))
    kwargs = model_kwargs or {}
    for i in tqdm(range(steps), disable=not progress, desc="euler+guidance"):
        t = grid[i].expand(shape[0]).to(device)
        t_next = grid[i + 1].expand(shape[0]).to(device)
        noisy_known = flow.q_sample(given, t, known_noise)
        x = torch.where(mask, noisy_known, x)  # 1. replacement at the current noise level
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(weight != 0)
            x0 = x0_estimate(flow, x_in, model(x_in, flow.model_t(t), **kwargs), t)
            if weight != 0:  # 2. reconstruction guidance
                err = ((x0 - given) ** 2 * mask).sum()
                (grad,) = torch.autograd.grad(err, x_in)
                x0 = x0 - bcast(weight * (1 - t) / 2, x0) * grad
        x0 = x0.detach()
        v = (x - x0) / bcast(t, x)  # the velocity of the corrected estimate (the sampler never hits t = 0)
        x = x + bcast(t_next - t, x) * v
    return torch.where(mask, given, x) if keep_given else x
