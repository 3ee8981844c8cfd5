"""Rectified flow (SD3 / Open-Sora 1.2). Holds no parameters.

Conventions: t in [0, 1], t = 1 is pure noise: x_t = (1 - t) x0 + t eps; the network predicts the
velocity v = eps - x0 and is told t * num_timesteps (so DiT's timestep embedder sees its usual range).
Training t is logit-normal, then shifted towards noise for bigger inputs (Open-Sora 1.2):
ratio r = sqrt(H*W / base) * sqrt(T) computed on the latent shape, t' = r t / (1 + (r - 1) t).
`shift_base_tokens` is base expressed in latent positions: 64*64 = a 512x512 image through an /8 VAE.

`prediction`: what the network outputs. "velocity" (SD3, Open-Sora) or "x0": the network predicts the
clean sample and the velocity is derived, v = (x_t - x0_hat) / t; the loss stays the velocity
loss, |(x0 - x0_hat) / max(t, t_min)|^2 (the weight bounded near t = 0) (JiT, Li & He 2025, "Back to Basics: Let Denoising Generative Models
Denoise"). Predicting x0 matters when a token holds more values than the network is wide, as in
pixel space with big patches (a 4x4x3 patch is 48 values for a 64-wide demo model): noise fills
every dimension and cannot pass through the bottleneck, clean data lies near a low-dimensional
manifold and can. With velocity prediction such models sample per-patch noise.
"""

from __future__ import annotations

import math

import torch

from .common import add_noise, bcast, call_model, generated_count, masked_mean, with_given


def shift_timesteps(t: torch.Tensor, ratio) -> torch.Tensor:
    """t' = r t / (1 + (r - 1) t); r may be a scalar or per-sample (B,)."""
    ratio = torch.as_tensor(ratio, dtype=t.dtype, device=t.device)
    return ratio * t / (1 + (ratio - 1) * t)


def _shape_list(shapes) -> list[tuple[int, int, int]]:
    """(B, 3|4) tensor or list of (T, H, W) / (C, T, H, W) -> list of (T, H, W)."""
    rows = shapes.tolist() if isinstance(shapes, torch.Tensor) else [tuple(s) for s in shapes]
    out = []
    for s in rows:
        if len(s) not in (3, 4):
            raise ValueError(f"a shape must be (T, H, W) or (C, T, H, W), got {s}")
        out.append(tuple(int(v) for v in s[-3:]))
    return out


class RectifiedFlow:
    def __init__(
        self,
        *,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        shift: bool = True,
        shift_base_tokens: int = 64 * 64,
        num_timesteps: int = 1000,
        prediction: str = "velocity",
        t_min: float = 0.05,
    ):
        if prediction not in ("velocity", "x0"):
            raise ValueError(f"flow prediction={prediction!r}: choose 'velocity' or 'x0'")
        self.prediction, self.t_min = prediction, t_min  # t_min: floor of t when dividing by it (x0)
        self.logit_mean, self.logit_std = logit_mean, logit_std
        self.shift, self.shift_base_tokens, self.num_timesteps = shift, shift_base_tokens, num_timesteps
        self.learn_sigma = False

    def shift_ratio(self, shape) -> float:
        """r = sqrt(H*W / base) * sqrt(T) for a latent (T, H, W) or (C, T, H, W); 1 without shift."""
        t, h, w = _shape_list([shape])[0]
        return math.sqrt(h * w / self.shift_base_tokens) * math.sqrt(t) if self.shift else 1.0

    def sample_t(self, batch_size, device, generator=None) -> torch.Tensor:
        """Logit-normal t (B,) in (0, 1). Pass the per-sample latent shapes ((B, 3) tensor or a list of
        (T, H, W) / (C, T, H, W)) to get the resolution/length shift; an int gives unshifted t."""
        n = batch_size if isinstance(batch_size, int) else len(batch_size)
        u = (
            torch.randn(n, generator=generator, device="cpu", dtype=torch.float64) * self.logit_std
            + self.logit_mean
        )
        t = torch.sigmoid(u)
        if self.shift and not isinstance(batch_size, int):
            t = shift_timesteps(t, torch.tensor([self.shift_ratio(s) for s in _shape_list(batch_size)]))
        return t.float().to(device)

    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.num_timesteps

    def sampling_timesteps(self, steps: int, shape) -> torch.Tensor:
        """(steps + 1,) decreasing from 1 to 0, shifted for a latent shape like training t."""
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        return shift_timesteps(t, self.shift_ratio(shape)).float()

    def q_sample(self, x0, t, noise):
        t = bcast(t, x0)
        return (1 - t) * x0 + t * noise

    def x0_from_velocity(self, x_t, t, v):
        return x_t - bcast(t, x_t) * v

    def velocity(self, x_t, out, t):
        """The velocity implied by the network output `out` at x_t (B, ...) and t (B,) (x0: divided
        by t itself, so the last Euler step lands exactly on the predicted x0; the sampler never
        evaluates t = 0)."""
        if self.prediction == "velocity":
            return out
        return (x_t - out) / bcast(t, x_t).clamp_min(1e-12)

    def velocity_error(self, x_t, out, t, x0, noise):
        """Per-element error of the implied velocity against the target eps - x0. For x0-prediction
        it is (x0 - out) / t, with t floored at `t_min`: a bounded weight near t = 0, while the
        minimiser stays out = E[x0 | x_t] at every t (flooring t inside the velocity would make the
        network learn x_t - t_min * v below t_min, which sampling would then misread)."""
        if self.prediction == "velocity":
            return noise - x0 - out
        return (x0 - out) / bcast(t, x0).clamp_min(self.t_min)

    def training_losses(self, model, x0, t, *, mask=None, noise=None, model_kwargs=None) -> dict:
        """Same contract as GaussianDiffusion.training_losses; t (B,) float in [0, 1].
        Returns {"loss": (B,), "mse": (B,), "weight": (B,), "x_t": ..., "pred": ...}."""
        packed = isinstance(x0, (list, tuple))
        noise, x_t = add_noise(self.q_sample, x0, t, noise)
        out = call_model(model, with_given(x_t, x0, mask), self.model_t(t), mask, model_kwargs)
        if packed:
            masks = [None if m is None else m[None] for m in (mask if mask is not None else [None] * len(x0))]
            err = [
                self.velocity_error(xt[None], o[None], t[i : i + 1], x[None], n[None])
                for i, (xt, o, x, n) in enumerate(zip(x_t, out, x0, noise))
            ]
            mse = torch.cat([masked_mean(e**2, m) for e, m in zip(err, masks)])
            weight = torch.cat([generated_count(x[None], m) for x, m in zip(x0, masks)])
        else:
            mse = masked_mean(self.velocity_error(x_t, out, t, x0, noise) ** 2, mask)  # (B,)
            weight = generated_count(x0, mask)
        return {"loss": mse, "mse": mse, "weight": weight, "x_t": x_t, "pred": out}
