"""Training callbacks: EMA weights (`EMA`, `use_ema`) and sample videos (`SampleVideos`)."""

from lightning_modules.callbacks.ema import EMA, use_ema
from lightning_modules.callbacks.samples import SampleVideos

__all__ = ["EMA", "SampleVideos", "use_ema"]
