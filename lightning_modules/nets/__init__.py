"""Networks: the spatiotemporal DiT (dit.py, blocks.py), its attention layouts (attention.py),
positions (positions.py) and initialisation from an image DiT (init_from.py)."""

from .dit import DIT_PRESETS, VideoDiT
from .init_from import InitReport, init_from_image_dit, load_image_dit_checkpoint

__all__ = ["DIT_PRESETS", "InitReport", "VideoDiT", "init_from_image_dit", "load_image_dit_checkpoint"]
