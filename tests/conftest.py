"""Shared fixtures: small synthetic footage with ground truth (see curation/synthetic.py).

Session-scoped so the footage is generated once per test run. Sizes are small (short side 96,
3-6 s) to keep the fast suite fast; tests that need more call `generate()` themselves.
"""

from __future__ import annotations

import json
import os

# Before numpy/scipy load: a multi-threaded OpenBLAS on 2 busy cores made the float64 sqrtm
# tests ~10x slower (oversubscription); one thread is fastest for their matrix sizes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores on CI: keep torch from oversubscribing them when tests spawn workers.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SMALL = dict(videos=4, seed=0, short_side=96, min_seconds=3.0, max_seconds=6.0)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """Directory with 4 small synthetic videos, their sidecars and manifest.json."""
    from curation.synthetic import generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(out, **SMALL)
    return out


@pytest.fixture(scope="session")
def synthetic_manifest(synthetic_dir):
    return json.loads((synthetic_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def bad_dir(tmp_path_factory):
    """The same 4 small videos plus the bad-input corpus under bad/."""
    from curation.synthetic import generate

    out = tmp_path_factory.mktemp("synthetic_bad")
    generate(out, bad=True, **SMALL)
    return out


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
