"""Per-frame FID / IS (local InceptionV3 file) and video IS (C3D TorchScript), each checked against an
independent computation: torchmetrics' own FID, numpy formulas written out here, StyleGAN-V's split rule."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from lightning_modules.metrics.detectors import DetectorWeightsError
from lightning_modules.metrics.fid_is import (
    FrameInception,
    VideoIS,
    fid_from_stats,
    inception_score_from_probs,
    random_inception_weights,
)
from lightning_modules.metrics.frechet import GaussianStats

warnings.filterwarnings("ignore", message=".*torch.jit.*")
warnings.filterwarnings("ignore", message=".*will save all extracted features.*")


def is_by_hand(probs: np.ndarray, order: np.ndarray, bounds: list[tuple[int, int]]) -> tuple[float, float]:
    """exp(mean KL(p(y|x) || p(y))) per split, splits given as explicit (start, stop) rows of probs[order]."""
    p = probs[order]
    scores = []
    for lo, hi in bounds:
        part = p[lo:hi]
        marginal = part.mean(0, keepdims=True)
        scores.append(np.exp((part * (np.log(part) - np.log(marginal))).sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_formula():
    k = 5
    one_hot = np.repeat(np.eye(k), 20, axis=0) * (1 - 1e-12) + 1e-12 / k  # confident and diverse: IS = k
    mean, std = inception_score_from_probs(one_hot, splits=1)
    assert mean == pytest.approx(k, rel=1e-6) and std == 0
    uniform = np.full((100, k), 1.0 / k)  # no confidence: IS = 1
    assert inception_score_from_probs(uniform, splits=10) == pytest.approx((1.0, 0.0))
    # StyleGAN-V's split assignment: RandomState(42) permutation, then parts [i*n//s, (i+1)*n//s)
    probs = np.random.default_rng(0).dirichlet(np.ones(k), size=100)
    order = np.random.RandomState(42).permutation(100)
    expected = is_by_hand(probs, order, [(10 * i, 10 * i + 10) for i in range(10)])
    assert inception_score_from_probs(probs) == pytest.approx(expected, rel=1e-9)
    # 10 videos in 3 splits: parts of 3, 3, 4 (not numpy's array_split 4, 3, 3)
    probs10 = probs[:10]
    order10 = np.random.RandomState(42).permutation(10)
    expected = is_by_hand(probs10, order10, [(0, 3), (3, 6), (6, 10)])
    assert inception_score_from_probs(probs10, splits=3) == pytest.approx(expected, rel=1e-9)
    assert inception_score_from_probs(probs10, splits=3) != pytest.approx(
        is_by_hand(probs10, order10, [(0, 4), (4, 7), (7, 10)]), rel=1e-6
    )  # the check tells the split rule apart
    unshuffled = is_by_hand(probs, np.arange(100), [(10 * i, 10 * i + 10) for i in range(10)])
    assert inception_score_from_probs(probs)[1] != pytest.approx(unshuffled[1], rel=1e-6)  # and the shuffle


class Sharp(torch.nn.Module):
    """Confident 101-class probabilities from a video's mean colour per frame (deterministic)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 16, 101)
        torch.nn.init.normal_(self.proj.weight, std=2.0, generator=torch.Generator().manual_seed(0))

    def forward(self, x):  # uint8 (B, 3, T, H, W) -> (B, 101)
        feats = (x.float() / 255).mean((3, 4)).flatten(1) * 20
        return torch.softmax(self.proj(feats - feats.mean(1, keepdim=True)), 1)


