"""Several complete server processes on one REST port and one gRPC port.

One Python process serves on one core. KServe's ``--workers`` forks REST workers behind one
shared listening socket but keeps gRPC in the parent, and a shared socket lets a busy
worker keep accepting connections it cannot serve (seconds of p99 at 64 connections on two
cores). Here every process is a whole predictor (REST and gRPC, its own model and batcher)
and each binds both ports with ``SO_REUSEPORT``, so the kernel spreads connections evenly
over the processes, for gRPC as well as REST.

The parent verifies the artifact before any child starts; each child verifies it again
(it is a separate process and trusts nothing it did not check). Children die with the
parent (``PR_SET_PDEATHSIG``), receive its SIGTERM when it starts draining, and are
restarted if they exit on their own. Metrics from all processes are merged through
prometheus_client's multiprocess mode (see :mod:`predictor.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import logging
import math
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
PR_SET_PDEATHSIG = 1


def available_cpus() -> int:
    """CPUs this process may use: the cgroup quota when there is one (a Kubernetes CPU
    limit), else the scheduler's affinity set."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_cpu_quota() -> float | None:
    v2 = Path("/sys/fs/cgroup/cpu.max")
    try:
        if v2.exists():
            limit, period = v2.read_text().split()[:2]
            return None if limit == "max" else int(limit) / int(period)
        v1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        if v1.exists():
            limit_us = int(v1.read_text())
            period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            return None if limit_us <= 0 else limit_us / period_us
    except (OSError, ValueError):
        return None
    return None


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent dies; poll as a fallback elsewhere."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
            if os.getppid() != parent:  # it died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class GroupReadiness:
    """Whether every process of the group has started serving: what "ready" means.

    The parent loads its model and listens seconds before a spawned sibling has loaded its
    own. Were it ready then, a client that waits for ready and then opens its keep-alive
    connections (the router's pool, a sidecar) would have them all accepted by the parent,
    ``SO_REUSEPORT`` having no other socket to hash them to yet, and would use one core of
    several for as long as they live (measured: all 64 connections on one process, half
    the throughput). So each process marks its own flag (a shared ``Event``) once its REST
    and gRPC servers listen, and the server's readiness (``/v2/health/ready``, gRPC
    ``ServerReady``) waits for every flag. Once all were set, it stays ready: a sibling
    restarted later costs capacity for a second, which is no reason to take the whole
    server out of a load balancer."""

    def __init__(self, context: Any, count: int) -> None:
        self._flags = [context.Event() for _ in range(count)]
        self._all = False

    def mark(self, index: int) -> None:
        self._flags[index].set()

    def all_serving(self) -> bool:
        if not self._all:
            self._all = all(flag.is_set() for flag in self._flags)
        return self._all


class ProcessGroup:
    """The parent's view of its sibling servers: start, supervise, signal, reap."""

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...], count: int) -> None:
        self._target = target
        self._args = args
        self._count = count
        self._context = multiprocessing.get_context("spawn")
        self._children: dict[int, BaseProcess] = {}
        self.readiness = GroupReadiness(self._context, count)  # index 0: this process
        self.stopping = False

    def _spawn(self, index: int) -> None:
        target = (self._target.__module__, self._target.__qualname__)
        child = self._context.Process(
            target=_child_main,
            args=(*target, *self._args, index, self.readiness),
            name=f"predictor-{index}",
        )
        child.start()
        self._children[index] = child
        logger.info("started server process %d (pid %s)", index, child.pid)

    def start(self) -> None:
        for index in range(1, self._count):
            self._spawn(index)

    def signal(self, sig: int) -> None:
        self.stopping = True
        for child in self._children.values():
            if child.is_alive() and child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, sig)

    async def supervise(self, draining: Callable[[], bool]) -> None:
        """Restart a child that exits on its own (backing off if it keeps failing); pass
        the drain on as soon as it begins."""
        restarts: dict[int, int] = {}
        due: dict[int, float] = {}
        while not self.stopping:
            if draining():
                self.signal(signal.SIGTERM)
                return
            now = time.monotonic()
            for index, child in list(self._children.items()):
                if child.is_alive() or index in due:
                    continue
                delay = min(MAX_RESTART_DELAY_S, RESTART_DELAY_S * 2 ** restarts.get(index, 0))
                logger.error(
                    "server process %d (pid %s) exited with %s; restarting it in %.0f s",
                    index,
                    child.pid,
                    child.exitcode,
                    delay,
                )
                due[index] = now + delay
            for index, when in list(due.items()):
                if when <= now:
                    del due[index]
                    restarts[index] = restarts.get(index, 0) + 1
                    self._spawn(index)
            await asyncio.sleep(0.2)

    def join(self, timeout_s: float) -> None:
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in self._children.values():
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                logger.warning("server process pid %s did not stop in time; killing it", child.pid)
                child.kill()
                child.join(5)


_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def _process_id() -> int:
    return _pid


def cheap_metric_values() -> Any:
    """In multiprocess mode, prometheus_client asks ``os.getpid()`` on every ``inc`` and
    ``observe`` to notice a fork; glibc no longer caches it, so that is a system call per
    metric update, ~6-8 per request (~6 % of a process's CPU under load here). The pid is
    read once instead and refreshed after a fork (what the check is for), through the
    ``process_identifier`` hook prometheus_client offers. Call before any metric exists:
    with :data:`METRICS_ENV` set, before prometheus_client's users (KServe) are imported.
    Returns the value class it replaced (None if not in multiprocess mode)."""
    if not os.environ.get(METRICS_ENV):
        return None
    from prometheus_client import values

    replaced = values.ValueClass
    values.ValueClass = values.MultiProcessValue(process_identifier=_process_id)  # type: ignore[no-untyped-call]
    return replaced


@contextlib.contextmanager
def _multiprocess_values() -> Iterator[None]:
    """:func:`cheap_metric_values` while the server runs; after it, the value class it
    replaced again, so metrics made later in this process (a test's, or a second server's
    with one process) do not write to a directory that is gone."""
    replaced = cheap_metric_values()
    try:
        yield
    finally:
        if replaced is not None:
            from prometheus_client import values

            values.ValueClass = replaced


def _child_main(module: str, name: str, *args: Any) -> None:
    """A server process's first code: the cheaper metric values are set up before the
    target's module (and KServe, which creates metrics as it is imported) is loaded."""
    cheap_metric_values()
    getattr(importlib.import_module(module), name)(*args)


@contextlib.contextmanager
def shared_metrics_dir(count: int) -> Iterator[None]:
    """prometheus_client's multiprocess mode for several processes: each writes its series
    to files in one directory, ``/metrics`` merges them. Must be entered before
    prometheus_client is imported. A directory given in the environment is reused (emptied
    first: stale files would add a previous run's counts); otherwise a temporary one."""
    if count <= 1:
        yield
        return
    given = os.environ.get(METRICS_ENV)
    if given:
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        with _multiprocess_values():
            yield
        return
    with tempfile.TemporaryDirectory(prefix="irisgate-metrics-") as folder:
        os.environ[METRICS_ENV] = folder
        try:
            with _multiprocess_values():
                yield
        finally:
            os.environ.pop(METRICS_ENV, None)
