"""Run a per-item function over many items: a local process pool or a pool of Ray actors.

Both run the same picklable `fn(task) -> result` through one scheduler loop (`_schedule`) and
yield results in completion order (the pipeline sorts them afterwards, so that order never shows
in the outputs):

- bounded in-flight work: each worker holds at most one task; tasks are pulled from the input
  iterable only when a worker is free (backpressure: a million tasks are never all submitted);
- completion-order collection: one wait over the busy workers per event, never over all tasks;
- a per-task time limit (`timeout_s`): the worker running a task past it is killed and replaced
  (a hung decoder is stuck in C code, where nothing but a kill stops it), the task becomes
  `on_error(task, "timeout: ...")` and the run goes on;
- retries for transient failures: a worker that dies (segfault, OOM kill, a lost Ray node)
  has its task retried on a fresh worker up to `retries` times, then `on_error(task, "worker
  crashed: ...")`. An exception raised by `fn` itself is not retried (it is the input's fault).

Ray runs the same loop over actors rather than tasks: a task's clock starts when its actor
receives it (Ray tasks wait in a queue we cannot see, so a deadline from submission time would
be wrong whenever the cluster is busy); a hung actor is killed alone with `ray.kill`; the pool
size bounds in-flight work on its own; and each actor pays its imports (cv2, PyAV) once. Ray Data
would add a dataset layer but no per-item deadline.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait as wait_ready


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ----------------------------------------------------------------------------- the scheduler


def _schedule(pool, tasks: Iterable, *, timeout_s: float, retries: int, on_error: Callable) -> Iterator:
    """Feed `tasks` to `pool`'s workers one at a time each; yield results as they complete.

    `pool` provides: `slots` (worker ids), `ready_slots()` (ids able to take a task now),
    `send(slot, task)` (False: the worker was gone, the task not sent), `poll(slots, timeout) -> [(slot, kind, value)]` with kind in
    ok / failed / died, and `replace(slot)` (kill the worker, start a fresh one).
    """
    todo = iter(tasks)
    again: deque = deque()  # (task, attempts) to retry after a worker death
    busy: dict = {}  # slot -> (task, attempts, deadline)
    exhausted = False
    while True:
        for slot in pool.ready_slots():
            if slot in busy:
                continue
            if again:
                task, attempts = again.popleft()
            elif not exhausted:
                try:
                    task, attempts = next(todo), 0
                except StopIteration:
                    exhausted = True
                    continue
            else:
                continue
            if pool.send(slot, task) is False:  # that worker had died idle: not an attempt
                again.appendleft((task, attempts))
                continue
            busy[slot] = (task, attempts, time.monotonic() + timeout_s if timeout_s > 0 else None)
        if not busy:
            if exhausted and not again:
                return
            pool.poll([], 0.05)  # workers still starting
            continue
        deadlines = [d for _, _, d in busy.values() if d is not None]
        wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        for slot, kind, value in pool.poll(list(busy), wait_s):
            task, attempts, _ = busy.pop(slot)
            if kind == "ok":
                yield value
            elif kind == "failed":
                yield on_error(task, f"task failed: {value}")
            elif attempts < retries:  # died: transient until proven otherwise
                pool.replace(slot)
                again.append((task, attempts + 1))
            else:
                pool.replace(slot)
                yield on_error(
                    task, f"worker crashed: {value}" + (f" ({attempts + 1} tries)" if attempts else "")
                )
        now = time.monotonic()
        for slot in [s for s, (_, _, d) in busy.items() if d is not None and d <= now]:
            task, _, _ = busy.pop(slot)
            pool.replace(slot)
            yield on_error(
                task, f"timeout: still running after {timeout_s:g} s (source_timeout_s); worker killed"
            )


# ----------------------------------------------------------------------------- local processes


def _serve(fn: Callable, conn) -> None:
    """A worker process: say ready, then run tasks from `conn` until it closes."""
    _die_with_parent()
    try:
        conn.send(("ready", None))
        while True:
            task = conn.recv()
            try:
                msg = ("ok", fn(task))
            except Exception as e:  # noqa: BLE001 - reported to the driver as this task's failure
                msg = ("failed", f"{type(e).__name__}: {e}")
            _send(conn, msg)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the driver closed the pool (or died): nothing left to do


def _send(conn, msg: tuple) -> None:
    import pickle

    try:
        conn.send(msg)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        conn.send(("failed", f"result not picklable: {e}"))


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the driver dies (even by SIGKILL), so a worker
    stuck in a hung decoder never outlives its run."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Processes:
    """`n` spawned processes (no inherited threads or CUDA state), one pipe each."""

    def __init__(self, fn: Callable, n: int, restarts: int = 1):
        self.fn, self.ctx = fn, multiprocessing.get_context("spawn")
        self.slots = list(range(n))
        self.procs, self.conns, self.ready = {}, {}, set()
        self.restarts, self.start_failures = max(1, restarts), dict.fromkeys(self.slots, 0)
        for i in self.slots:
            self._start(i)

    def _start(self, i: int) -> None:
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_serve, args=(self.fn, child), daemon=True)
        p.start()
        child.close()
        self.procs[i], self.conns[i] = p, parent
        self.ready.discard(i)

    def ready_slots(self) -> list:
        for i in [i for i in self.ready if not self.procs[i].is_alive()]:
            self.replace(i)  # it returned its last result, then died: a fresh one (ready later)
        return sorted(self.ready)

    def send(self, slot, task) -> bool:
        """False (and a fresh worker starting) when the worker died while idle: the task never
        reached it. A death after this check shows in poll (the task is retried)."""
        if self.procs[slot].is_alive():
            try:
                self.conns[slot].send(task)
                return True
            except OSError:  # BrokenPipeError: it died just now
                pass
        self.replace(slot)
        return False

    def poll(self, busy: list, timeout: float | None) -> list:
        starting = [i for i in self.slots if i not in self.ready]
        watch = {}
        for i in set(busy) | set(starting):
            watch[self.conns[i]] = i
            watch[self.procs[i].sentinel] = i
        out, seen = [], set()
        for obj in wait_ready(list(watch), timeout):
            i = watch[obj]
            if i in seen:  # its pipe and its sentinel both fired: one event
                continue
            seen.add(i)
            conn = self.conns[i]
            if conn.poll():
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):
                    kind, value = "died", self._death(i)
            else:
                kind, value = "died", self._death(i)
            if kind == "ready":
                self.ready.add(i)
                self.start_failures[i] = 0
            elif i in busy:
                out.append((i, kind, value))
            elif kind == "died":  # died while starting: retried, unless it keeps failing (the fn
                self.start_failures[i] += 1  # cannot be imported there, say)
                if self.start_failures[i] > self.restarts:
                    raise RuntimeError(f"a worker process failed to start: {value}")
                self.replace(i)
        return out

    def _death(self, i: int) -> str:
        p = self.procs[i]
        p.join(timeout=5)
        return f"worker process exited with code {p.exitcode}"

    def replace(self, slot) -> None:
        p = self.procs[slot]
        if p.is_alive():
            p.kill()
        p.join()
        self.conns[slot].close()
        self._start(slot)

    def close(self) -> None:
        for i in self.slots:
            self.conns[i].close()  # EOF: the worker returns
        deadline = time.monotonic() + 5  # idle workers exit at once; a busy one (the run was
        for i in self.slots:  # interrupted) is killed
            self.procs[i].join(timeout=max(0.0, deadline - time.monotonic()))
            if self.procs[i].is_alive():
                self.procs[i].kill()
                self.procs[i].join()


def run_local(
    fn: Callable,
    tasks: Iterable,
    *,
    workers: int,
    on_crash: Callable,
    timeout_s: float = 0.0,
    retries: int = 1,
) -> Iterator:
    """`workers` spawned processes, one task each at a time; 1 runs inline in this process
    (no time limit there: nothing could stop a hung call without killing the driver)."""
    workers = workers or default_workers()
    size = len(tasks) if hasattr(tasks, "__len__") else workers
    if workers == 1 or (size <= 1 and timeout_s <= 0):
        for task in tasks:
            yield fn(task)
        return
    if size == 0:
        return
    pool = _Processes(fn, min(workers, size), restarts=retries)
    try:
        yield from _schedule(pool, tasks, timeout_s=timeout_s, retries=retries, on_error=on_crash)
    finally:
        pool.close()


# ----------------------------------------------------------------------------- Ray actors


class _Actor:
    """One Ray actor: runs `fn` on the tasks it is sent, one at a time."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def ready(self) -> bool:
        return True

    def run(self, task):
        return self.fn(task)


