"""Per-frame FID / IS (torchmetrics, local InceptionV3 file) and video IS (C3D TorchScript)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from lightning_modules.metrics.detectors import DetectorWeightsError
from lightning_modules.metrics.fid_is import FrameFIDIS, VideoIS, inception_score_from_probs

warnings.filterwarnings("ignore", message=".*torch.jit.*")


def test_inception_score_formula():
    k = 5
    one_hot = np.repeat(np.eye(k), 20, axis=0) * (1 - 1e-12) + 1e-12 / k  # confident and diverse: IS = k
    mean, std = inception_score_from_probs(one_hot, splits=1)
    assert mean == pytest.approx(k, rel=1e-6) and std == 0
    uniform = np.full((100, k), 1.0 / k)  # no confidence: IS = 1
    assert inception_score_from_probs(uniform, splits=10) == pytest.approx((1.0, 0.0))
    # the StyleGAN-V split assignment: RandomState(42) permutation, then 10 contiguous parts (by hand)
    probs = np.random.default_rng(0).dirichlet(np.ones(k), size=100)
    shuffled = probs[np.random.RandomState(42).permutation(len(probs))]
    scores = []
    for part in np.array_split(shuffled, 10):
        marginal = part.mean(0, keepdims=True)
        scores.append(np.exp((part * (np.log(part) - np.log(marginal))).sum(1).mean()))
    mean, std = inception_score_from_probs(probs)
    assert mean == pytest.approx(np.mean(scores), rel=1e-9) and std == pytest.approx(np.std(scores), rel=1e-9)
    unshuffled = [
        np.exp((q * (np.log(q) - np.log(q.mean(0)))).sum(1).mean()) for q in np.array_split(probs, 10)
    ]
    assert np.std(scores) != pytest.approx(
        np.std(unshuffled), rel=1e-6
    )  # the check can tell the shuffle apart


def test_video_is_random_stand_in_loads_through_the_torchscript_path(monkeypatch):
    monkeypatch.delenv("VIDEODIT_C3D_TORCHSCRIPT", raising=False)
    with pytest.raises(DetectorWeightsError, match="c3d_ucf101.pt"):
        VideoIS()
    vis = VideoIS(allow_random=True)
    g = torch.Generator().manual_seed(0)
    vis.update((torch.rand(4, 3, 16, 24, 24, generator=g) * 255).to(torch.uint8))
    out = vis.compute()
    assert out["is_video_splits"] == 4 and out["is_video_mean"] >= 1.0
    assert vis.describe()["calibrated"] is False and len(vis.describe()["sha256"]) == 64
    with pytest.raises(ValueError, match="16 frames"):
        vis.update(torch.zeros(1, 3, 9, 24, 24, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        vis.update(torch.zeros(1, 3, 16, 24, 24))


def test_frame_metrics_need_the_inception_file(monkeypatch):
    monkeypatch.delenv("VIDEODIT_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(DetectorWeightsError, match="weights-inception-2015-12-05"):
        FrameFIDIS()


@pytest.mark.slow
def test_frame_fid_and_is_with_random_inception():
    m = FrameFIDIS(allow_random=True, antialias=False)
    g = torch.Generator().manual_seed(0)
    m.update_real((torch.rand(1, 3, 2, 32, 32, generator=g) * 255).to(torch.uint8))
    m.update_fake((torch.rand(1, 3, 2, 32, 32, generator=g) * 255).to(torch.uint8))
    out = m.compute()
    assert set(out) == {"fid", "is_frame_mean", "is_frame_std"} and np.isfinite(out["fid"])
    d = m.describe()
    assert d["calibrated"] is False and d["antialias"] is False and d["frames"] == {"real": 2, "fake": 2}
    assert FrameFIDIS.__init__.__kwdefaults__["antialias"] is False  # TF1-compatible by default


@pytest.mark.slow
def test_frame_is_split_shuffle_is_seeded():
    m = FrameFIDIS(allow_random=True, fid=False, splits=3)
    g = torch.Generator().manual_seed(1)
    m.update_fake((torch.rand(2, 3, 6, 32, 32, generator=g) * 255).to(torch.uint8))
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    first = m.compute()
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left untouched
    torch.manual_seed(123)  # another global RNG state must not move the split assignment
    assert m.compute() == first
    assert m.describe()["is_shuffle_seed"] == 42
