"""Helpers shared by the objectives and samplers (no parameters, no state)."""

from __future__ import annotations

import math

import torch


def bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample values (B,) -> (B, 1, ..., 1) in x's dtype/device, to broadcast against x (B, ...)."""
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over all but the batch dim, counting only generated positions (mask False).
    x (B, C, T, H, W); mask (B, 1, T, H, W) bool, True = given -> (B,). A sample with nothing to
    generate gets 0."""
    if mask is None:
        return x.flatten(1).mean(dim=1)
    weight = (~mask).to(x.dtype).expand_as(x)  # (B, C, T, H, W)
    return (x * weight).flatten(1).sum(dim=1) / weight.flatten(1).sum(dim=1).clamp_min(1.0)


def generated_count(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Number of generated (loss-carrying) elements per sample: x (B, C, T, H, W), mask as in
    `masked_mean` -> (B,) float."""
    per_sample = x[0].numel()
    if mask is None:
        return torch.full((x.shape[0],), float(per_sample), device=x.device)
    return (~mask).flatten(1).sum(dim=1).to(torch.float32) * x.shape[1]


LOSS_WEIGHTINGS = ("token", "sample")


def reduce_loss(loss: torch.Tensor, weight: torch.Tensor, weighting: str = "token") -> torch.Tensor:
    """Batch loss from per-sample means `loss` (B,) and their generated-element counts `weight` (B,).
    "token": every generated element weighs the same, whatever clip it is in (what a padded batch
    does; a 1-frame image counts 1/32 of a 32-frame clip, in packed and bucketed batches alike).
    "sample": every clip weighs the same, however many elements it generates."""
    if weighting == "sample":
        return loss.mean()
    if weighting != "token":
        raise ValueError(f"loss weighting {weighting!r} is unknown; choose one of {LOSS_WEIGHTINGS}")
    weight = weight.to(loss.dtype)
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    """Log-likelihood of data x in [-1, 1] discretised to 256 bins under N(means, exp(log_scales)^2),
    elementwise (IDDPM's decoder term for t = 0)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )


def call_model(model, x, t, mask, model_kwargs):
    """Call the network on a batch tensor (B, C, T, H, W) or on a packed list of (C, T_i, H_i, W_i)."""
    kwargs = model_kwargs or {}
    if isinstance(x, (list, tuple)):
        return model.forward_packed(list(x), t, masks=mask, **kwargs)
    return model(x, t, mask=mask, **kwargs)


def add_noise(q_sample, x0, t, noise=None):
    """(noise, x_t) for x0 (B, C, T, H, W) or a packed list of (C, T_i, H_i, W_i), drawing the noise
    when not given; `q_sample(x0 (B, ...), t (B,), noise)` is the objective's forward process."""
    packed = isinstance(x0, (list, tuple))
    if noise is None:
        noise = [torch.randn_like(x) for x in x0] if packed else torch.randn_like(x0)
    if not packed:
        return noise, q_sample(x0, t, noise)
    return noise, [q_sample(x[None], t[i : i + 1], n[None])[0] for i, (x, n) in enumerate(zip(x0, noise))]


def with_given(x, given, mask):
    """x where generated, given where mask is True (tensor or lists)."""
    if mask is None:
        return x
    if isinstance(x, (list, tuple)):
        return [xi if m is None else torch.where(m, g.to(xi.dtype), xi) for xi, g, m in zip(x, given, mask)]
    return torch.where(mask, given.to(x.dtype), x)