class _Actors:
    """`n` Ray actors of one CPU each; `replace` kills one (a hung task with it) and starts another."""

    def __init__(self, ray, fn: Callable, n: int):
        self.ray = ray
        self.cls = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(_Actor)
        self.fn_ref = ray.put(fn)
        self.slots = list(range(n))
        self.actors, self.refs, self.starting = {}, {}, {}
        for i in self.slots:
            self._start(i)

    def _start(self, i: int) -> None:
        self.actors[i] = self.cls.remote(self.fn_ref)
        self.starting[i] = self.actors[i].ready.remote()
        self.refs.pop(i, None)

    def ready_slots(self) -> list:
        return [i for i in self.slots if i not in self.starting]

    def send(self, slot, task) -> None:
        self.refs[slot] = self.actors[slot].run.remote(task)

    def poll(self, busy: list, timeout: float | None) -> list:
        ray = self.ray
        watch = {self.refs[i]: i for i in busy}
        watch.update({ref: i for i, ref in self.starting.items()})
        if not watch:
            return []
        refs = list(watch)
        done, rest = ray.wait(refs, num_returns=1, timeout=timeout)
        if done and rest:  # everything else already finished, without waiting again
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            done += more
        out = []
        for ref in done:
            i = watch[ref]
            try:
                value = ray.get(ref)
                kind = "ok"
            except ray.exceptions.RayTaskError as e:  # fn raised: the input's fault
                kind, value = "failed", f"{type(e.cause).__name__}: {e.cause}" if e.cause else str(e)
            except ray.exceptions.RayError as e:  # actor or node lost
                kind, value = "died", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if i in self.starting and self.starting[i] == ref:
                del self.starting[i]
                if kind != "ok":
                    raise RuntimeError(f"a Ray actor failed to start: {value}")
                continue
            out.append((i, kind, value))
        return out

    def replace(self, slot) -> None:
        self.ray.kill(self.actors[slot], no_restart=True)
        self._start(slot)

    def close(self) -> None:
        for a in self.actors.values():
            self.ray.kill(a, no_restart=True)


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise RuntimeError(
            "executor=ray needs Ray: pip install 'ray[default]' (or use executor=local)"
        ) from e
    return ray


