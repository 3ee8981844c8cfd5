"""`make demo` at reduced size (--quick): every stage runs, writes what the README promises, and the
trained model's FVD falls well below the untrained model's (same detector, protocol and sampler)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_demo_learns_end_to_end(tmp_path):
    out = tmp_path / "demo"
    subprocess.run(
        [sys.executable, "-m", "lightning_modules.demo", "--out", str(out), "--quick"], cwd=ROOT, check=True
    )
    metrics = json.loads((out / "metrics.json").read_text())
    fvd = metrics["fvd"]
    assert metrics["calibrated"] is False
    assert set(fvd) >= {"untrained", "final", "real_vs_real"}
    assert fvd["real_vs_real"] < fvd["final"] < 0.7 * fvd["untrained"], fvd
    train = metrics["train"]
    assert train["steps"] == 150 and train["final_loss"] < 0.6 * train["first_loss"]
    for name in ("loss.png", "samples/grid.png"):
        Image.open(out / name).verify()
    assert Image.open(out / "samples/grid.gif").n_frames == 10
    assert sorted(p.name for p in (out / "samples").glob("*.mp4"))[:1] == ["predict_000.mp4"]
    assert (out / "curated/report.html").stat().st_size > 0
