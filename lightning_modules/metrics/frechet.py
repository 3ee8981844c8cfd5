"""Fréchet distance between Gaussians fitted to detector features.

Statistics are accumulated in float64 with Chan et al.'s pairwise update (count, mean, centred
scatter), so batches, workers and DDP ranks merge exactly and the result does not depend on how
the stream was split. We write our own instead of torchmetrics' FID state because the FVD
protocols differ in the covariance divisor (StyleGAN-V: N, TF/TATS: N-1) and we need both
square-root methods side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

COV_DIVISORS = ("N", "N-1")
SQRTM_METHODS = ("scipy", "eig")


@dataclass
class GaussianStats:
    """Streaming float64 mean and covariance of feature vectors of width `dim`."""

    dim: int
    count: int = 0
    mean: np.ndarray | None = None  # (D,)
    scatter: np.ndarray | None = None  # (D, D): sum of (x - mean)(x - mean)^T

    def __post_init__(self):
        if self.mean is None:
            self.mean = np.zeros(self.dim, dtype=np.float64)
        if self.scatter is None:
            self.scatter = np.zeros((self.dim, self.dim), dtype=np.float64)

    def update(self, features) -> GaussianStats:
        """Add a batch of features (B, D) (numpy or torch, any float dtype)."""
        if isinstance(features, torch.Tensor):
            features = features.detach().to("cpu", torch.float64).numpy()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must have shape (B, {self.dim}), got {x.shape}")
        if len(x) == 0:
            return self
        batch_mean = x.mean(axis=0)
        centred = x - batch_mean
        return self.merge(GaussianStats(self.dim, len(x), batch_mean, centred.T @ centred))

    def merge(self, other: GaussianStats) -> GaussianStats:
        """Fold `other` into self (in place) and return self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of width {other.dim} into width {self.dim}")
        if other.count == 0:
            return self
        n = self.count + other.count
        delta = other.mean - self.mean  # (D,)
        self.scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.count * other.count / n)
        self.mean = self.mean + delta * (other.count / n)
        self.count = n
        return self

    def cov(self, divisor: str = "N") -> np.ndarray:
        """Covariance (D, D) divided by N (StyleGAN-V) or N-1 (TF FVD, TATS, torchmetrics FID)."""
        if divisor not in COV_DIVISORS:
            raise ValueError(f"divisor must be one of {COV_DIVISORS}, got {divisor!r}")
        denom = self.count - (1 if divisor == "N-1" else 0)
        if denom <= 0:
            raise ValueError(f"need more than {self.count} samples for a covariance with divisor {divisor}")
        return self.scatter / denom

    def all_gather(self) -> GaussianStats:
        """Merge the statistics of every DDP rank (in rank order) and return the global ones.

        A no-op when torch.distributed is not initialised. Every rank must call it.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self
        world = torch.distributed.get_world_size()
        device = _collective_device()
        flat = torch.from_numpy(np.concatenate([[float(self.count)], self.mean, self.scatter.ravel()]))
        flat = flat.to(device) if device is not None else flat
        gathered = [torch.empty_like(flat) for _ in range(world)]
        torch.distributed.all_gather(gathered, flat)
        merged = GaussianStats(self.dim)
        for part in gathered:
            part = part.cpu().numpy()
            merged.merge(
                GaussianStats(
                    self.dim,
                    int(part[0]),
                    part[1 : 1 + self.dim],
                    part[1 + self.dim :].reshape(self.dim, self.dim),
                )
            )
        return merged

    def broadcast(self, src: int = 0) -> GaussianStats:
        """Every rank gets rank `src`'s statistics (a no-op without torch.distributed)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self
        device = _collective_device()
        flat = torch.from_numpy(np.concatenate([[float(self.count)], self.mean, self.scatter.ravel()]))
        flat = flat.to(device) if device is not None else flat
        torch.distributed.broadcast(flat, src=src)
        part = flat.cpu().numpy()
        return GaussianStats(
            self.dim, int(part[0]), part[1 : 1 + self.dim], part[1 + self.dim :].reshape(self.dim, self.dim)
        )

    def state(self) -> dict:
        return {"dim": self.dim, "count": self.count, "mean": self.mean, "scatter": self.scatter}

    @classmethod
    def from_state(cls, state: dict) -> GaussianStats:
        return cls(
            int(state["dim"]),
            int(state["count"]),
            np.asarray(state["mean"], np.float64),
            np.asarray(state["scatter"], np.float64),
        )


def _collective_device() -> torch.device | None:
    """NCCL collectives need CUDA tensors; gloo (CPU) takes host tensors."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray, method: str = "scipy") -> float:
    """tr(sqrt(cov1 @ cov2)) in float64.

    scipy: `scipy.linalg.sqrtm` of the product, real part of the trace (StyleGAN-V, pytorch-fid).
    eig: sum of square roots of the product's eigenvalues, real part (torchmetrics >= 1.4);
    cheaper, and immune to sqrtm's failures on singular products.
    """
    prod = np.asarray(cov1, np.float64) @ np.asarray(cov2, np.float64)
    if method == "scipy":
        return float(np.real(np.trace(scipy.linalg.sqrtm(prod))))
    if method == "eig":
        eigenvalues = np.linalg.eigvals(prod).astype(np.complex128)
        return float(np.real(np.sqrt(eigenvalues)).sum())
    raise ValueError(f"sqrtm method must be one of {SQRTM_METHODS}, got {method!r}")


def frechet_distance(mu1, cov1, mu2, cov2, *, sqrtm: str = "scipy") -> float:
    """||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 sqrt(cov1 cov2)), computed in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, cov {cov1.shape} vs {cov2.shape}")
    mean_term = float(np.square(mu1 - mu2).sum())
    return mean_term + float(np.trace(cov1) + np.trace(cov2)) - 2.0 * trace_sqrt_product(cov1, cov2, sqrtm)


def stats_distance(a: GaussianStats, b: GaussianStats, *, divisor: str = "N", sqrtm: str = "scipy") -> float:
    """Fréchet distance between two accumulated feature sets."""
    return frechet_distance(a.mean, a.cov(divisor), b.mean, b.cov(divisor), sqrtm=sqrtm)