@contextlib.contextmanager
def session(executor: str, *, address: str = "", num_cpus: int = 0):
    """For executor=ray: one Ray connection for every map of a run (joined, or a local instance
    started and shut down here); nothing for the local pool."""
    if executor != "ray":
        yield
        return
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        kwargs = {"address": address} if address else {"num_cpus": num_cpus or default_workers()}
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def run_ray(
    fn: Callable,
    tasks: Iterable,
    *,
    address: str,
    num_cpus: int,
    on_crash: Callable,
    workers: int = 0,
    timeout_s: float = 0.0,
    retries: int = 1,
) -> Iterator:
    """A pool of Ray actors on a cluster (`address`, e.g. "auto" inside a cluster job) or on a
    local Ray instance; `workers` actors (0 = one per CPU Ray reports). Every node must see the
    task's paths at the same place (a shared filesystem): actors read sources and write OUT."""
    ray = _import_ray()
    if hasattr(tasks, "__len__") and len(tasks) == 0:
        return
    with session("ray", address=address, num_cpus=num_cpus):
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        if hasattr(tasks, "__len__"):
            n = min(n, len(tasks))
        pool = _Actors(ray, fn, n)
        try:
            yield from _schedule(pool, tasks, timeout_s=timeout_s, retries=retries, on_error=on_crash)
        finally:
            pool.close()
