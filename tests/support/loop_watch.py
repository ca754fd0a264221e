"""Every event loop the tests make runs in asyncio's debug mode, and a callback that holds its loop
for more than SLOW_CALLBACK_SECONDS of its own fails the test that was running: that is a mount, a
subprocess.run, an rmtree or a big read that belongs in a thread.

"Of its own" leaves out the time the thread was runnable but waiting for a CPU (the run-queue delay
in /proc/thread-self/schedstat; on this machine's two cores a busy QEMU can delay any callback) and
the time the garbage collector ran (a full collection of a long test session's heap takes as long,
wherever it happens to start): neither is the callback's doing. What remains is the callback's CPU
time plus the time it was blocked, which is what holds the loop. Processes the tests start (shims
under containerd, the guest agent on the host) inherit PYTHONASYNCIODEBUG and run in debug mode
too."""

from __future__ import annotations

import asyncio.events
import gc
import os
import threading
import time
from typing import Any

SLOW_CALLBACK_SECONDS = 0.1

# Read by asyncio whenever a loop is made, so it must be set before any test makes one.
os.environ["PYTHONASYNCIODEBUG"] = "1"

_local = threading.local()
_gc_ns = 0
_gc_started = 0


def _count_gc(phase: str, info: dict[str, Any]) -> None:
    global _gc_ns, _gc_started
    if phase == "start":
        _gc_started = time.perf_counter_ns()
    elif _gc_started:
        _gc_ns += time.perf_counter_ns() - _gc_started


gc.callbacks.append(_count_gc)


def _runqueue_wait_ns() -> int:
    fd = getattr(_local, "schedstat", None)
    if fd is None:
        fd = _local.schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
    return int(os.pread(fd, 128, 0).split()[1])


class SlowCallbacks:
    """Collects callbacks that held their loop too long, from every thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[str] = []

    def add(self, message: str) -> None:
        with self._lock:
            self._seen.append(message)

    def take(self) -> list[str]:
        with self._lock:
            seen, self._seen = self._seen, []
        return seen


WATCH = SlowCallbacks()
_original_run = asyncio.events.Handle._run


def _describe(handle: Any) -> str:
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
    wall0 = time.monotonic()
    waited0 = _runqueue_wait_ns()
    gc0 = _gc_ns
    try:
        _original_run(self)
    finally:
        wall = time.monotonic() - wall0
        if wall > SLOW_CALLBACK_SECONDS:
            own = wall - (_runqueue_wait_ns() - waited0) / 1e9 - (_gc_ns - gc0) / 1e9
            if own > SLOW_CALLBACK_SECONDS:
                WATCH.add(f"{_describe(self)} held its loop for {own:.3f}s ({wall:.3f}s wall)")


asyncio.events.Handle._run = _timed_run  # type: ignore[method-assign]
