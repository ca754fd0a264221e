"""Shared fixtures. Slow fixtures (a booted UVM, a private containerd) are session-scoped so the
end-to-end tests share them; they live in tests/support and are imported here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hcsshim import settings
from tests.support import containerd as containerd_support
from tests.support.containerd import Containerd, containerd, containerd_matrix
from tests.support.loop_watch import SLOW_CALLBACK_SECONDS, WATCH
from tests.support.uvm import booted_uvm

__all__ = ["booted_uvm", "containerd", "containerd_matrix"]


def _watch_shims(c: Containerd) -> None:
    WATCH.sources[f"containerd {c.base.name}"] = c.slow_callback_reports


def _last_reports(c: Containerd) -> None:
    # Reports from the teardown itself go to whichever test looks next.
    if WATCH.sources.pop(f"containerd {c.base.name}", None) is not None:
        for line in c.slow_callback_reports():
            WATCH.add(f"containerd {c.base.name} (stopping): {line}")


containerd_support.ON_START.append(_watch_shims)
containerd_support.ON_STOPPED.append(_last_reports)


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """Each test reads hcsshim.settings from its own environment (monkeypatch.setenv before the first
    use; a test that changes a variable after that calls settings.reset())."""
    settings.reset()
    yield
    settings.reset()


@pytest.fixture(autouse=True)
def no_slow_callbacks() -> Iterator[None]:
    """Fails a test during which any event loop of this process ran a callback for longer than
    SLOW_CALLBACK_SECONDS (asyncio debug mode measures it)."""
    WATCH.take()
    yield
    slow = WATCH.take()
    assert not slow, f"event loop blocked for more than {SLOW_CALLBACK_SECONDS}s: " + "; ".join(slow[:5])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """An end-to-end test never skips silently: on a machine `make test` set up, a missing
    prerequisite (root, QEMU, the UVM image, a containerd) is a failure naming it."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and item.get_closest_marker("e2e") is not None and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"end-to-end test skipped, which `make test` does not allow: {reason}"
