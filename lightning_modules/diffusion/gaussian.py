"""Gaussian diffusion (DDPM / IDDPM) as used by DiT, Latte and VDT. Holds no parameters: the
network is passed to `training_losses` and to the samplers.

Conventions: integer timesteps t in [0, num_timesteps); x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
The network predicts eps, v (= sqrt(abar) eps - sqrt(1 - abar) x0) or x0; with `learn_sigma` it also
outputs per-element values in [-1, 1] interpolating the log variance between the posterior variance
and beta_t (IDDPM), trained with the variational bound term while the mean is held fixed.
"""

from __future__ import annotations

import math

import torch

from .common import (
    add_noise,
    bcast,
    call_model,
    discretized_gaussian_log_likelihood,
    generated_count,
    masked_mean,
    normal_kl,
    with_given,
)

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v", "x0")


def make_betas(schedule: str, num_timesteps: int) -> torch.Tensor:
    """(num_timesteps,) float64 betas. linear: DDPM's 1e-4..0.02 scaled to the step count; cosine:
    Nichol & Dhariwal with s = 0.008 and betas clipped at 0.999."""
    if schedule == "linear":
        scale = 1000 / num_timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    if schedule == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alpha_bar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"schedule={schedule!r} is unknown; choose one of {SCHEDULES}")


