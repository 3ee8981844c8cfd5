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
    # the StyleGAN-V shuffle (RandomState(42)) makes the split assignment fixed: same input, same output
    probs = np.random.default_rng(0).dirichlet(np.ones(k), size=100)
    assert inception_score_from_probs(probs) == inception_score_from_probs(probs.copy())


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
