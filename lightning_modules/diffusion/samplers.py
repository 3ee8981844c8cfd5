"""Samplers: DDPM and DDIM for GaussianDiffusion, Euler for RectifiedFlow; classifier-free guidance;
any space-time mask (given positions are fed clean to the network and copied exactly to the output).

`shape` is (B, C, T, H, W) for one batch tensor, or a list of (C, T_i, H_i, W_i) for a packed batch
(the network's `forward_packed` is then used and the result is a list).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .common import bcast, call_model, with_given
from .flow import RectifiedFlow
from .gaussian import GaussianDiffusion

SAMPLERS = {"ddpm": GaussianDiffusion, "ddim": GaussianDiffusion, "euler": RectifiedFlow}


def _is_packed(shape) -> bool:
    return (
        isinstance(shape, (list, tuple))
        and len(shape) > 0
        and isinstance(shape[0], (list, tuple, torch.Size))
    )


def _randn(shape, generator, device, dtype=torch.float32):
    """Standard normal of `shape` (B, ...), drawn on CPU then moved: the same seed gives the same
    samples on any device. `generator` may be one generator for the whole batch, or a list of B
    generators, one per sample, so that sample i's noise does not depend on the batch it is in."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}: pass one per sample")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in generator]).to(
            device
        )
    return torch.randn(tuple(shape), generator=generator, dtype=dtype).to(device)


def _clip_generators(generator, n: int) -> list:
    """Per-clip generators for a packed batch of n clips (the same one n times when shared)."""
    return list(generator) if isinstance(generator, (list, tuple)) else [generator] * n


def _map(fn, *xs):
    """Apply fn to tensors, or element-wise to lists of tensors."""
    if isinstance(xs[0], list):
        return [fn(*parts) for parts in zip(*xs)]
    return fn(*xs)


def _twice(x):
    """A batch (B, ...) or packed list, repeated: the conditional then the unconditional copy."""
    return list(x) + list(x) if isinstance(x, (list, tuple)) else torch.cat([x, x])


def _stack_kwargs(cond: dict, uncond: dict) -> dict:
    """Conditional and unconditional model kwargs as one batch of 2B (tensors concatenated on dim 0)."""
    if set(cond) != set(uncond):
        raise ValueError(f"CFG needs the same condition keys: {sorted(cond)} vs {sorted(uncond)}")
    out = {}
    for k, c in cond.items():
        u = uncond[k]
        if c is None or u is None:
            if c is not u:
                raise ValueError(f"CFG condition {k!r} is None in one branch only")
            out[k] = None
        elif isinstance(c, torch.Tensor):
            out[k] = torch.cat([c, u])
        else:
            out[k] = list(c) + list(u)
    return out


