"""Per-frame FID / IS through torchmetrics (local InceptionV3 weights), and video IS with C3D.

* Per-frame FID and IS: every frame of the selected clips goes through torch-fidelity's
  InceptionV3 (torchmetrics' `NoTrainInceptionV3`, read from a local file). FID: 2048-d features
  into float64 `GaussianStats` and torchmetrics' formula (covariance / (N-1), eigenvalue square
  root), so the real side can be cached like I3D's; IS: torchmetrics' `InceptionScore` (10 splits)
  on the unbiased logits. `antialias` (torchmetrics >= 1.8 default True; False reproduces the
  TF1 resize of the original FID, our default) is recorded.
* Video IS (StyleGAN-V `isv2048_ucf`): the TorchScript C3D `c3d_ucf101.pt` called on uint8
  (B, 3, 16, H, W) returns UCF-101 class probabilities; scores are shuffled with
  RandomState(42), split 10 ways, and the mean / std of exp(KL) reported, as StyleGAN-V does.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .detectors import require_weights
from .frechet import GaussianStats, stats_distance
from .i3d import load_torchscript, sha256_file
from .protocols import check_uint8


# ---------------------------------------------------------------- per-frame FID / IS
def random_inception_weights(path: str | Path, *, seed: int = 0) -> Path:
    """Write a random-init torch-fidelity InceptionV3 state dict (uncalibrated stand-in)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    torch.manual_seed(seed)
    # construct without its weight download/load, then save the random init it built
    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None),
    ):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    # He-normal convolutions (the default init collapses every image to nearly the same features,
    # so FID between any two sets came out ~1e-12: useless even for smoke runs), logits layer too
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return Path(path)


FID_COV_DIVISOR = "N-1"  # torchmetrics FrechetInceptionDistance: covariance / (N - 1), float64 sums
FID_SQRTM = "eig"  # torchmetrics _compute_fid: sum of sqrt(eigvals(sigma1 @ sigma2)).real


def fid_from_stats(real: GaussianStats, fake: GaussianStats) -> float:
    """Per-frame FID from 2048-d Inception statistics, torchmetrics' convention (N-1, eigenvalues)."""
    return stats_distance(real, fake, divisor=FID_COV_DIVISOR, sqrtm=FID_SQRTM)


class FrameInception:
    """torch-fidelity InceptionV3 (through torchmetrics' `NoTrainInceptionV3`) on every frame of a clip.

    A feature set for FID (`name` "inception", 2048-d pool features, accumulated into the same
    float64 `GaussianStats` as I3D, so real statistics can be cached) and the collector of fake
    frames' unbiased logits for the per-frame Inception Score. One forward pass gives both.
    """

    name = "inception"
    dim = 2048

    def __init__(
        self,
        *,
        weights: str | None = None,
        allow_random: bool = False,
        fid: bool = True,
        inception_score: bool = True,
        antialias: bool = False,
        splits: int = 10,
        seed: int = 42,
        device: str | torch.device = "cpu",
    ):
        if not (fid or inception_score):
            raise ValueError("FrameInception needs fid and/or inception_score")
        path = require_weights("inception", weights, allow_random=allow_random)  # before the slow imports
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.calibrated = path is not None
        if path is None:
            path = random_inception_weights(
                Path(tempfile.mkdtemp(prefix="videodit_random_inception_")) / "inception.pth"
            )
        self.path, self.sha256, self.antialias, self.splits = Path(path), sha256_file(path), antialias, splits
        self.seed = seed  # torchmetrics' InceptionScore shuffles with torch.randperm: seeded here
        self.fid, self.inception_score = fid, inception_score
        self.outputs = (["2048"] if fid else []) + (["logits_unbiased"] if inception_score else [])
        self.device = torch.device(device)
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=self.outputs,
            feature_extractor_weights_path=str(path),
            antialias=antialias,
        ).to(self.device)
        self.logits: list[torch.Tensor] = []
        self.frames = {"real": 0, "fake": 0}

    @staticmethod
    def _frames(videos: torch.Tensor) -> torch.Tensor:
        check_uint8(videos)
        return videos.permute(0, 2, 1, 3, 4).flatten(0, 1)  # (B*T, 3, H, W)

    @torch.no_grad()
    def features(self, videos: torch.Tensor, side: str = "real") -> torch.Tensor | None:
        """uint8 (B, 3, T, H, W) -> (B*T, 2048) float64 pool features (None without FID); fake frames'
        logits are kept for IS."""
        frames = self._frames(videos).to(self.device)
        # all requested outputs in one pass (the public forward returns only the first)
        out = dict(zip(self.outputs, self.net._torch_fidelity_forward(frames)))
        self.frames[side] += len(frames)
        if side == "fake" and self.inception_score:
            self.logits.append(out["logits_unbiased"].float().cpu())
        return out["2048"].to(torch.float64).cpu() if self.fid else None

    def update_fake(self, videos: torch.Tensor) -> None:
        """IS only: collect the fake frames' logits."""
        self.features(videos, side="fake")

    def reset_fake(self) -> None:
        self.logits, self.frames["fake"] = [], 0

    def options(self) -> dict:
        return {"name": self.name, "antialias": self.antialias, "frames": "every frame of each clip"}

    def compute_is(self) -> dict:
        """torchmetrics' InceptionScore on the collected logits, its split shuffle seeded."""
        from torchmetrics.image.inception import InceptionScore

        metric = InceptionScore(feature=nn.Identity(), splits=self.splits)
        metric.update(torch.cat(self.logits))
        with torch.random.fork_rng(devices=[]):  # seeded split assignment; the global RNG is left as it was
            torch.manual_seed(self.seed)
            mean, std = metric.compute()
        return {"is_frame_mean": float(mean), "is_frame_std": float(std)}

    def describe(self) -> dict:
        return {
            "kind": "inception_v3 (torch-fidelity, via torchmetrics)",
            "path": str(self.path),
            "sha256": self.sha256,
            "calibrated": self.calibrated,
            "antialias": self.antialias,
            "outputs": list(self.outputs),
            "fid_convention": f"covariance / ({FID_COV_DIVISOR}), square root: {FID_SQRTM} (torchmetrics)",
            "splits": self.splits,
            "is_shuffle_seed": self.seed,
            "frames": dict(self.frames),
        }


