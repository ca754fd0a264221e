"""What /proc says about a process, for the code that must tell its own processes from a reused pid.

Stdlib only and imports nothing of ours, so any layer may use it."""

from __future__ import annotations

import os


def argv(pid: int) -> list[bytes]:
    """The process's argv; [] when it is gone (or a kernel thread, or not ours to read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read()
    except OSError:
        return []
    return data.split(b"\0") if data else []


def pids() -> list[int]:
    """Every process id /proc lists now (this one included)."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]
