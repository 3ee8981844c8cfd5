"""Diffusion math with no parameters: objectives (Gaussian diffusion, rectified flow), samplers and
VDT space-time masks. The network is always an argument."""

from .flow import RectifiedFlow
from .gaussian import GaussianDiffusion
from .masks import (
    MaskGenerator,
    backward_mask,
    frames_mask,
    image_to_video_mask,
    interpolate_mask,
    predict_mask,
    unconditional_mask,
)
from .samplers import sample

__all__ = [
    "GaussianDiffusion",
    "MaskGenerator",
    "RectifiedFlow",
    "backward_mask",
    "frames_mask",
    "image_to_video_mask",
    "interpolate_mask",
    "predict_mask",
    "sample",
    "unconditional_mask",
]
