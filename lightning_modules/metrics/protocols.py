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
SELECTIONS = ("first", "random", "windows")
CLIP_STARTS = ("first", "random")
CONVERSIONS = ("round", "truncate")
REAL_RESIZES = ("native", "train")


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
    # which real clips: first N videos in sorted key order, a seeded random N videos, or a seeded
    # random N of all (video, start) windows ("windows": TATS's shuffled VideoClips loader)
    real_selection: str = "first"
    clip_start: str = "random"  # where each real clip starts inside its video: frame 0, or seeded random
    min_length: str = (
        "span"  # keep videos with >= (n-1)*s+1 frames ("span") or >= n*s ("n_times_stride", Latte)
    )
    when_fewer: str = "use_all"  # fewer usable real/fake clips than asked: "use_all" (StyleGAN-V) or "error"
    fake_selection: str = "first"  # fake folders: first N sorted names, or a seeded random N
    real_resize: str = "native"  # real clips as decoded, or resized + centre-cropped to the fakes' size
    uint8_conversion: str = "round"  # float -> uint8 of fakes (and resized reals): x*127.5+128 or truncation
    seed: int = 0
    cov_divisor: str = "N"  # "N" (StyleGAN-V) or "N-1" (TF FVD, TATS)
    sqrtm: str = "scipy"  # "scipy" (scipy.linalg.sqrtm) or "eig" (eigenvalues, torchmetrics' way)
    paper_split: str = "train"  # the split the reference measured its real statistics on
    reference: str = ""  # where the protocol comes from

    def __post_init__(self):
        checks = {
            "detector": DETECTORS,
            "real_selection": SELECTIONS,
            "clip_start": CLIP_STARTS,
            "min_length": ("span", "n_times_stride"),
            "when_fewer": ("use_all", "error"),
            "fake_selection": ("first", "random"),
            "real_resize": REAL_RESIZES,
            "uint8_conversion": CONVERSIONS,
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
        """Frames from a clip's first to its last frame."""
        return (self.num_frames - 1) * self.stride + 1

    @property
    def min_video_frames(self) -> int:
        """Frames a source video must have to be kept."""
        return self.span if self.min_length == "span" else self.num_frames * self.stride

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["span"] = self.span
        d["min_video_frames"] = self.min_video_frames
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
            reference="StyleGAN-V (Skorokhodov et al. 2022) src/metrics/frechet_video_distance.py + metric_utils.py; "
            "the de-facto standard. Real: the first 2048 videos in dataset order (all of them when fewer), one "
            "16-frame clip each at a random offset, short videos discarded. Fake: 2048 clips of 16 frames.",
        ),
        Protocol(
            name="fvd2048_16f_latte",
            real_selection="random",
            stride=3,
            min_length="n_times_stride",
            fake_selection="random",
            reference="Latte (Ma et al. 2024) tools/metrics/frechet_video_distance.py + metric_utils.py + "
            "tools/utils/dataset.py: StyleGAN-V's code with real clips subsampled every 3rd frame from videos of "
            "at least 16*3 = 48 frames, and 2048 real videos and 2048 fakes drawn at random.",
        ),
        Protocol(
            name="fvd_tats",
            detector="i3d_state_dict",
            rescale=False,
            resize=False,
            real_selection="windows",
            clip_start="first",
            fake_selection="random",
            real_resize="train",
            uint8_conversion="truncate",
            cov_divisor="N-1",
            sqrtm="eig",
            reference="VideoGPT / TATS (Ge et al. 2022) scripts/sample_vqgan_transformer_short_videos.py, "
            "tats/data.py, tats/fvd/fvd.py: real = the first 2048 clips of the shuffled *training* loader "
            "(every 16-frame window of every video is a clip), resized and centre-cropped to the training "
            "resolution, back to uint8 by truncation; fakes truncated too; InceptionI3d + i3d_pretrained_400.pt, "
            "bilinear straight to 224x224, [-1, 1], covariance / (N-1) (TATS: float32 square root; we use float64).",
        ),
    )
}

