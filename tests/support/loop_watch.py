"""Every event loop the tests run, and every one they start, is watched for callbacks that hold it
for more than SLOW_CALLBACK_SECONDS of their own (hcsshim.loopwatch says what "own" leaves out); a
report fails the test that was running: that is a mount, a subprocess.run, an rmtree or a big read
that belongs in a thread.

- This process: loopwatch is installed here, reporting to WATCH.
- Shims under containerd and UVMs this process boots: HCSSHIM_SLOW_CALLBACK_MS and
  HCSSHIM_GUEST_SLOW_CALLBACK_MS are set in the environment they inherit, so each shim watches its
  own loop and every UVM's kernel command line asks its guest agent to watch its loop too. Their
  reports are log lines with loopwatch.MESSAGE: the guest's reach this process through the UVM's
  log relay (caught by the handler below) or a shim's log, which containerd copies into its log
  file (tests/conftest.py hooks Containerd.slow_callback_reports into WATCH.sources).

asyncio's debug mode (PYTHONASYNCIODEBUG) is on too, for its other checks (never-awaited coroutines,
non-threadsafe calls)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from hcsshim import loopwatch, settings

SLOW_CALLBACK_SECONDS = 0.1
SLOW_CALLBACK_MS = int(SLOW_CALLBACK_SECONDS * 1000)
# A guest under TCG runs its Python an order of magnitude slower than the host; the bound is for a
# loop blocked on I/O or a long call, not for a slow CPU.
GUEST_SLOW_CALLBACK_MS = 500

# Read by asyncio whenever a loop is made, so it must be set before any test makes one.
os.environ["PYTHONASYNCIODEBUG"] = "1"
os.environ[settings.SLOW_CALLBACK_ENV] = str(SLOW_CALLBACK_MS)
os.environ[settings.GUEST_SLOW_CALLBACK_ENV] = str(GUEST_SLOW_CALLBACK_MS)


class SlowCallbacks:
    """Collects callbacks that held their loop too long, from every thread and from the logs of the
    processes the tests started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[str] = []
        self.sources: dict[str, Callable[[], list[str]]] = {}

    def add(self, message: str) -> None:
        with self._lock:
            self._seen.append(message)

    def take(self) -> list[str]:
        for name, source in list(self.sources.items()):
            for line in source():
                self.add(f"{name}: {line}")
        with self._lock:
            seen, self._seen = self._seen, []
        return seen


WATCH = SlowCallbacks()


def _report(what: str, own: float, wall: float) -> None:
    WATCH.add(f"{what} held its loop for {own:.3f}s ({wall:.3f}s wall)")


class _RelayedReports(logging.Handler):
    """A guest agent's report, relayed into this process's logging by its UVM."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        line = getattr(record, "line", "")
        if loopwatch.MESSAGE in text or (isinstance(line, str) and f'"{loopwatch.MESSAGE}"' in line):
            WATCH.add(f"{record.name}: {line or text}")


loopwatch.install(SLOW_CALLBACK_SECONDS, _report)
_handler = _RelayedReports(logging.WARNING)
logging.getLogger().addHandler(_handler)
