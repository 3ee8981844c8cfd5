"""Named FVD protocols: every choice that moves the number, in one recorded object.

Published FVDs are only comparable under the same protocol (REFERENCES.md, Evaluation): the I3D
port and how it is called, the resize, the sample counts, how real clips are chosen, the
temporal stride, and the covariance divisor. A `Protocol` pins all of them; `as_dict()` goes
into every report and into the key of the real-statistics cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .i3d import I3D_SIZE, MIN_FRAMES, rescale_uint8

DETECTORS = ("i3d_torchscript", "i3d_state_dict")
SELECTIONS = ("first", "random")
CLIP_STARTS = ("first", "random")


@dataclass(frozen=True)
class Protocol:
    name: str
    detector: str = "i3d_torchscript"  # which file: StyleGAN-V TorchScript or VideoGPT/TATS state dict
    # how the detector sees the clip. torchscript: flags passed to the file (uint8 in, the file
    # rescales to [-1, 1] and resizes trilinearly to 224 itself). state_dict: we resize every frame
    # bilinearly (align_corners=False, no antialias) straight to 224x224, then 2x/255 - 1.
    rescale: bool = True
    resize: bool = True
    num_real: int = 2048
    num_fake: int = 2048
    num_frames: int = 16
    stride: int = 1  # temporal subsampling: frames start, start+stride, ...
    real_selection: str = "first"  # which real videos: first N in sorted key order, or seeded random N
    clip_start: str = "random"  # where each real clip starts inside its video: frame 0, or seeded random
    seed: int = 0
    cov_divisor: str = "N"  # "N" (StyleGAN-V) or "N-1" (TF FVD, TATS)
    sqrtm: str = "scipy"  # "scipy" (scipy.linalg.sqrtm) or "eig" (eigenvalues, torchmetrics' way)
    reference: str = ""  # where the protocol comes from

    def __post_init__(self):
        checks = {
            "detector": DETECTORS,
            "real_selection": SELECTIONS,
            "clip_start": CLIP_STARTS,
            "cov_divisor": ("N", "N-1"),
            "sqrtm": ("scipy", "eig"),
        }
        for field, allowed in checks.items():
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"protocol {self.name!r}: {field} must be one of {allowed}, got {getattr(self, field)!r}"
                )
        if self.num_frames < MIN_FRAMES:
            raise ValueError(
                f"protocol {self.name!r}: I3D needs num_frames >= {MIN_FRAMES}, got {self.num_frames}"
            )
        if self.stride < 1 or self.num_real < 2 or self.num_fake < 2:
            raise ValueError(f"protocol {self.name!r}: need stride >= 1 and at least 2 real and 2 fake clips")

    @property
    def span(self) -> int:
        """Frames a source video must have to give one clip."""
        return (self.num_frames - 1) * self.stride + 1

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["span"] = self.span
        d["input"] = (
            f"uint8 BCTHW, detector(x, rescale={self.rescale}, resize={self.resize}, return_features=True)"
            if self.detector == "i3d_torchscript"
            else f"uint8 -> float, bilinear (align_corners=False) to {I3D_SIZE}x{I3D_SIZE}, 2x/255-1"
        )
        return d

    def override(self, **changes) -> Protocol:
        """A custom protocol: this preset with `changes` (None values ignored), renamed when it differs."""
        changes = {k: v for k, v in changes.items() if v is not None and getattr(self, k) != v}
        if not changes:
            return self
        parts = ",".join(f"{k}={v}" for k, v in sorted(changes.items()))
        return dataclasses.replace(self, name=f"custom({self.name}:{parts})", **changes)


PROTOCOLS = {
    p.name: p
    for p in (
        Protocol(
            name="fvd2048_16f",
            reference="StyleGAN-V src/metrics/frechet_video_distance.py (Skorokhodov et al. 2022); the de-facto "
            "standard. Real: first 2048 videos in sorted order, one 16-frame clip each at a random offset, "
            "short videos discarded. Fake: 2048 clips of 16 frames.",
        ),
        Protocol(
            name="fvd2048_16f_latte",
            real_selection="random",
            stride=3,
            reference="Latte (Ma et al. 2024): StyleGAN-V's code with real clips subsampled every 3rd frame "
            "and 2048 real videos drawn at random.",
        ),
        Protocol(
            name="fvd_tats",
            detector="i3d_state_dict",
            rescale=False,
            resize=False,
            clip_start="first",
            cov_divisor="N-1",
            sqrtm="eig",
            reference="VideoGPT / TATS tats/fvd/fvd.py: InceptionI3d + i3d_pretrained_400.pt, bilinear straight "
            "to 224x224, [-1, 1], covariance / (N-1) (TATS: float32 SVD square root; we use float64).",
        ),
    )
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise KeyError(
            f"unknown FVD protocol {name!r}; known: {sorted(PROTOCOLS)} (override fields for a custom one)"
        )
    return PROTOCOLS[name]


def check_uint8(videos: torch.Tensor, what: str = "videos") -> torch.Tensor:
    """Refuse anything but uint8 BCTHW: float input here is the double-normalisation bug.

    Passing [-1, 1] (or [0, 1]) floats where [0, 255] uint8 is expected makes every clip nearly
    black after rescaling, and FVD comes out absurdly low.
    """
    if videos.dtype != torch.uint8:
        raise TypeError(
            f"{what} must be uint8 in [0, 255] with shape (B, 3, T, H, W), got {videos.dtype}; convert "
            "generator output in [-1, 1] with `to_uint8(x)` first (feeding floats here would normalise twice)"
        )
    if videos.ndim != 5 or videos.shape[1] != 3:
        raise ValueError(f"{what} must have shape (B, 3, T, H, W), got {tuple(videos.shape)}")
    return videos


def to_uint8(videos: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8, StyleGAN-V's rounding: (x * 127.5 + 128).clamp(0, 255)."""
    if videos.dtype == torch.uint8:
        raise TypeError("videos are already uint8; to_uint8 expects float in [-1, 1]")
    return (videos.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def check_clip_length(videos: torch.Tensor, protocol: Protocol, what: str = "videos") -> None:
    if videos.shape[2] != protocol.num_frames:
        raise ValueError(
            f"{what} have {videos.shape[2]} frames but protocol {protocol.name!r} compares clips of exactly "
            f"{protocol.num_frames} frames; generate/select {protocol.num_frames} frames (stride {protocol.stride}) "
            "or choose a protocol with fewer frames"
        )


def resize_bilinear(videos: torch.Tensor, size: int = I3D_SIZE) -> torch.Tensor:
    """TATS/VideoGPT resize: every frame bilinearly (align_corners=False) straight to size x size.

    (B, 3, T, H, W) uint8 -> (B, 3, T, size, size) float32 in [0, 255]; non-square frames are
    stretched, not cropped, as in the reference.
    """
    b = videos.shape[0]
    frames = videos.to(torch.float32).permute(0, 2, 1, 3, 4).flatten(0, 1)  # (B*T, 3, H, W)
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    return frames.unflatten(0, (b, -1)).permute(0, 2, 1, 3, 4)  # (B, 3, T, size, size)


def preprocess_state_dict_input(videos: torch.Tensor) -> torch.Tensor:
    """uint8 BCTHW -> the float [-1, 1] 224x224 input of `InceptionI3d` under the TATS protocol."""
    check_uint8(videos)
    return resize_bilinear(videos) * (2.0 / 255.0) - 1.0


__all__ = [
    "PROTOCOLS",
    "Protocol",
    "check_clip_length",
    "check_uint8",
    "get_protocol",
    "preprocess_state_dict_input",
    "rescale_uint8",
    "resize_bilinear",
    "to_uint8",
]
