"""Losses with masks, packed losses, samplers (exactness with an oracle, given positions, CFG)."""

import pytest
import torch

from lightning_modules.diffusion import GaussianDiffusion, RectifiedFlow, predict_mask, sample
from lightning_modules.nets import VideoDiT

OBJECTIVES = {
    "eps": lambda: GaussianDiffusion(prediction="eps"),
    "v": lambda: GaussianDiffusion(prediction="v", schedule="cosine"),
    "x0": lambda: GaussianDiffusion(prediction="x0"),
    "sigma": lambda: GaussianDiffusion(learn_sigma=True),
    "flow": lambda: RectifiedFlow(),
    "flow_x0": lambda: RectifiedFlow(prediction="x0"),
}


def tiny(learn_sigma=False, **kw):
    model = VideoDiT(
        in_channels=3,
        patch_size=(1, 2, 2),
        hidden_size=32,
        depth=2,
        num_heads=2,
        learn_sigma=learn_sigma,
        **kw,
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


class Oracle(torch.nn.Module):
    """Knows the single data point x0 and returns the exact prediction for any x_t."""

    def __init__(self, diffusion, x0):
        super().__init__()
        self.d, self.x0, self.p = diffusion, x0, torch.nn.Parameter(torch.zeros(()))
        self.full = (
            GaussianDiffusion(schedule=diffusion.schedule)
            if isinstance(diffusion, GaussianDiffusion)
            else None
        )

    def forward(self, x, t, mask=None, **kw):
        if self.full is None:
            if self.d.prediction == "x0":
                return self.x0.expand_as(x)
            return (x - self.x0) / (t / self.d.num_timesteps).view(-1, 1, 1, 1, 1)
        t = t.long()  # the network sees original timesteps even after respacing
        eps = self.full.eps_from_x0(x, t, self.x0)
        out = {"eps": eps, "x0": self.x0.expand_as(x), "v": self.full.v_from_x0_eps(self.x0, eps, t)}[
            self.d.prediction
        ]
        return torch.cat([out, torch.zeros_like(out)], 1) if self.d.learn_sigma else out


@pytest.mark.parametrize(
    "name,sampler",
    [
        ("eps", "ddim"),
        ("eps", "ddpm"),
        ("v", "ddim"),
        ("x0", "ddpm"),
        ("sigma", "ddpm"),
        ("flow", "euler"),
        ("flow_x0", "euler"),
    ],
)
def test_samplers_are_exact_with_an_oracle(name, sampler):
    d = OBJECTIVES[name]()
    x0 = torch.rand(2, 3, 2, 4, 4) * 2 - 1
    out = sample(
        Oracle(d, x0),
        d,
        (2, 3, 2, 4, 4),
        sampler=sampler,
        steps=20,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_masked_loss_ignores_given_positions(name):
    """Loss counts only generated positions: perturbing the network output where mask is True leaves
    the loss unchanged; the network sees x0 exactly at given positions."""
    d = OBJECTIVES[name]()
    model = tiny(learn_sigma=name == "sigma")
    x0 = torch.rand(2, 3, 4, 8, 8) * 2 - 1
    mask = predict_mask(4, 8, 8, 2)[None].expand(2, -1, -1, -1, -1)  # first 2 frames given
    t = torch.tensor([0, 900]) if name != "flow" else torch.tensor([0.1, 0.9])
    noise = torch.randn_like(x0)
    seen = {}

    class Perturbed(torch.nn.Module):
        def __init__(self, bump):
            super().__init__()
            self.bump = bump

        def forward(self, x, t, mask=None, **kw):
            seen["x"], seen["mask"] = x, mask
            out = model(x, t, mask=mask)
            return out if mask is None else out + self.bump * mask.to(out.dtype)

    ref = d.training_losses(Perturbed(0.0), x0, t, mask=mask, noise=noise)["loss"]
    assert torch.equal(seen["x"][:, :, :2], x0[:, :, :2]) and seen["mask"] is mask
    assert not torch.equal(seen["x"][:, :, 2:], x0[:, :, 2:])
    bumped = d.training_losses(Perturbed(100.0), x0, t, mask=mask, noise=noise)["loss"]
    torch.testing.assert_close(bumped, ref)
    unmasked = d.training_losses(Perturbed(0.0), x0, t, noise=noise)["loss"]
    assert not torch.allclose(unmasked, ref)


@pytest.mark.parametrize("name", ["eps", "sigma", "flow"])
def test_packed_losses_equal_per_sample_losses(name):
    d = OBJECTIVES[name]()
    model = tiny(learn_sigma=name == "sigma")
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 2, 8, 12, generator=g)]
    noise = [torch.randn_like(x) for x in xs]
    masks = [predict_mask(4, 8, 8, 1), torch.zeros(1, 2, 8, 12, dtype=torch.bool)]
    t = torch.tensor([3, 600]) if name != "flow" else torch.tensor([0.2, 0.7])
    packed = d.training_losses(model, xs, t, mask=masks, noise=noise)
    for i in range(2):
        single = d.training_losses(
            model, xs[i][None], t[i : i + 1], mask=masks[i][None], noise=noise[i][None]
        )
        for k in ("loss", "mse"):
            torch.testing.assert_close(packed[k][i : i + 1], single[k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,sampler", [("eps", "ddpm"), ("v", "ddim"), ("flow", "euler")])
def test_samplers_keep_given_frames_exactly(name, sampler):
    d = OBJECTIVES[name]()
    model = tiny()
    given = torch.rand(2, 3, 4, 8, 8) * 2 - 1
    mask = predict_mask(4, 8, 8, 2)[None].expand(2, -1, -1, -1, -1)
    out = sample(model, d, given.shape, sampler=sampler, steps=5, eta=0.5, given=given, mask=mask)
    assert torch.equal(out[:, :, :2], given[:, :, :2])
    assert not torch.equal(out[:, :, 2:], given[:, :, 2:])
    # packed: list in, list out, same guarantee
    shapes = [(3, 4, 8, 8), (3, 3, 4, 8)]
    givens = [torch.rand(s) for s in shapes]
    masks = [predict_mask(4, 8, 8, 1), predict_mask(3, 4, 8, 2)]
    outs = sample(model, d, shapes, sampler=sampler, steps=3, given=givens, mask=masks)
    assert [tuple(o.shape) for o in outs] == shapes
    for o, g, m in zip(outs, givens, masks):
        assert torch.equal(o[m.expand_as(o)], g[m.expand_as(g)])


def test_packed_sampling_matches_per_sample_sampling():
    d, model = RectifiedFlow(), tiny()
    shapes = [(3, 2, 8, 8), (3, 1, 4, 8)]
    gen = torch.Generator().manual_seed(7)
    outs = sample(model, d, shapes, sampler="euler", steps=4, generator=gen)
    gen = torch.Generator().manual_seed(7)
    noise = [torch.randn(s, generator=gen) for s in shapes]
    for s, n, o in zip(shapes, noise, outs):
        x = n[None]
        grid = d.sampling_timesteps(4, s)
        for i in range(4):
            x = x + (grid[i + 1] - grid[i]) * model(x, d.model_t(grid[i : i + 1]))
        torch.testing.assert_close(o, x[0], atol=1e-5, rtol=0)


def test_classifier_free_guidance_formula():
    """One Euler step from t=1: x = noise - v; guided v = v_u + s (v_c - v_u)."""

    class ByLabel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, mask=None, y=None):
            return torch.ones_like(x) * (y == 0).float().view(-1, 1, 1, 1, 1) * 2.0  # cond 2, uncond 0

    d = RectifiedFlow(shift=False)
    kw = dict(sampler="euler", steps=1, model_kwargs={"y": torch.tensor([0])})
    noise = sample(
        ByLabel(),
        d,
        (1, 1, 1, 2, 2),
        generator=torch.Generator().manual_seed(0),
        cfg_scale=1.0,
        sampler="euler",
        steps=1,
        model_kwargs={"y": torch.tensor([1])},
    )  # v = 0 -> the noise
    out1 = sample(ByLabel(), d, (1, 1, 1, 2, 2), generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(out1, noise - 2.0)
    out3 = sample(
        ByLabel(),
        d,
        (1, 1, 1, 2, 2),
        generator=torch.Generator().manual_seed(0),
        cfg_scale=3.0,
        uncond_kwargs={"y": torch.tensor([1])},
        **kw,
    )
    torch.testing.assert_close(out3, noise - 6.0)
    with pytest.raises(ValueError, match="uncond_kwargs"):
        sample(ByLabel(), d, (1, 1, 1, 2, 2), cfg_scale=3.0, **kw)
    with pytest.raises(ValueError, match="GaussianDiffusion"):
        sample(ByLabel(), d, (1, 1, 1, 2, 2), sampler="ddim", steps=2)


def test_sampling_is_deterministic_for_a_seed():
    d, model = GaussianDiffusion(), tiny()
    a = sample(model, d, (1, 3, 2, 8, 8), sampler="ddpm", steps=4, generator=torch.Generator().manual_seed(1))
    b = sample(model, d, (1, 3, 2, 8, 8), sampler="ddpm", steps=4, generator=torch.Generator().manual_seed(1))
    c = sample(model, d, (1, 3, 2, 8, 8), sampler="ddpm", steps=4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_one_reverse_step_at_t_gt_0_matches_the_closed_form(prediction):
    """An oracle samples exactly whatever the step math is (the last step returns its x0), so
    check one DDPM and one DDIM step in the middle of the chain against the formulas, with the
    schedule recomputed here from the betas in float64."""
    from lightning_modules.diffusion.gaussian import make_betas
    from lightning_modules.diffusion.samplers import _gaussian_step

    d = GaussianDiffusion(prediction=prediction)
    betas = make_betas("linear", 1000).double()
    ab = torch.cumprod(1 - betas, 0)
    i = 500
    a_t, a_prev, beta = ab[i], ab[i - 1], betas[i]
    g = torch.Generator().manual_seed(3)
    x0_hat = torch.rand(2, 3, 2, 4, 4, generator=g, dtype=torch.float64) - 0.5  # inside the clip range
    x_t = torch.randn(2, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    eps_hat = (x_t - a_t.sqrt() * x0_hat) / (1 - a_t).sqrt()
    out = x0_hat if prediction == "x0" else eps_hat
    t = torch.full((2,), i, dtype=torch.long)

    ddim = _gaussian_step(d, "ddim", x_t, out, t, 0.0, None)
    torch.testing.assert_close(
        ddim, a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps_hat, rtol=1e-6, atol=1e-6
    )

    mean = a_prev.sqrt() * beta / (1 - a_t) * x0_hat + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * x_t
    var = beta * (1 - a_prev) / (1 - a_t)  # the posterior ("small") variance
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(9)).to(x_t)
    ddpm = _gaussian_step(d, "ddpm", x_t, out, t, 0.0, torch.Generator().manual_seed(9))
    torch.testing.assert_close(ddpm, mean + var.sqrt() * noise, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["eps", "flow"])
def test_packed_clip_with_no_mask_means_nothing_given(name):
    """A None entry in a packed mask list (documented: nothing given in that clip) works in the
    network, the loss and the sampler, and equals an all-False mask."""
    d, model = OBJECTIVES[name](), tiny()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 2, 8, 4, generator=g)]
    noise = [torch.randn_like(x) for x in xs]
    t = torch.tensor([10, 700]) if name != "flow" else torch.tensor([0.3, 0.8])
    none = [predict_mask(4, 8, 8, 1), None]
    zero = [predict_mask(4, 8, 8, 1), torch.zeros(1, 2, 8, 4, dtype=torch.bool)]
    a = d.training_losses(model, xs, t, mask=none, noise=noise)["loss"]
    b = d.training_losses(model, xs, t, mask=zero, noise=noise)["loss"]
    torch.testing.assert_close(a, b)
    sampler = "euler" if name == "flow" else "ddim"
    shapes = [tuple(x.shape) for x in xs]
    outs = [
        sample(
            model,
            d,
            shapes,
            sampler=sampler,
            steps=2,
            given=[xs[0], g],
            mask=m,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        for g, m in ((None, none), (torch.zeros_like(xs[1]), zero))
    ]
    for o1, o2 in zip(*outs):
        torch.testing.assert_close(o1, o2)


class _Zero(torch.nn.Module):
    """Predicts 0 everywhere, so each loss element is a known function of (x0, noise)."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, mask=None, **kw):
        return torch.zeros_like(x)

    def forward_packed(self, xs, t, masks=None, **kw):
        return [torch.zeros_like(x) for x in xs]


@pytest.mark.parametrize("name", ["eps", "flow"])
def test_token_weighting_counts_every_generated_element_once_in_packed_and_bucketed_batches(name):
    """A 1-frame image packed beside an 8-frame clip weighs 1/8 of it per token (as in a padded
    batch), not as much as the whole clip; "sample" weighting gives every clip the same weight."""
    from lightning_modules.diffusion.common import reduce_loss

    d = OBJECTIVES[name]()
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 8, 8, 8, generator=g)]
    noise = [torch.randn_like(x) for x in xs]
    t = torch.tensor([0.3, 0.6]) if name == "flow" else torch.tensor([100, 600])
    target = [(n - x) if name == "flow" else n for x, n in zip(xs, noise)]  # what the zero model misses
    out = d.training_losses(_Zero(), xs, t, noise=noise)
    per_token = torch.cat([(e**2).flatten() for e in target]).mean()
    per_sample = torch.stack([(e**2).mean() for e in target]).mean()
    torch.testing.assert_close(reduce_loss(out["loss"], out["weight"], "token"), per_token)
    torch.testing.assert_close(reduce_loss(out["loss"], out["weight"], "sample"), per_sample)

    # bucketed with masks: token weighting is the mean over every generated element of the batch
    x0 = torch.randn(2, 3, 4, 8, 8, generator=g)
    nz = torch.randn_like(x0)
    mask = torch.stack([predict_mask(4, 8, 8, 3), predict_mask(4, 8, 8, 0)])  # 1 and 4 frames generated
    tb = t if name == "flow" else t.long()
    out = d.training_losses(_Zero(), x0, tb, mask=mask, noise=nz)
    err = ((nz - x0) if name == "flow" else nz) ** 2
    keep = (~mask).expand_as(err)
    torch.testing.assert_close(reduce_loss(out["loss"], out["weight"], "token"), err[keep].mean())
    # and the packed form of the same clips and masks gives the same number
    packed = d.training_losses(_Zero(), list(x0), tb, mask=list(mask), noise=list(nz))
    torch.testing.assert_close(reduce_loss(packed["loss"], packed["weight"], "token"), err[keep].mean())


def test_flow_x0_prediction_trains_on_the_velocity_it_implies():
    """x0-prediction (JiT): the loss is the velocity loss |(x0 - x0_hat) / t|^2 with t floored at t_min
    (a bounded weight). An exact x0 costs nothing at every t, so training and sampling (which divides
    by t itself) agree on what the network predicts; an x0 off by d costs (d / max(t, t_min))^2."""
    f = RectifiedFlow(prediction="x0", t_min=0.05)
    x0, noise = torch.rand(3, 3, 2, 4, 4) * 2 - 1, torch.randn(3, 3, 2, 4, 4)
    t = torch.tensor([0.01, 0.5, 0.9])
    exact = f.training_losses(lambda x, t, mask=None: x0, x0, t, noise=noise)["loss"]
    torch.testing.assert_close(exact, torch.zeros(3), atol=1e-10, rtol=0)  # below t_min too
    off = f.training_losses(lambda x, t, mask=None: x0 + 0.1, x0, t, noise=noise)["loss"]
    torch.testing.assert_close(off, (0.1 / t.clamp_min(0.05)) ** 2)
    x_t = f.q_sample(x0, t, noise)
    torch.testing.assert_close(f.velocity(x_t, x0, t), noise - x0)  # exact x0 -> the exact velocity
    with pytest.raises(ValueError, match="prediction"):
        RectifiedFlow(prediction="eps")


@pytest.mark.parametrize("packed", [False, True])
def test_cfg_runs_one_batched_pass_equal_to_two_passes(packed):
    """Classifier-free guidance batches the conditional and null passes (one forward of 2B per step)
    and equals the two-pass formula v_u + s (v_c - v_u) to 1e-5."""
    d, model = RectifiedFlow(), tiny(num_classes=3)
    calls, forward_packed = [], model.forward_packed
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    model.forward_packed = lambda *a, **k: (calls.append(1), forward_packed(*a, **k))[1]
    y, null = torch.tensor([0, 2]), torch.tensor([3, 3])
    shapes = [(3, 2, 8, 8), (3, 1, 4, 8)] if packed else (2, 3, 2, 8, 8)
    out = sample(model, d, shapes, sampler="euler", steps=3, cfg_scale=2.5, generator=torch.Generator().manual_seed(7),
                 model_kwargs={"y": y}, uncond_kwargs={"y": null})  # fmt: skip
    assert len(calls) == 3  # one network call per step
    gen = torch.Generator().manual_seed(7)
    clips = (
        [(s, y[i : i + 1], null[i : i + 1]) for i, s in enumerate(shapes)]
        if packed
        else [(shapes[1:], y, null)]
    )
    expected = []
    for s, yc, yu in clips:
        x = torch.randn((len(yc), *s), generator=gen)
        grid = d.sampling_timesteps(3, s)
        for i in range(3):
            t = d.model_t(grid[i : i + 1]).expand(len(yc))
            vc, vu = model(x, t, y=yc), model(x, t, y=yu)
            x = x + (grid[i + 1] - grid[i]) * (vu + 2.5 * (vc - vu))
        expected += list(x)
    for o, e in zip(out, expected):
        torch.testing.assert_close(o, e, atol=1e-5, rtol=0)
