"""Real-statistics cache: compute the held-out set's feature statistics once per protocol.

An `.npz` holds count, mean and centred scatter (float64) plus a JSON `key` naming what they were
computed from: the selected real clips (keys, start frames, sizes), the protocol fields that
change real features, and the detector file's sha256. Loading with a different key is an error,
never a silent reuse: stale statistics are a classic source of unreproducible FVD.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .frechet import GaussianStats

# protocol fields that do not change the real statistics (fake side or final formula only)
_NOT_REAL = ("name", "num_fake", "fake_selection", "cov_divisor", "sqrtm", "paper_split", "reference")


class StatsCacheMismatch(ValueError):
    """The cache file was computed for another real set, protocol or detector."""


def cache_key(
    *, real_clips_sha256: str, protocol: dict, detector_sha256: str, features: dict | None = None
) -> dict:
    """What real statistics were computed from; `features` names the feature set and its options
    (e.g. {"name": "inception", "antialias": False}) and the real-clip transform."""
    key = {
        "real_clips_sha256": real_clips_sha256,
        "protocol": {k: v for k, v in protocol.items() if k not in _NOT_REAL},
        "detector_sha256": detector_sha256,
    }
    if features is not None:
        key["features"] = features
    return key


def cache_path(base: str | Path, name: str) -> Path:
    """One file per feature set: `real.npz` -> `real.i3d.npz`, `real.inception.npz`."""
    base = Path(base)
    stem = base.name[: -len(".npz")] if base.name.endswith(".npz") else base.name
    return base.with_name(f"{stem}.{name}.npz")


def save_stats(path: str | Path, stats: GaussianStats, key: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        count=np.int64(stats.count),
        mean=stats.mean,
        scatter=stats.scatter,
        key=np.array(json.dumps(key, sort_keys=True)),
    )
    tmp.replace(path)


def load_stats(path: str | Path, key: dict) -> GaussianStats | None:
    """The cached statistics at `path` if computed for `key`; None if the file is absent.

    Raises StatsCacheMismatch naming the differing fields otherwise.
    """
    path = Path(path)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        stored = json.loads(str(data["key"]))
        if stored != json.loads(json.dumps(key, sort_keys=True)):
            raise StatsCacheMismatch(
                f"real statistics cache {path} was computed for something else; differs in "
                f"{_diff(stored, key)}. Delete it or pass another cache path."
            )
        mean = data["mean"]
        return GaussianStats(
            len(mean), int(data["count"]), mean.astype(np.float64), data["scatter"].astype(np.float64)
        )


def _diff(a: dict, b: dict, prefix: str = "") -> str:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = _diff(va, vb, prefix + k + ".")
            if sub:
                out.append(sub)
        elif va != vb:
            out.append(f"{prefix}{k} (cached {va!r}, now {vb!r})")
    return "; ".join(out)
