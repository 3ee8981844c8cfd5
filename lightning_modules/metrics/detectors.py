"""Resolve the FVD detector a protocol names to a local file, and call it the protocol's way.

Weight files come from a CLI flag or an environment variable; they are never downloaded. When a
file is missing we stop and say which file, what it is and where its reference publishes it,
unless `allow_random=True`, which writes a random-init stand-in to a temp file and loads it
through the very same path (results marked `calibrated: false`, printed as `uncalibrated`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import i3d
from .protocols import Protocol, check_uint8, preprocess_state_dict_input

ENV_I3D_TORCHSCRIPT = "VIDEODIT_I3D_TORCHSCRIPT"
ENV_I3D_STATE_DICT = "VIDEODIT_I3D_STATE_DICT"
ENV_C3D_TORCHSCRIPT = "VIDEODIT_C3D_TORCHSCRIPT"
ENV_INCEPTION = "VIDEODIT_INCEPTION_WEIGHTS"

WEIGHT_FILES = {
    "i3d_torchscript": dict(
        file="i3d_torchscript.pt",
        flag="--i3d-torchscript",
        env=ENV_I3D_TORCHSCRIPT,
        what="StyleGAN-V's TorchScript export of the TF-Hub I3D (Kinetics-400) used by the original FVD",
        where="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (linked from "
        "github.com/universome/stylegan-v, src/metrics/frechet_video_distance.py)",
    ),
    "i3d_state_dict": dict(
        file="i3d_pretrained_400.pt",
        flag="--i3d-state-dict",
        env=ENV_I3D_STATE_DICT,
        what="VideoGPT/TATS PyTorch state dict of the TF-Hub i3d-kinetics-400/1 weights",
        where="Google Drive id 1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT (github.com/wilson1yan/VideoGPT, "
        "videogpt/download.py; also used by github.com/songweige/TATS)",
    ),
    "c3d_torchscript": dict(
        file="c3d_ucf101.pt",
        flag="--c3d-torchscript",
        env=ENV_C3D_TORCHSCRIPT,
        what="StyleGAN-V's TorchScript C3D fine-tuned on UCF-101 (video Inception Score, isv2048_ucf)",
        where="https://www.dropbox.com/s/jxpu7avzdc9n97q/c3d_ucf101.pt (linked from github.com/universome/stylegan-v, "
        "src/metrics/video_inception_score.py)",
    ),
    "inception": dict(
        file="weights-inception-2015-12-05-6726825d.pth",
        flag="--inception-weights",
        env=ENV_INCEPTION,
        what="torch-fidelity's InceptionV3 (TF 2015-12-05 FID weights) used by torchmetrics FID/IS",
        where="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    ),
}


class DetectorWeightsError(FileNotFoundError):
    """A detector weight file is missing; the message says which, what it is and where to get it."""


def weights_path(kind: str, path: str | os.PathLike | None) -> Path | None:
    """The file for `kind` from the explicit path, else its environment variable; checked to exist."""
    info = WEIGHT_FILES[kind]
    chosen = path if path else os.environ.get(info["env"]) or None
    if chosen is None:
        return None
    chosen = Path(chosen).expanduser()
    if not chosen.is_file():
        raise DetectorWeightsError(
            f"{info['file']} not found at {chosen} (from {info['flag']} or ${info['env']})"
        )
    return chosen


def missing_weights_message(kind: str) -> str:
    info = WEIGHT_FILES[kind]
    return (
        f"missing detector weights: {info['file']} — {info['what']}. The reference publishes it at {info['where']}. "
        f"Download it yourself and pass {info['flag']} PATH or set ${info['env']}=PATH "
        "(or use --allow-random-detector for an uncalibrated smoke run)."
    )


def require_weights(kind: str, path: str | os.PathLike | None, *, allow_random: bool) -> Path | None:
    """Resolved path, None when allowed to fall back to random weights, else DetectorWeightsError."""
    found = weights_path(kind, path)
    if found is None and not allow_random:
        raise DetectorWeightsError(missing_weights_message(kind))
    return found


@dataclass
class FVDDetector:
    """A loaded I3D plus how the protocol calls it. `__call__`: uint8 (B, 3, T, H, W) -> (B, 400) float64.

    As a feature set (`name`, `dim`, `features(videos, side)`, `options()`) it is one of the real /
    fake statistics an evaluation accumulates (see `fvd.accumulate`).
    """

    name = "i3d"
    dim = i3d.NUM_CLASSES

    protocol: Protocol
    module: torch.nn.Module
    path: Path
    sha256: str
    calibrated: bool
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        check_uint8(videos)
        videos = videos.to(self.device)
        if self.protocol.detector == "i3d_torchscript":
            x = videos if self.protocol.rescale else i3d.rescale_uint8(videos)
            feats = self.module(
                x, rescale=self.protocol.rescale, resize=self.protocol.resize, return_features=True
            )
        else:
            feats = self.module(preprocess_state_dict_input(videos))
        return feats.to(torch.float64).cpu()

    def features(self, videos: torch.Tensor, side: str = "real") -> torch.Tensor:
        return self(videos)

    def options(self) -> dict:
        """What changes the features besides the clips and the file (the protocol's input is in the key)."""
        return {"name": self.name}

    def describe(self) -> dict:
        return {
            "kind": self.protocol.detector,
            "path": str(self.path),
            "sha256": self.sha256,
            "calibrated": self.calibrated,
        }


def random_detector_dir() -> str:
    """The one folder per machine for random stand-in detector files: a stand-in is written once and
    then reused, so its sha256 (TorchScript files differ byte-wise between processes) stays the same
    from run to run and a real-statistics cache keyed on it survives a restart."""
    return str(Path(tempfile.gettempdir()) / "videodit_random_detectors")


def load_fvd_detector(
    protocol: Protocol,
    *,
    i3d_torchscript: str | None = None,
    i3d_state_dict: str | None = None,
    allow_random: bool = False,
    device: str | torch.device = "cpu",
    random_dir: str | None = None,
) -> FVDDetector:
    """Load the detector file `protocol.detector` names (flag path, else env var), or a random stand-in."""
    kind = protocol.detector
    path = require_weights(
        kind, i3d_torchscript if kind == "i3d_torchscript" else i3d_state_dict, allow_random=allow_random
    )
    calibrated = path is not None
    if path is None:
        folder = Path(random_dir or tempfile.mkdtemp(prefix="videodit_random_i3d_"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"random_{WEIGHT_FILES[kind]['file']}"
        if not path.exists():
            save = i3d.save_torchscript if kind == "i3d_torchscript" else i3d.save_state_dict
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            save(i3d.random_i3d(seed=0), tmp)
            tmp.replace(path)  # atomic: concurrent runs sharing random_dir never read half a file
    device = torch.device(device)
    if kind == "i3d_torchscript":
        module = i3d.load_torchscript(path, map_location=device)
    else:
        module = i3d.load_state_dict_i3d(path, map_location=device).to(device)
    return FVDDetector(
        protocol=protocol,
        module=module,
        path=path,
        sha256=i3d.sha256_file(path),
        calibrated=calibrated,
        device=device,
    )