# ---------------------------------------------------------------- video IS (C3D)
class RandomC3DStandIn(nn.Module):
    """NOT C3D: a tiny random 3D CNN with the TorchScript C3D's call signature (uint8 in, 101 probs
    out), scripted to a file so uncalibrated smoke runs exercise the real loading path."""

    def __init__(self, *, num_classes: int = 101):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv3d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
            nn.Linear(32, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # uint8 (B, 3, T, H, W) -> (B, 101)
        x = x.to(torch.float32) / 127.5 - 1.0
        x = F.interpolate(x, size=[x.shape[2], 112, 112], mode="trilinear", align_corners=False)
        return F.softmax(self.net(x), dim=1)


def inception_score_from_probs(probs: np.ndarray, *, splits: int = 10) -> tuple[float, float]:
    """StyleGAN-V's IS: shuffle with RandomState(42), `splits` parts, mean and std of exp(mean KL)."""
    probs = np.array(probs, dtype=np.float64)
    np.random.RandomState(42).shuffle(probs)
    n = len(probs)
    scores = []
    for i in range(splits):
        part = probs[i * n // splits : (i + 1) * n // splits]
        kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


class VideoIS:
    """Video Inception Score with the C3D TorchScript file; collects class probabilities of fakes."""

    num_frames = 16

    def __init__(
        self,
        *,
        weights: str | None = None,
        allow_random: bool = False,
        splits: int = 10,
        device: str | torch.device = "cpu",
    ):
        path = require_weights("c3d_torchscript", weights, allow_random=allow_random)
        self.calibrated = path is not None
        if path is None:
            torch.manual_seed(0)
            path = Path(tempfile.mkdtemp(prefix="videodit_random_c3d_")) / "random_c3d_ucf101.pt"
            torch.jit.save(torch.jit.script(RandomC3DStandIn().eval()), str(path))
        self.path, self.sha256, self.splits = Path(path), sha256_file(path), splits
        self.device = torch.device(device)
        self.module = load_torchscript(path, map_location=self.device)
        self.probs: list[np.ndarray] = []

    @torch.no_grad()
    def update(self, videos: torch.Tensor) -> None:  # uint8 (B, 3, T, H, W)
        check_uint8(videos)
        if videos.shape[2] < self.num_frames:
            raise ValueError(
                f"video IS (C3D, isv2048_ucf) uses {self.num_frames} frames; got clips of {videos.shape[2]}"
            )
        probs = self.module(videos[:, :, : self.num_frames].to(self.device))
        self.probs.append(probs.double().cpu().numpy())

    def compute(self) -> dict:
        probs = np.concatenate(self.probs)
        splits = min(self.splits, len(probs))
        mean, std = inception_score_from_probs(probs, splits=splits)
        return {"is_video_mean": mean, "is_video_std": std, "is_video_splits": splits}

    def describe(self) -> dict:
        return {
            "kind": "c3d_ucf101 TorchScript" if self.calibrated else "random stand-in (not C3D)",
            "path": str(self.path),
            "sha256": self.sha256,
            "calibrated": self.calibrated,
            "videos": int(sum(len(p) for p in self.probs)),
            "splits": self.splits,
        }
