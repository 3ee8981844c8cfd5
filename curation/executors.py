"""Run the per-source stage function over many sources: a local process pool or Ray.

Both take the same picklable `fn(task) -> result` and yield results as they complete (the
pipeline sorts them afterwards, so completion order never shows in the outputs). `fn` must catch
its own errors; a worker that dies anyway (segfault, OOM kill) turns into `on_crash(task, msg)`.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_local(fn: Callable, tasks: list, *, workers: int, on_crash: Callable) -> Iterator:
    """`workers` processes (spawned: no inherited threads or CUDA state); 1 runs inline."""
    workers = workers or default_workers()
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            yield fn(task)
        return
    ctx = multiprocessing.get_context("spawn")
    unfinished = []
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
        pending = {pool.submit(fn, t): t for t in tasks}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                task = pending.pop(fut)
                try:
                    yield fut.result()
                except Exception:  # a worker died (segfault, OOM kill): the whole pool is broken
                    unfinished.append(task)
    # Rerun each unfinished source alone, so only the one that kills its worker gets an error row.
    for task in unfinished:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as solo:
            try:
                yield solo.submit(fn, task).result()
            except Exception as e:
                yield on_crash(task, f"worker crashed: {type(e).__name__}: {e}")


def run_ray(fn: Callable, tasks: list, *, address: str, num_cpus: int, on_crash: Callable) -> Iterator:
    """One Ray task per source on a cluster (`address`) or a local Ray instance."""
    try:
        import ray
    except ImportError as e:
        raise RuntimeError(
            "executor=ray needs Ray: pip install 'ray[default]' (or use executor=local)"
        ) from e
    started = False
    if not ray.is_initialized():
        kwargs = {"address": address} if address else {"num_cpus": num_cpus or default_workers()}
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        pending = {remote.remote(t): t for t in tasks}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as e:
                    yield on_crash(task, f"ray task failed: {type(e).__name__}: {e}")
    finally:
        if started:
            ray.shutdown()
