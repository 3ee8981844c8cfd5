"""`make gpu-check` cannot rot: its CPU-runnable parts run here (`--device cpu --dry-run`): the gpu
tests collect, the debug and demo configs fit in bf16-mixed with clipping, and the attention
backends agree with sdpa on a packed batch; what needs CUDA is skipped with a reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--dry-run", "--out", str(out), "--work", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checks = json.loads(out.read_text())["checks"]
    assert set(checks) == {
        "gpu_tests",
        "fit_debug",
        "fit_demo",
        "attention",
        "fit_compile",
        "fsdp",
        "train_step_bench",
    }
    for name in ("gpu_tests", "fit_debug", "fit_demo", "attention"):
        assert checks[name]["status"] == "pass", (name, checks[name])
    backends = checks["attention"]["backends"]
    assert backends["sdpa_dense"]["rel_out"] < 1e-4 and backends["flex"]["rel_out"] < 1e-4
    assert all(
        checks[n]["status"] == "skip" and checks[n]["numbers"]
        for n in ("fit_compile", "fsdp", "train_step_bench")
    )
    assert "check" in done.stdout and "pass" in done.stdout  # the printed table