# Where each preset's choices come from: repository, file, and the fact it states (facts only).
SOURCES = {
    "fvd2048_16f": {
        "detector": "universome/stylegan-v src/metrics/frechet_video_distance.py: i3d_torchscript.pt called with "
        "rescale=True, resize=True, return_features=True on uint8 BCTHW",
        "real_selection": "universome/stylegan-v src/metrics/metric_utils.py compute_feature_stats_for_dataset: "
        "num_items = min(len(dataset), max_items); item_subset = the first num_items indices (split over GPUs)",
        "when_fewer": "same function: min(len(dataset), max_items) -> every video when fewer than 2048",
        "clip_start": "stylegan-v dataset with load_n_consecutive and a random offset for real clips; fakes "
        "from a generator (or a gen dataset with load_n_consecutive_random_offset=False: the first frames)",
        "uint8_conversion": "metric_utils.py compute_feature_stats_for_generator: (img * 127.5 + 128).clamp(0, 255)"
        ".to(torch.uint8)",
        "cov_divisor": "metric_utils.py FeatureStats.get_mean_cov: covariance divided by N, float64; "
        "frechet_video_distance.py: scipy.linalg.sqrtm",
        "paper_split": "train: the dataset the metric is computed against is the training dataset (opts.dataset_kwargs)",
    },
    "fvd2048_16f_latte": {
        "stride": "Vchitect/Latte tools/metrics/frechet_video_distance.py: compute_fvd(..., "
        "realdata_subsample_factor=3, gendata_subsample_factor=1)",
        "min_length": "Vchitect/Latte tools/utils/dataset.py VideoFramesFolderDataset: discard_short_videos keeps "
        "videos with len(frames) >= load_n_consecutive * subsample_factor (16 * 3 = 48)",
        "clip_start": "tools/utils/dataset.py __getitem__: random offset in [0, len - n*s + s - 1] (inclusive), "
        "frames offset + arange(0, n*s, s); fakes (gen dataset): load_n_consecutive_random_offset=False",
        "real_selection": "tools/metrics/metric_utils.py compute_feature_stats_for_dataset: item_subset = "
        "random.sample(range(len(dataset)), num_items) ('randomly selected 2048 videos'), num_items = "
        "min(len(dataset), max_items); the same function reads the generated videos, so fakes are random too",
        "fake_selection": "same function, used for the generated set via rewrite_opts_for_gen_dataset",
        "paper_split": "train: Latte's maintainers compute FVD against the training split (REFERENCES.md)",
    },
    "fvd_tats": {
        "real_selection": "songweige/TATS scripts/sample_vqgan_transformer_short_videos.py: real embeddings from "
        "VideoData(args).train_dataloader() until 2048 clips, then [:2048]; tats/data.py VideoDataset: "
        "torchvision VideoClips(files, sequence_length) (every window is a clip), DataLoader shuffle=True",
        "real_resize": "tats/data.py preprocess: x/255, scale the shorter side to `resolution` (other side "
        "ceil(side * scale)), F.interpolate bilinear align_corners=False, centre crop at (size - resolution)//2, "
        "minus 0.5",
        "uint8_conversion": "sample script: real ((video + 0.5) * 255).byte() (truncation); fakes "
        "(samples * 255).astype(np.uint8) with samples = clamp(x, -0.5, 0.5) + 0.5 (truncation)",
        "fake_selection": "sample script: the generated set is permuted, np.random.permutation(n_total)[:n_sample]",
        "detector": "tats/fvd/fvd.py: InceptionI3d(400) with i3d_pretrained_400.pt, bilinear to 224x224, "
        "2x/255 - 1, covariance / (N-1)",
        "labels": "sample script (--class_cond --compute_fvd): n_sample // n_classes + 1 samples per class, "
        "then a random permutation keeps n_sample: uniform over classes (our --labels uniform)",
        "paper_split": "train: train_dataloader() above",
    },
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


def to_uint8(videos: torch.Tensor, conversion: str = "round") -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8.

    "round": StyleGAN-V's (x * 127.5 + 128).clamp(0, 255); "truncate": TATS's
    ((x + 1) / 2 * 255) converted by truncation (numpy `astype(uint8)` of values in [0, 255]).
    """
    if videos.dtype == torch.uint8:
        raise TypeError("videos are already uint8; to_uint8 expects float in [-1, 1]")
    if conversion == "truncate":
        return ((videos.float().clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8)
    if conversion != "round":
        raise ValueError(f"conversion must be one of {CONVERSIONS}, got {conversion!r}")
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
    "SOURCES",
    "Protocol",
    "check_clip_length",
    "check_uint8",
    "get_protocol",
    "preprocess_state_dict_input",
    "rescale_uint8",
    "resize_bilinear",
    "to_uint8",
]
