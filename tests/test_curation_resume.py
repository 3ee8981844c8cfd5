"""Never lose work: SIGKILL at random points then rerun == one uninterrupted run; the local
process pool and Ray give identical outputs. Both slow (real processes, a Ray instance)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_curation_pipeline import ARGS, snapshot  # tests/ is on sys.path (pytest prepend mode)


def cli(raw, out, *extra) -> list[str]:
    return [sys.executable, "-m", "curation", f"raw={raw}", f"out={out}", *ARGS, "workers=2", *extra]


def run_to_end(cmd) -> float:
    t0 = time.time()
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return time.time() - t0


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    from curation.synthetic import generate

    raw = tmp_path_factory.mktemp("raw6")
    generate(raw, videos=6, seed=7, short_side=96, min_seconds=3.0, max_seconds=5.0)
    return raw


def start_and_kill(cmd, delay: float) -> bool:
    """Run `cmd`, SIGKILL it (and its pool workers) after `delay` s; True if it was still running."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(delay)
    alive = proc.poll() is None
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)  # mid-write, wherever it is
    proc.wait()
    return alive


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_equals_uninterrupted(six, tmp_path):
    """Six random kill points, each on a fresh OUT: kill, rerun and kill again at half the delay,
    then rerun to the end; every OUT must equal the uninterrupted run."""
    ref = tmp_path / "ref"
    duration = run_to_end(cli(six, ref))
    want = snapshot(ref)
    rng = np.random.default_rng(0)
    kills = midway = 0
    for i, delay in enumerate(sorted(rng.uniform(0.1, 0.85, 6) * duration)):
        out = tmp_path / f"killed{i}"
        kills += start_and_kill(cli(six, out), delay)
        sealed = len(list(out.glob("work/*/record.json")))
        midway += 0 < sealed and not (out / "report.json").exists()  # killed with work half done
        start_and_kill(cli(six, out), delay / 2)  # a resumed run killed too
        run_to_end(cli(six, out))
        assert snapshot(out) == want, f"kill point {i} ({delay:.2f} s of {duration:.2f} s)"
    assert kills >= 5 and midway >= 2, f"{kills} runs killed, {midway} of them with sources half done"


def test_local_pool_and_ray_give_identical_outputs(synthetic_dir, tmp_path):
    pytest.importorskip("ray")
    run_to_end(cli(synthetic_dir, tmp_path / "local", "executor=local"))
    run_to_end(cli(synthetic_dir, tmp_path / "ray", "executor=ray", "ray.num_cpus=2"))
    a, b = snapshot(tmp_path / "local"), snapshot(tmp_path / "ray")
    assert a["clips"] and a == b


def _dies_on_b(task: int) -> int:
    if task == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # a decoder segfault, as far as the pool can tell
    return task * 10


@pytest.mark.slow
def test_a_worker_that_dies_costs_only_its_own_source():
    from curation.executors import run_local

    got = sorted(
        run_local(_dies_on_b, [0, 1, 2, 3], workers=2, on_crash=lambda t, msg: (t, msg)),
        key=lambda r: r[0] if isinstance(r, tuple) else r / 10,
    )
    assert got[0] == 0 and got[2:] == [20, 30]
    assert got[1][0] == 1 and "worker crashed" in got[1][1]
