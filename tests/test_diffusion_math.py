"""Gaussian diffusion and rectified flow math against closed forms."""

import math

import pytest
import torch

from lightning_modules.diffusion import GaussianDiffusion, RectifiedFlow
from lightning_modules.diffusion.flow import shift_timesteps
from lightning_modules.diffusion.gaussian import make_betas


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_statistics(schedule):
    d = GaussianDiffusion(schedule=schedule)
    x0 = torch.full((20000, 1, 1, 1, 1), 0.7)
    for step in (0, 250, 999):
        t = torch.full((20000,), step)
        xt = d.q_sample(x0, t, torch.randn_like(x0, dtype=torch.float64).float())
        ab = float(d.alphas_cumprod[step])
        assert abs(xt.mean().item() - math.sqrt(ab) * 0.7) < 0.03
        assert abs(xt.var().item() - (1 - ab)) < 0.03 * max(1 - ab, 0.05)


def test_schedules_match_their_definitions():
    lin = make_betas("linear", 1000)
    assert lin[0].item() == pytest.approx(1e-4) and lin[-1].item() == pytest.approx(0.02)
    d = GaussianDiffusion(schedule="cosine", num_timesteps=1000)
    f = lambda s: math.cos((s / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for step in (0, 10, 500, 900):
        assert d.alphas_cumprod[step].item() == pytest.approx(f(step + 1) / f(0), rel=1e-9)
    assert make_betas("cosine", 1000).max().item() <= 0.999
    with pytest.raises(ValueError, match="schedule"):
        make_betas("quadratic", 10)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_matches_bayes_closed_form(schedule):
    """q(x_{t-1} | x_t, x0) from the product of the two Gaussians, computed independently."""
    d = GaussianDiffusion(schedule=schedule)
    x0, xt = torch.randn(4, 2, 1, 2, 2).double(), torch.randn(4, 2, 1, 2, 2).double()
    t = torch.tensor([1, 10, 400, 999])
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, t)
    betas = make_betas(schedule, 1000)
    alphas = 1 - betas
    ab = torch.cumprod(alphas, 0)
    for i, s in enumerate(t.tolist()):
        ab_prev = ab[s - 1]
        v = 1 / (alphas[s] / betas[s] + 1 / (1 - ab_prev))
        m = v * (alphas[s].sqrt() * xt[i] / betas[s] + ab_prev.sqrt() * x0[i] / (1 - ab_prev))
        torch.testing.assert_close(mean[i], m, rtol=1e-6, atol=1e-8)
        assert var[i].item() == pytest.approx(v.item(), rel=1e-6)
        assert log_var[i].item() == pytest.approx(math.log(v.item()), rel=1e-6)
    # t = 0: posterior variance is 0 and its log is clipped to the t = 1 value (IDDPM)
    _, var0, log0 = d.q_posterior_mean_variance(x0[:1], xt[:1], torch.tensor([0]))
    assert var0.item() == 0 and log0.item() == pytest.approx(math.log(d.posterior_variance[1].item()))


def test_parameterisations_round_trip():
    d = GaussianDiffusion(schedule="cosine")
    x0, eps = torch.randn(3, 2, 1, 4, 4).double(), torch.randn(3, 2, 1, 4, 4).double()
    t = torch.tensor([0, 300, 999])
    xt = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.x0_from_eps(xt, t, eps), x0)
    torch.testing.assert_close(d.eps_from_x0(xt, t, x0), eps)
    v = d.v_from_x0_eps(x0, eps, t)
    torch.testing.assert_close(d.x0_from_v(xt, t, v), x0)
    for pred, out in (("eps", eps), ("v", v), ("x0", x0)):
        p = GaussianDiffusion(schedule="cosine", prediction=pred).p_mean_variance(out, xt, t)
        torch.testing.assert_close(p["x0"], x0)
        torch.testing.assert_close(p["eps"][1:], eps[1:])  # at t = 0 eps is ill-conditioned in float64 too


def test_respacing_keeps_marginals():
    d = GaussianDiffusion()
    r = d.respace(10)
    assert r.num_timesteps == 10 and r.timestep_map.tolist()[0] == 0 and r.timestep_map.tolist()[-1] == 999
    torch.testing.assert_close(r.alphas_cumprod, d.alphas_cumprod[r.timestep_map])
    assert r.model_t(torch.tensor([9])).item() == 999
    assert d.respace(1000) is d