@torch.no_grad()
def sample(
    model,
    diffusion,
    shape,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    given=None,
    mask=None,
    cfg_scale: float = 1.0,
    model_kwargs: dict | None = None,
    uncond_kwargs: dict | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    progress: bool = False,
):
    """Draw x0 samples. `generator`: one for the batch, or one per sample (then each sample's draws
    are independent of the batch it is in). given/mask: tensors (B, C, T, H, W) / (B, 1, T, H, W) bool (True = given), or
    lists matching a packed `shape`. cfg_scale != 1 needs `uncond_kwargs` (e.g. y = null class)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is unknown; choose one of {tuple(SAMPLERS)}")
    if not isinstance(diffusion, SAMPLERS[sampler]):
        raise ValueError(
            f"sampler={sampler!r} needs a {SAMPLERS[sampler].__name__}, got {type(diffusion).__name__}"
        )
    if cfg_scale != 1.0 and uncond_kwargs is None:
        raise ValueError("cfg_scale != 1 needs uncond_kwargs (the null condition, e.g. {'y': null labels})")
    if (given is None) != (mask is None):
        raise ValueError("pass both `given` and `mask` (True = given position), or neither")
    packed = _is_packed(shape)
    device = next(model.parameters()).device
    if packed:
        x = [_randn((1, *s), g, device)[0] for s, g in zip(shape, _clip_generators(generator, len(shape)))]
    else:
        x = _randn(shape, generator, device)
    if packed and mask is not None:
        given = [None if g is None else g.to(device) for g in given]
        mask = [None if m is None else m.to(device) for m in mask]  # None: nothing given in that clip
    elif mask is not None:
        given, mask = given.to(device), mask.to(device)

    def denoise(x, t_model):
        """Network output (with guidance) for state x; given positions are fed clean. With CFG the
        conditional and unconditional passes run as one batch of 2B (one forward per step; peak
        activation memory is that of 2B samples: halve the sampling batch size if it no longer fits)."""
        x_in = with_given(x, given, mask)
        if cfg_scale == 1.0:
            return call_model(model, x_in, t_model, mask, model_kwargs)
        both = call_model(
            model,
            _twice(x_in),
            torch.cat([t_model, t_model]),
            None if mask is None else _twice(mask),
            _stack_kwargs(model_kwargs or {}, uncond_kwargs),
        )
        b = len(x_in) if packed else x_in.shape[0]
        out, un = (both[:b], both[b:])

        def guide(o, u):  # guide the prediction channels; a learned variance stays conditional
            c = o.shape[0 if packed else 1] // (2 if diffusion.learn_sigma else 1)
            oc, uc = (o[:c], u[:c]) if packed else (o[:, :c], u[:, :c])
            g = uc + cfg_scale * (oc - uc)
            rest = o[c:] if packed else o[:, c:]
            return torch.cat([g, rest], dim=0 if packed else 1)

        return _map(guide, out, un)  # packed: both[:b] / both[b:] are already lists

    n = len(shape) if packed else shape[0]
    if sampler == "euler":
        shapes = list(shape) if packed else [tuple(shape[1:])] * n
        grids = torch.stack([diffusion.sampling_timesteps(steps, s) for s in shapes])  # (B, steps + 1)
        for i in tqdm(range(steps), disable=not progress, desc="euler"):
            t, t_next = grids[:, i].to(device), grids[:, i + 1].to(device)  # (B,)
            out = denoise(x, diffusion.model_t(t))
            if packed:
                v = [
                    diffusion.velocity(xi[None], oi[None], t[j : j + 1])[0]
                    for j, (xi, oi) in enumerate(zip(x, out))
                ]
            else:
                v = diffusion.velocity(x, out, t)
            if packed:
                x = [xi + (t_next[j] - t[j]) * vi for j, (xi, vi) in enumerate(zip(x, v))]
            else:
                x = x + bcast(t_next - t, x) * v
    else:
        d = diffusion.respace(steps)
        for i in tqdm(range(d.num_timesteps - 1, -1, -1), disable=not progress, desc=sampler):
            t = torch.full((n,), i, device=device, dtype=torch.long)
            out = denoise(x, d.model_t(t))

            if packed:
                x = [
                    _gaussian_step(d, sampler, xi[None], oi[None], t[:1], eta, g)[0]
                    for xi, oi, g in zip(x, out, _clip_generators(generator, n))
                ]
            else:
                x = _gaussian_step(d, sampler, x, out, t, eta, generator)
    return with_given(x, given, mask)


def _gaussian_step(d: GaussianDiffusion, sampler: str, x, out, t, eta: float, generator):
    """One reverse step x_t -> x_{t-1} (tensors (B, C, T, H, W); t (B,) one shared index)."""
    p = d.p_mean_variance(out, x, t, clip=True)
    last = int(t[0]) == 0
    if sampler == "ddpm":
        if last:
            return p["mean"]
        return p["mean"] + torch.exp(0.5 * p["log_variance"]) * _randn(x.shape, generator, x.device)
    # DDIM (Song et al. 2021, eq. 12)
    ab, ab_prev = d._at(d.alphas_cumprod, t, x), d._at(d.alphas_cumprod_prev, t, x)
    sigma = eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
    new = ab_prev.sqrt() * p["x0"] + (1 - ab_prev - sigma**2).clamp_min(0).sqrt() * p["eps"]
    if eta > 0 and not last:
        new = new + sigma * _randn(x.shape, generator, x.device)
    return new
