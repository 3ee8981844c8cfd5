"""Acceptance: a tiny pixel-space VideoDiT overfits one short clip with a plain torch loop — the loss
falls >= 10x within 300 CPU steps and sampling then reproduces the clip at PSNR >= 20 dB — for
Gaussian diffusion and for rectified flow.

Settings that matter (measured while tuning, 300 steps, hidden 64, depth 2, 4x4 patches):
- diffusion: x0-prediction passes with room to spare (PSNR ~38 dB at batch 8). eps-prediction gets its
  loss down 10-20x but samples stay far from the clip (~8-10 dB, DDIM or DDPM, even with x0
  clipping): 300 steps are not enough for eps to pin down x0 from high noise;
- rectified flow: needs the timestep shift towards noise (ratio 4 here) and batch 32 (~25 dB);
  unshifted, the model is least accurate near t = 1, where Euler sampling starts (~15 dB).
"""

import math

import pytest
import torch

from lightning_modules.diffusion import GaussianDiffusion, RectifiedFlow, sample
from lightning_modules.nets import VideoDiT

STEPS = 300


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: a second thread only adds synchronisation (measured ~3x slower on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clip() -> torch.Tensor:
    """(1, 3, 4, 16, 16) in [-1, 1]: moving waves in two channels and a drifting sawtooth in the third."""
    t = torch.arange(4.0)[:, None, None]
    h = torch.arange(16.0)[None, :, None]
    w = torch.arange(16.0)[None, None, :]
    r = torch.sin((w + 2 * t) / 3.0) * torch.cos(h / 4.0)
    g = torch.cos((h - 2 * t) / 3.0).expand(4, 16, 16)
    b = ((w + h + 3 * t) % 8) / 4.0 - 1
    return torch.stack([r, g, b])[None]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / ((a.clamp(-1, 1) - b) ** 2).mean().item())  # peak-to-peak 2


def overfit(diffusion, *, batch: int, lr: float = 3e-3):
    torch.manual_seed(0)
    model = VideoDiT(
        in_channels=3,
        patch_size=(1, 4, 4),
        hidden_size=64,
        depth=2,
        num_heads=4,
        block_type="factorized",
        pos_embed="sincos",  # absolute positions: the network must place a fixed clip from pure noise
    )
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    x0 = clip()
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(STEPS):
        t = diffusion.sample_t([tuple(x0.shape[1:])] * batch, "cpu", gen)
        loss = diffusion.training_losses(model, x0.expand(batch, -1, -1, -1, -1), t)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-30:]) / 30
    return model.eval(), x0, first / last


def test_gaussian_diffusion_overfits_one_clip():
    d = GaussianDiffusion(schedule="linear", prediction="x0")
    model, x0, drop = overfit(d, batch=8)
    assert drop >= 10, f"loss fell only {drop:.1f}x"
    for sampler in ("ddim", "ddpm"):
        out = sample(
            model, d, x0.shape, sampler=sampler, steps=50, generator=torch.Generator().manual_seed(1)
        )
        assert psnr(out, x0) >= 20, f"{sampler}: PSNR {psnr(out, x0):.1f} dB"


def test_rectified_flow_overfits_one_clip():
    # shift ratio sqrt(16*16 / 64) * sqrt(4) = 4: training and sampling lean towards noise
    f = RectifiedFlow(shift_base_tokens=64)
    assert f.shift_ratio((4, 16, 16)) == 4.0
    model, x0, drop = overfit(f, batch=32)
    assert drop >= 10, f"loss fell only {drop:.1f}x"
    out = sample(model, f, x0.shape, sampler="euler", steps=50, generator=torch.Generator().manual_seed(1))
    assert psnr(out, x0) >= 20, f"PSNR {psnr(out, x0):.1f} dB"


def test_rectified_flow_predicting_x0_overfits_with_a_quarter_of_the_batch():
    """x0-prediction (the demo's setting): 4x4x3 = 48 values per token through a 64-wide network. At
    batch 8 and the same 300 steps, velocity prediction reaches 21.4 dB and x0-prediction 31.2 dB
    (measured); 27 dB separates them."""
    f = RectifiedFlow(shift_base_tokens=64, prediction="x0")
    model, x0, drop = overfit(f, batch=8)
    assert drop >= 10, f"loss fell only {drop:.1f}x"
    out = sample(model, f, x0.shape, sampler="euler", steps=50, generator=torch.Generator().manual_seed(1))
    assert psnr(out, x0) >= 27, f"PSNR {psnr(out, x0):.1f} dB"
