"""Processes on this host by their argv, for the e2e tests and the benchmarks: the shim server of a task,
the shims a containerd started."""

from __future__ import annotations

import os
from collections.abc import Iterator


def argvs() -> Iterator[tuple[int, list[bytes]]]:
    """``(pid, argv)`` of every process whose command line can be read (ones that exit meanwhile are
    skipped)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        yield int(entry), argv


def shim_server_pid(module: str, task_id: str) -> int | None:
    """The ``python -m <module> ... serve`` process serving ``task_id``, if one runs."""
    for pid, argv in argvs():
        if module.encode() in argv and b"serve" in argv and task_id.encode() in argv:
            return pid
    return None
