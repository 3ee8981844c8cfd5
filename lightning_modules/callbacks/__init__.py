"""Training callbacks: EMA weights (`EMA`, `use_ema`), sample videos (`SampleVideos`) and
FVD / FID / IS during training (`FVDCallback`)."""

from lightning_modules.callbacks.ema import EMA, use_ema
from lightning_modules.callbacks.fvd import FVDCallback
from lightning_modules.callbacks.samples import SampleVideos

__all__ = ["EMA", "FVDCallback", "SampleVideos", "use_ema"]
