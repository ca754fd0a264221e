"""Finds event-loop callbacks that hold their loop: a mount, a subprocess.run, an rmtree or a big
read that belongs in a thread.

asyncio's own debug mode reports callbacks by wall time, which on a busy host (two cores shared with
TCG vCPUs) flags every callback that merely waited for a CPU. A callback's own time here is its wall
time less the time its thread was runnable but not running (the run-queue delay in
/proc/thread-self/schedstat) and less the time the garbage collector ran (a full collection starts
wherever it happens to): what remains is its CPU time plus the time it was blocked, which is what
holds the loop.

`install(threshold, report)` patches asyncio's Handle._run once per process, so every loop of every
thread is covered. The shim installs it when HCSSHIM_SLOW_CALLBACK_MS is set, the guest agent when
its kernel command line has `hcsshim.slow_callback_ms=N`, the test suites always; each reports
through its own logger ("slow callback"), and the tests fail on any report.

Stdlib only and imports nothing of ours: the guest image carries it."""

from __future__ import annotations

import asyncio
import asyncio.events
import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

# What reports carry as their log message, so a reader of any log can find them.
MESSAGE = "slow callback"
# What install_logging logs once the watch is in force (with threshold_ms).
INSTALLED = "slow-callback watch installed"
# The kernel command-line parameter the guest agent reads (a dotted name: the kernel ignores it and
# does not pass it to init).
CMDLINE_PARAM = "hcsshim.slow_callback_ms"

Report = Callable[[str, float, float], None]  # (what, own seconds, wall seconds)

_local = threading.local()
_gc_ns = 0
_gc_started = 0
_installed: tuple[float, Report] | None = None
_original_run: Callable[[Any], None] | None = None


def _count_gc(phase: str, info: dict[str, Any]) -> None:
    global _gc_ns, _gc_started
    if phase == "start":
        _gc_started = time.perf_counter_ns()
    elif _gc_started:
        _gc_ns += time.perf_counter_ns() - _gc_started


def _runqueue_wait_ns() -> int:
    fd = getattr(_local, "schedstat", None)
    if fd is None:
        try:
            fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # a kernel without schedstat: wall time less GC is the best there is
            fd = -1
        _local.schedstat = fd
    if fd < 0:
        return 0
    return int(os.pread(fd, 128, 0).split()[1])


def describe(handle: Any) -> str:
    """A task step names its coroutine and where it stopped; other callbacks are their repr."""
    task = getattr(getattr(handle, "_callback", None), "__self__", None)
    if isinstance(task, asyncio.Task):
        # The innermost coroutine the task awaits is where its step ended: the blocking code ran
        # just before that await.
        chain: list[str] = []
        coro: Any = task.get_coro()
        while coro is not None and len(chain) < 12:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_qualname} at {frame.f_code.co_filename}:{frame.f_lineno}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        where = " -> ".join(chain[-3:]) or f"{getattr(task.get_coro(), '__qualname__', '?')}, finished"
        return f"task {task.get_name()} ({where})"
    return repr(handle)


def _timed_run(self: Any) -> None:
    assert _original_run is not None and _installed is not None
    threshold, report = _installed
    wall0 = time.monotonic()
    waited0 = _runqueue_wait_ns()
    gc0 = _gc_ns
    try:
        _original_run(self)
    finally:
        wall = time.monotonic() - wall0
        if wall > threshold:
            own = wall - (_runqueue_wait_ns() - waited0) / 1e9 - (_gc_ns - gc0) / 1e9
            if own > threshold:
                # A broken reporter must not break the loop it watches.
                with contextlib.suppress(Exception):
                    report(describe(self), own, wall)


def install(threshold: float, report: Report) -> None:
    """Report every callback whose own time exceeds `threshold` seconds, from now on, in every loop
    of this process. A second call replaces the threshold and the reporter."""
    global _installed, _original_run
    if threshold <= 0:
        raise ValueError(f"slow-callback threshold must be positive, not {threshold}")
    _installed = (threshold, report)
    if _original_run is None:
        _original_run = asyncio.events.Handle._run
        gc.callbacks.append(_count_gc)
        asyncio.events.Handle._run = _timed_run  # type: ignore[method-assign]


def install_logging(threshold: float, logger: logging.Logger) -> None:
    """install() with a reporter that logs each slow callback as a warning with MESSAGE and its
    figures, and one INSTALLED line saying the watch is in force."""

    def report(what: str, own: float, wall: float) -> None:
        logger.warning(MESSAGE, extra={"callback": what, "seconds": round(own, 3), "wall": round(wall, 3)})

    install(threshold, report)
    logger.info(INSTALLED, extra={"threshold_ms": round(threshold * 1000)})


def installed() -> float | None:
    """The threshold in force, or None."""
    return _installed[0] if _installed is not None else None


def threshold_from_cmdline(cmdline: str) -> float | None:
    """`hcsshim.slow_callback_ms=N` from a kernel command line, in seconds; None when absent. A value
    that is not a positive integer raises ValueError naming the parameter."""
    for word in cmdline.split():
        name, eq, value = word.partition("=")
        if name == CMDLINE_PARAM and eq:
            try:
                ms = int(value)
            except ValueError:
                ms = 0
            if ms <= 0:
                raise ValueError(f"{CMDLINE_PARAM}={value!r}: not a positive number of milliseconds")
            return ms / 1000
    return None