def test_learned_sigma_vlb_is_finite_and_trains_only_the_variance():
    d = GaussianDiffusion(learn_sigma=True)
    x0 = torch.rand(4, 2, 2, 4, 4) * 2 - 1
    mean_part = torch.randn(4, 2, 2, 4, 4, requires_grad=True)
    var_part = torch.zeros(4, 2, 2, 4, 4, requires_grad=True)

    class Net(torch.nn.Module):
        def forward(self, x, t, mask=None):
            return torch.cat([mean_part, var_part], dim=1)

    terms = d.training_losses(Net(), x0, torch.tensor([0, 1, 500, 999]))
    assert torch.isfinite(terms["vb"]).all() and (terms["vb"] >= 0).all()
    grad_mean, grad_var = torch.autograd.grad(terms["vb"].sum(), [mean_part, var_part])
    assert torch.count_nonzero(grad_mean) == 0 and torch.count_nonzero(grad_var) > 0
    # the true posterior as the model's prediction gives KL = 0 for t > 0
    xt = d.q_sample(x0, torch.tensor([10] * 4), torch.randn_like(x0))
    t = torch.tensor([10] * 4)
    eps = d.eps_from_x0(xt, t, x0)
    min_log = d.posterior_log_variance_clipped[10]
    max_log = torch.log(d.betas[10])
    frac = ((d.posterior_variance[10].log() - min_log) / (max_log - min_log)).float()
    out = torch.cat([eps, torch.full_like(eps, 2 * frac.item() - 1)], 1)
    assert d.vb_terms(out, x0, xt, t).abs().max().item() < 1e-4


def test_flow_shift_formula():
    assert shift_timesteps(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)
    assert shift_timesteps(torch.tensor([0.0, 1.0]), 5.0).tolist() == [0.0, 1.0]
    assert shift_timesteps(torch.tensor(0.25), 1.0).item() == pytest.approx(0.25)
    f = RectifiedFlow(shift_base_tokens=64 * 64)
    # Open-Sora 1.2: sqrt(HW / 512^2) * sqrt(T_latent) with an /8 VAE -> latent 128x128 (1024 px), 4 frames
    assert f.shift_ratio((4, 128, 128)) == pytest.approx(math.sqrt(1024**2 / 512**2) * math.sqrt(4))
    assert f.shift_ratio((4, 4, 128, 128)) == pytest.approx(4.0)  # (C, T, H, W) is accepted too
    assert RectifiedFlow(shift=False).shift_ratio((4, 128, 128)) == 1.0


def test_flow_sample_t_is_shifted_logit_normal():
    f = RectifiedFlow(logit_mean=0.0, logit_std=1.0, shift_base_tokens=64 * 64)
    plain = f.sample_t(5, "cpu", torch.Generator().manual_seed(3))
    u = torch.randn(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(plain, torch.sigmoid(u).float())
    shapes = torch.tensor([[1, 64, 64]] * 2 + [[16, 64, 64]] * 3)
    shifted = f.sample_t(shapes, "cpu", torch.Generator().manual_seed(3))
    torch.testing.assert_close(shifted[:2], plain[:2])  # ratio 1
    torch.testing.assert_close(shifted[2:], shift_timesteps(plain[2:].double(), 4.0).float())
    assert (shifted[2:] > plain[2:]).all()  # longer clips are pushed towards noise


def test_flow_interpolation_and_target():
    f = RectifiedFlow()
    x0, n = torch.randn(2, 1, 1, 2, 2), torch.randn(2, 1, 1, 2, 2)
    t = torch.tensor([0.0, 1.0])
    xt = f.q_sample(x0, t, n)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[1], n[1])
    t = torch.tensor([0.3, 0.8])
    torch.testing.assert_close(f.x0_from_velocity(f.q_sample(x0, t, n), t, n - x0), x0)


def test_clip_x0_applies_only_when_sampling():
    d = GaussianDiffusion(prediction="x0", clip_x0=1.0)
    xt, out, t = torch.randn(1, 1, 1, 2, 2), torch.full((1, 1, 1, 2, 2), 3.0), torch.tensor([500])
    assert d.p_mean_variance(out, xt, t)["x0"].max().item() == 3.0  # training / VLB: untouched
    p = d.p_mean_variance(out, xt, t, clip=True)
    assert p["x0"].max().item() == 1.0
    torch.testing.assert_close(p["eps"], d.eps_from_x0(xt, t, p["x0"]))  # eps follows the clamped x0
