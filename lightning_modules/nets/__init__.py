"""Networks: the spatiotemporal DiT (dit.py) and its attention layouts (attention.py)."""

from .dit import DIT_PRESETS, VideoDiT

__all__ = ["DIT_PRESETS", "VideoDiT"]