def test_video_is_equals_the_formula_on_the_detector_probabilities(monkeypatch):
    monkeypatch.delenv("VIDEODIT_C3D_TORCHSCRIPT", raising=False)
    with pytest.raises(DetectorWeightsError, match="c3d_ucf101.pt"):
        VideoIS()
    vis = VideoIS(allow_random=True, splits=3)
    assert vis.describe()["calibrated"] is False
    vis.module = Sharp()  # the random C3D is nearly uniform (IS ~ 1): a confident stand-in instead
    g = torch.Generator().manual_seed(0)
    videos = (torch.rand(10, 3, 16, 24, 24, generator=g) * 255).to(torch.uint8)
    vis.update(videos[:4])
    vis.update(videos[4:])
    out = vis.compute()
    with torch.no_grad():
        probs = vis.module(videos).double().numpy()  # the detector called directly, all 10 at once
    order = np.random.RandomState(42).permutation(10)
    mean, std = is_by_hand(probs, order, [(0, 3), (3, 6), (6, 10)])  # StyleGAN-V: [i*n//s, (i+1)*n//s)
    assert out["is_video_splits"] == 3
    assert out["is_video_mean"] == pytest.approx(mean, rel=1e-6) and out["is_video_std"] == pytest.approx(
        std, rel=1e-5
    )
    assert out["is_video_mean"] > 1 + 1e-6  # not the degenerate value of one-sample splits
    assert vis.describe()["calibrated"] is False and len(vis.describe()["sha256"]) == 64
    with pytest.raises(ValueError, match="16 frames"):
        vis.update(torch.zeros(1, 3, 9, 24, 24, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        vis.update(torch.zeros(1, 3, 16, 24, 24))


def test_frame_metrics_need_the_inception_file(monkeypatch):
    monkeypatch.delenv("VIDEODIT_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(DetectorWeightsError, match="weights-inception-2015-12-05"):
        FrameInception()
    assert FrameInception.__init__.__kwdefaults__["antialias"] is False  # TF1-compatible by default


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    return random_inception_weights(tmp_path_factory.mktemp("inception") / "random_inception.pth")


def two_sets():
    g = torch.Generator().manual_seed(0)
    real = (torch.rand(3, 3, 2, 40, 40, generator=g) * 255).to(torch.uint8)  # (B, 3, T, H, W)
    fake = (torch.rand(3, 3, 2, 40, 40, generator=g) * 160).to(torch.uint8)  # darker: a real distance
    return real, fake


@pytest.mark.slow
def test_frame_fid_equals_torchmetrics_and_the_formula_by_hand(inception_file):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = two_sets()
    fi = FrameInception(weights=str(inception_file), inception_score=False)
    stats = {}
    for side, videos in (("real", real), ("fake", fake)):
        stats[side] = GaussianStats(2048).update(fi.features(videos, side))
    ours = fid_from_stats(stats["real"], stats["fake"])
    assert fi.describe()["frames"] == {"real": 6, "fake": 6}
    # 1. torchmetrics' FrechetInceptionDistance on the same frames and weights file
    tm = FrechetInceptionDistance(
        feature=2048, feature_extractor_weights_path=str(inception_file), antialias=False
    )
    tm.update(real.permute(0, 2, 1, 3, 4).flatten(0, 1), real=True)
    tm.update(fake.permute(0, 2, 1, 3, 4).flatten(0, 1), real=False)
    assert ours == pytest.approx(float(tm.compute()), rel=1e-4)
    # 2. the formula by hand, numpy, on the network's features
    with torch.no_grad():
        feats = {
            side: fi.net(v.permute(0, 2, 1, 3, 4).flatten(0, 1)).double().numpy()
            for side, v in (("real", real), ("fake", fake))
        }
    mu1, mu2 = feats["real"].mean(0), feats["fake"].mean(0)
    s1, s2 = np.cov(feats["real"], rowvar=False, ddof=1), np.cov(feats["fake"], rowvar=False, ddof=1)
    by_hand = (
        ((mu1 - mu2) ** 2).sum()
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()
    )
    assert ours == pytest.approx(by_hand, rel=1e-4) and ours > 1e-3


def test_frame_is_equals_the_formula_by_hand_and_is_seeded(inception_file):
    _, fake = two_sets()
    fi = FrameInception(weights=str(inception_file), fid=False, splits=3)
    assert fi.features(fake, "fake") is None  # IS only: no FID features
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    out = fi.compute_is()
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left untouched
    torch.manual_seed(123)  # another global RNG state must not move the split assignment
    assert fi.compute_is() == out
    with torch.no_grad():
        logits = fi.net._torch_fidelity_forward(fake.permute(0, 2, 1, 3, 4).flatten(0, 1))[0].double()
    probs = torch.softmax(logits, 1).numpy()
    torch.manual_seed(42)  # torchmetrics' split shuffle: torch.randperm under the recorded seed
    order = torch.randperm(6).numpy()
    scores = [
        np.exp((p * (np.log(p) - np.log(p.mean(0, keepdims=True)))).sum(1).mean())
        for p in (probs[order][0:2], probs[order][2:4], probs[order][4:6])  # torch.chunk(3): 2, 2, 2
    ]
    # the random network is unconfident (IS - 1 ~ 4e-5): torchmetrics works in float32 (~1e-7 of 1, and
    # reduction order varies with the thread count), so compare to 3e-7: under 1% of IS - 1
    assert (
        out["is_frame_mean"] == pytest.approx(np.mean(scores), abs=3e-7) and out["is_frame_mean"] - 1 > 1e-5
    )
    assert out["is_frame_std"] == pytest.approx(np.std(scores, ddof=1), abs=3e-7)  # torch.std: unbiased
    assert fi.describe()["is_shuffle_seed"] == 42 and fi.describe()["frames"] == {"real": 0, "fake": 6}
