"""Video generation metrics: FVD under named protocols, per-frame FID / IS, video IS.

Entry points: `frechet.GaussianStats` / `frechet_distance` (float64, mergeable), `protocols.PROTOCOLS`
(`fvd2048_16f`, `fvd2048_16f_latte`, `fvd_tats`), `detectors.load_fvd_detector` (local weight files
or `allow_random`), `fvd.real_statistics` / `fake_statistics_from_*` (one float64 statistics per
feature set: I3D for FVD, Inception for FID), `conditioning` (labels / prompts of evaluation
samples), and the CLI `python -m lightning_modules.evaluate`.
"""

from lightning_modules.metrics.detectors import DetectorWeightsError, FVDDetector, load_fvd_detector
from lightning_modules.metrics.frechet import GaussianStats, frechet_distance, stats_distance
from lightning_modules.metrics.i3d import InceptionI3d
from lightning_modules.metrics.protocols import PROTOCOLS, Protocol, get_protocol

__all__ = [
    "PROTOCOLS",
    "DetectorWeightsError",
    "FVDDetector",
    "GaussianStats",
    "InceptionI3d",
    "Protocol",
    "frechet_distance",
    "get_protocol",
    "load_fvd_detector",
    "stats_distance",
]