class GaussianDiffusion:
    def __init__(
        self,
        *,
        schedule: str = "linear",
        num_timesteps: int = 1000,
        prediction: str = "eps",
        learn_sigma: bool = False,
        fixed_variance: str = "small",  # without learn_sigma: "small" = posterior variance, "large" = beta_t
        clip_x0: float | None = None,  # sampling clamps predicted x0 to [-clip_x0, clip_x0] (pixels: 1.0)
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r} is unknown; choose one of {PREDICTIONS}")
        if fixed_variance not in ("small", "large"):
            raise ValueError(f"fixed_variance={fixed_variance!r} must be 'small' or 'large'")
        self.schedule, self.prediction, self.learn_sigma = schedule, prediction, learn_sigma
        self.fixed_variance, self.clip_x0 = fixed_variance, clip_x0
        alphas_cumprod = torch.cumprod(1 - make_betas(schedule, num_timesteps), dim=0)
        self._set_alphas_cumprod(alphas_cumprod, torch.arange(num_timesteps))

    def _set_alphas_cumprod(self, alphas_cumprod: torch.Tensor, timestep_map: torch.Tensor) -> None:
        """All schedule arrays (float64, CPU) from abar; timestep_map[i] is what the network is told."""
        ab = alphas_cumprod.double()
        self.num_timesteps = len(ab)
        self.timestep_map = timestep_map.long()
        self.alphas_cumprod = ab
        self.alphas_cumprod_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        self.betas = 1 - ab / self.alphas_cumprod_prev
        self.posterior_variance = self.betas * (1 - self.alphas_cumprod_prev) / (1 - ab)
        # the posterior variance is 0 at t = 0: clip the log with the t = 1 value (IDDPM)
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([pv[1:2], pv[1:]]) if len(pv) > 1 else pv.clamp_min(1e-20)
        )
        self.posterior_mean_coef1 = self.betas * self.alphas_cumprod_prev.sqrt() / (1 - ab)
        self.posterior_mean_coef2 = (1 - self.alphas_cumprod_prev) * (1 - self.betas).sqrt() / (1 - ab)

    def _at(self, arr: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return bcast(arr[t.long().cpu()], x)  # (B, 1, 1, 1, 1)

    # -- timesteps ----------------------------------------------------------------------------

    def sample_t(self, batch_size, device, generator=None) -> torch.Tensor:
        """Uniform integer timesteps (B,). batch_size: int, or the list/tensor of per-sample shapes."""
        n = batch_size if isinstance(batch_size, int) else len(batch_size)
        return torch.randint(0, self.num_timesteps, (n,), generator=generator, device="cpu").to(device)

    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep value the network sees (the original index after respacing)."""
        return self.timestep_map.to(t.device)[t.long()]

    def respace(self, steps: int) -> GaussianDiffusion:
        """A copy that runs on `steps` evenly spaced timesteps (IDDPM respacing: the betas are
        recomputed so the marginals at the kept steps are unchanged)."""
        if steps >= self.num_timesteps:
            return self
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        keep = torch.linspace(0, self.num_timesteps - 1, steps, dtype=torch.float64).round().long().unique()
        new = object.__new__(GaussianDiffusion)
        new.__dict__.update(self.__dict__)
        new._set_alphas_cumprod(self.alphas_cumprod[keep], self.timestep_map[keep])
        return new

    # -- forward process ----------------------------------------------------------------------

    def q_sample(self, x0, t, noise):
        return (
            self._at(self.alphas_cumprod.sqrt(), t, x0) * x0
            + self._at((1 - self.alphas_cumprod).sqrt(), t, x0) * noise
        )

    def q_posterior_mean_variance(self, x0, x_t, t):
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x0)."""
        mean = (
            self._at(self.posterior_mean_coef1, t, x_t) * x0
            + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return (
            mean,
            self._at(self.posterior_variance, t, x_t),
            self._at(self.posterior_log_variance_clipped, t, x_t),
        )

    # -- parameterisations --------------------------------------------------------------------

    def x0_from_eps(self, x_t, t, eps):
        return (
            self._at((1 / self.alphas_cumprod).sqrt(), t, x_t) * x_t
            - self._at((1 / self.alphas_cumprod - 1).sqrt(), t, x_t) * eps
        )

    def eps_from_x0(self, x_t, t, x0):
        return (self._at((1 / self.alphas_cumprod).sqrt(), t, x_t) * x_t - x0) / self._at(
            (1 / self.alphas_cumprod - 1).sqrt(), t, x_t
        )

    def v_from_x0_eps(self, x0, eps, t):
        return (
            self._at(self.alphas_cumprod.sqrt(), t, x0) * eps
            - self._at((1 - self.alphas_cumprod).sqrt(), t, x0) * x0
        )

    def x0_from_v(self, x_t, t, v):
        return (
            self._at(self.alphas_cumprod.sqrt(), t, x_t) * x_t
            - self._at((1 - self.alphas_cumprod).sqrt(), t, x_t) * v
        )

    def target(self, x0, eps, t):
        """What the network is trained to output."""
        if self.prediction == "eps":
            return eps
        return x0 if self.prediction == "x0" else self.v_from_x0_eps(x0, eps, t)

    def split_output(self, out):
        """(B, C or 2C, ...) -> (mean part (B, C, ...), variance values (B, C, ...) or None)."""
        if not self.learn_sigma:
            return out, None
        if out.shape[1] % 2:
            raise ValueError(
                f"learn_sigma=True needs 2*C output channels, got {out.shape[1]}; set the network's learn_sigma"
            )
        return out.chunk(2, dim=1)

    def p_mean_variance(self, out, x_t, t, *, clip: bool = False):
        """From the network output: mean, variance, log variance of p(x_{t-1} | x_t), and x0 / eps.
        clip=True (samplers) clamps x0 to +-clip_x0 when set, and eps follows the clamped x0."""
        pred, var_values = self.split_output(out)
        if var_values is not None:
            min_log = self._at(self.posterior_log_variance_clipped, t, x_t)
            max_log = self._at(torch.log(self.betas), t, x_t)
            frac = (var_values + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        elif self.fixed_variance == "small":
            variance = self._at(self.posterior_variance, t, x_t).expand_as(x_t)
            log_variance = self._at(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        else:
            large = torch.cat([self.posterior_variance[1:2], self.betas[1:]])
            variance, log_variance = (
                self._at(large, t, x_t).expand_as(x_t),
                self._at(large.log(), t, x_t).expand_as(x_t),
            )
        if self.prediction == "eps":
            x0 = self.x0_from_eps(x_t, t, pred)
        elif self.prediction == "v":
            x0 = self.x0_from_v(x_t, t, pred)
        else:
            x0 = pred
        clipped = clip and self.clip_x0 is not None
        if clipped:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        eps = pred if self.prediction == "eps" and not clipped else self.eps_from_x0(x_t, t, x0)
        mean, _, _ = self.q_posterior_mean_variance(x0, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "x0": x0, "eps": eps}

    def vb_terms(self, out, x0, x_t, t, mask=None):
        """Variational bound term per sample in bits/dim (B,): KL(q || p) for t > 0, the decoder NLL
        at t = 0; only generated positions count."""
        p = self.p_mean_variance(out, x_t, t)
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        kl = masked_mean(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"]), mask) / math.log(
            2.0
        )
        nll = -discretized_gaussian_log_likelihood(x0, means=p["mean"], log_scales=0.5 * p["log_variance"])
        nll = masked_mean(nll, mask) / math.log(2.0)
        return torch.where(t.to(kl.device) == 0, nll, kl)  # (B,)

    # -- training -----------------------------------------------------------------------------

    def _loss_terms(self, out, x0, x_t, noise, t, mask):
        pred, var_values = self.split_output(out)
        mse = masked_mean((self.target(x0, noise, t) - pred) ** 2, mask)  # (B,)
        terms = {"mse": mse, "weight": generated_count(x0, mask)}
        if var_values is not None:  # VLB trains the variance only: the mean is held fixed
            frozen = torch.cat([pred.detach(), var_values], dim=1)
            terms["vb"] = self.vb_terms(frozen, x0, x_t, t, mask)
            terms["loss"] = mse + terms["vb"]
        else:
            terms["loss"] = mse
        return terms

    def training_losses(self, model, x0, t, *, mask=None, noise=None, model_kwargs=None) -> dict:
        """x0 (B, C, T, H, W) or a list of (C, T_i, H_i, W_i); t (B,) long; mask like x0 with 1 channel,
        True = given (the network sees x0 there and those positions carry no loss).
        Returns {"loss": (B,), "mse": (B,), ["vb": (B,)], "weight": (B,), "x_t": ..., "pred": ...}:
        per-sample means over generated positions, and how many generated elements each has (for
        `common.reduce_loss`)."""
        packed = isinstance(x0, (list, tuple))
        noise, x_t = add_noise(self.q_sample, x0, t, noise)
        out = call_model(model, with_given(x_t, x0, mask), self.model_t(t), mask, model_kwargs)
        if not packed:
            terms = self._loss_terms(out, x0, x_t, noise, t, mask)
        else:
            per = [
                self._loss_terms(
                    o[None],
                    x[None],
                    xt[None],
                    n[None],
                    t[i : i + 1],
                    None if mask is None or mask[i] is None else mask[i][None],
                )
                for i, (o, x, xt, n) in enumerate(zip(out, x0, x_t, noise))
            ]
            terms = {k: torch.cat([p[k] for p in per]) for k in per[0]}
        terms["x_t"], terms["pred"] = x_t, out
        return terms
