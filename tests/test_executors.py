"""The scale-out scheduler (curation/executors.py): bounded in-flight work, completion order,
per-task time limits, retries of dying workers, on a local process pool and on Ray actors.

Task functions live at module level so spawned processes and Ray actors can import them.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from curation.executors import run_local, run_ray


def _sleepy(task):
    """task = (i, seconds): sleep, return i (a hung decoder when seconds is large)."""
    i, seconds = task
    time.sleep(seconds)
    return i


def _crash_once(task):
    """task = (i, marker dir): task 1 kills its worker the first time only (a transient OOM kill)."""
    i, marker = task
    flag = Path(marker) / f"crashed{i}"
    if i == 1 and not flag.exists():
        flag.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def _always_crash_on_1(task):
    if task == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # a decoder segfault, as far as the pool can tell
    return task


def _raises_on_2(task):
    if task == 2:
        raise ValueError("bad input 2")
    return task


def _dies_after_returning(task):
    """Returns its result, then its process dies (exit soon after: the driver has the result)."""
    import threading

    threading.Timer(0.05, os._exit, (1,)).start()
    return task


def _slowly(items, pause):
    for t in items:
        time.sleep(pause)  # the next task reaches a worker only after the previous one died
        yield t


# A replacement worker dies while starting once (spawned processes import this module): the
# marker is made by _crash_and_poison just before its worker is killed.
_POISON = os.environ.get("CURATION_TEST_POISON")
if _POISON and os.path.exists(_POISON) and os.environ.get("CURATION_TEST_DRIVER") != str(os.getpid()):
    os.remove(_POISON)
    os._exit(3)


def _crash_and_poison(task):
    i, marker = task
    flag = Path(marker) / f"crashed{i}"
    if i == 1 and not flag.exists():
        flag.touch()
        Path(os.environ["CURATION_TEST_POISON"]).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.3)  # the run lasts until the replacement has started
    return i


def _err(task, msg):
    return ("error", task, msg)


def _local(fn, tasks, **kw):
    kw.setdefault("workers", 2)
    return run_local(fn, tasks, on_crash=_err, **kw)


def _ray(fn, tasks, **kw):
    import ray

    # Ray workers cannot import this test module by name: ship its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    kw.setdefault("workers", 2)
    return run_ray(fn, tasks, address="", num_cpus=2, on_crash=_err, **kw)


def test_completion_order_and_bounded_in_flight():
    """A slow task does not hold back the others, and tasks are pulled only as workers free up."""
    pulled = []

    def tasks():
        for t in [(0, 2.0)] + [(i, 0.0) for i in range(1, 7)]:
            pulled.append(t[0])
            yield t

    got, pulled_at_first = [], None
    for r in _local(_sleepy, tasks()):
        if pulled_at_first is None:
            pulled_at_first = len(pulled)
        got.append(r)
    assert sorted(got) == list(range(7))
    assert got[0] != 0 and got[-1] == 0  # completion order: the slow one last
    assert pulled_at_first <= 3, f"{pulled_at_first} tasks pulled before the first result (2 workers)"


def test_a_hung_task_is_killed_at_the_time_limit_and_the_run_goes_on():
    t0 = time.monotonic()
    got = list(_local(_sleepy, [(0, 120.0), (1, 0.0), (2, 0.0), (3, 0.0)], timeout_s=3.0))
    assert time.monotonic() - t0 < 60
    errors = [r for r in got if isinstance(r, tuple)]
    assert sorted(r for r in got if not isinstance(r, tuple)) == [1, 2, 3]
    assert len(errors) == 1 and errors[0][1] == (0, 120.0) and errors[0][2].startswith("timeout")


def test_a_worker_that_dies_once_is_retried(tmp_path):
    got = list(_local(_crash_once, [(i, str(tmp_path)) for i in range(4)], retries=1))
    assert sorted(got) == [0, 1, 2, 3]
    assert (tmp_path / "crashed1").exists()


def test_a_worker_that_dies_after_returning_is_replaced():
    got = list(_local(_dies_after_returning, _slowly(range(5), 0.3), retries=0))
    assert sorted(got) == [0, 1, 2, 3, 4]


def test_a_replacement_that_dies_while_starting_is_started_again(tmp_path, monkeypatch):
    poison = tmp_path / "poison"
    monkeypatch.setenv("CURATION_TEST_POISON", str(poison))
    monkeypatch.setenv("CURATION_TEST_DRIVER", str(os.getpid()))
    got = list(_local(_crash_and_poison, [(i, str(tmp_path)) for i in range(10)], retries=1))
    assert sorted(got) == list(range(10))
    assert (tmp_path / "crashed1").exists() and not poison.exists()  # the replacement did die once


def test_a_worker_that_keeps_dying_costs_only_its_own_task():
    got = list(_local(_always_crash_on_1, [0, 1, 2, 3], retries=1))
    errors = [r for r in got if isinstance(r, tuple)]
    assert sorted(r for r in got if not isinstance(r, tuple)) == [0, 2, 3]
    assert len(errors) == 1 and errors[0][1] == 1 and "worker crashed" in errors[0][2]


def test_an_exception_in_the_task_is_reported_not_retried():
    got = list(_local(_raises_on_2, [0, 1, 2, 3]))
    errors = [r for r in got if isinstance(r, tuple)]
    assert errors == [("error", 2, "task failed: ValueError: bad input 2")]


@pytest.mark.slow
def test_ray_actors_order_timeout_retry_and_failures(tmp_path):
    pytest.importorskip("ray")
    t0 = time.monotonic()
    got = list(_ray(_sleepy, [(0, 120.0), (1, 0.0), (2, 0.0), (3, 0.0)], timeout_s=5.0))
    assert time.monotonic() - t0 < 90
    assert sorted(r for r in got if not isinstance(r, tuple)) == [1, 2, 3]
    errors = [r for r in got if isinstance(r, tuple)]
    assert len(errors) == 1 and errors[0][2].startswith("timeout")
    assert sorted(_ray(_crash_once, [(i, str(tmp_path)) for i in range(4)])) == [0, 1, 2, 3]
    errors = [r for r in _ray(_raises_on_2, [0, 1, 2, 3]) if isinstance(r, tuple)]
    assert len(errors) == 1 and errors[0][1] == 2 and "bad input 2" in errors[0][2]


def _pid_then_sleep(task):
    """task = (i, dir): write this worker's pid to dir/<i>.pid, then hang."""
    i, where = task
    (Path(where) / f"{i}.pid").write_text(str(os.getpid()))
    time.sleep(600)
    return i


def test_workers_do_not_outlive_a_killed_driver(tmp_path):
    import subprocess

    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from test_executors import _pid_then_sleep, _err; from curation.executors import run_local; "
        f"list(run_local(_pid_then_sleep, [(0, {str(tmp_path)!r}), (1, {str(tmp_path)!r})], workers=2, on_crash=_err))"
    )
    driver = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(600):
            if len(list(tmp_path.glob("*.pid"))) == 2:
                break
            time.sleep(0.1)
        pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
        assert len(pids) == 2, "the workers never started"
    finally:
        driver.kill()  # SIGKILL: no cleanup code runs in the driver
        driver.wait()
    for _ in range(100):
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, f"workers {alive} outlived their driver"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"
