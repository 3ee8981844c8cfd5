"""Conditioning on known frames for models trained without masks: VDM reconstruction guidance.

Replacement (what `sample` does with a mask: given positions fed clean, copied to the output) needs
a model trained with VDT masks. A model trained on whole clips only sees noisy inputs; VDM (Ho et
al. 2022, section 3.1) conditions it on known content x_a by

  1. replacing the known part of z_t with a noised copy of x_a at the same noise level, and
  2. correcting the model's estimate of the clean clip with the gradient of its error on x_a:
       x0~ = x0^ - (w_r * alpha_t / 2) * grad_{z_t} || x_a - x0^_a ||^2          (VDM eq. 7)

With rectified flow alpha_t = 1 - t (x_t = (1 - t) x0 + t eps). w_r = 0 is plain replacement of
the noisy known part (VDM's "replacement" baseline); VDM uses w_r > 1.

`corrector_steps` > 0 adds predictor-corrector sampling (Song et al. 2021, used by VDM): after each
Euler step, that many Langevin steps at the new noise level with the score of the (guided) estimate,
score = -(z_t - alpha_t x0~) / sigma_t^2 (alpha_t = 1 - t, sigma_t = t), step size from the
signal-to-noise ratio `snr` of the update.
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
    corrector_steps: int = 0,
    snr: float = 0.16,
) -> torch.Tensor:
    """Euler sampling of (B, C, T, H, W) with the positions where `mask` (B, 1, T, H, W) is True known
    to be `given` (B, C, T, H, W): replacement of the noisy known part plus reconstruction guidance of
    weight `weight` (VDM eq. 7). The model is called without a mask (it was trained without one).
    The output keeps `given` exactly at known positions (`keep_given=False`: the model's own values
    there, to measure how well it reconstructs them). corrector_steps: Langevin corrector steps
    after each predictor step (0: plain Euler, draws no extra noise)."""
    if not isinstance(flow, RectifiedFlow):
        raise ValueError(
            f"reconstruction guidance is implemented for rectified flow, got {type(flow).__name__}"
        )
    device = next(model.parameters()).device
    with torch.inference_mode(False):  # normal tensors: guidance takes gradients even under inference mode
        given, mask = given.to(device).clone(), mask.to(device).clone()
        model_kwargs = {
            k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in (model_kwargs or {}).items()
        }
    x = _randn(shape, generator, device)
    known_noise = _randn(shape, generator, device)  # the noise of the known part, fixed for the run
    grid = flow.sampling_timesteps(steps, tuple(shape[1:]))
    kwargs = model_kwargs or {}

    def guided_x0(x, t):
        """Replace the known part at noise level t (1.), then the guided clean estimate (2.)."""
        x = torch.where(mask, flow.q_sample(given, t, known_noise), x)
        with torch.inference_mode(False), torch.enable_grad():  # also under Trainer.predict / validate
            x_in = x.detach().clone().requires_grad_(weight != 0)  # a normal tensor even from inference mode
            t_in = t.clone()
            x0 = x0_estimate(flow, x_in, model(x_in, flow.model_t(t_in), **kwargs), t_in)
            if weight != 0:  # reconstruction guidance, VDM eq. 7
                err = ((x0 - given) ** 2 * mask).sum()
                (grad,) = torch.autograd.grad(err, x_in)
                x0 = x0 - bcast(weight * (1 - t) / 2, x0) * grad
        return x, x0.detach()

    for i in tqdm(range(steps), disable=not progress, desc="euler+guidance"):
        t = grid[i].expand(shape[0]).to(device)
        t_next = grid[i + 1].expand(shape[0]).to(device)
        x, x0 = guided_x0(x, t)
        v = (x - x0) / bcast(t, x)  # the velocity of the corrected estimate (the sampler never hits t = 0)
        x = x + bcast(t_next - t, x) * v
        if float(t_next.min()) <= 0:
            continue
        for _ in range(corrector_steps):  # Langevin corrector at t_next
            x, x0 = guided_x0(x, t_next)
            score = -(x - bcast(1 - t_next, x) * x0) / bcast(t_next, x) ** 2
            z = _randn(shape, generator, device)
            dims = tuple(range(1, x.dim()))
            eps = 2 * (snr * z.pow(2).sum(dims).sqrt() / score.pow(2).sum(dims).sqrt().clamp_min(1e-12)) ** 2
            x = x + bcast(eps, x) * score + bcast((2 * eps).sqrt(), x) * z
    return torch.where(mask, given, x) if keep_given else x
