"""Child processes that die with the process that started them (a QEMU, a local guest agent): a shim
or a snapshotter that dies must not leave a VM running that nobody can reach.

The parent-death signal is set by util-linux's `setpriv --pdeathsig KILL`, which execs the real
program, and not by a Python preexec_fn: a preexec_fn makes CPython fork() instead of vfork(), and
a forked child of a process that serves or calls gRPC runs gRPC's fork handlers, which crash the
child with SIGSEGV about one start in ten while the server is busy (the lcow snapshotter's service
VMs died that way before QMP). The signal survives the exec, and PR_SET_PDEATHSIG fires when the
thread that started the child exits, which for these callers is their event loop's thread.

setpriv sets the signal after the parent may already have died (the parent's exit between the
spawn and the prctl goes unnoticed, and the child is reparented), so setpriv execs a shell that
checks, after the prctl, that its parent is still the process that started it, and only then execs
the program. Either the signal is armed while the parent lives, or the child ends by itself.

Stdlib only and imports nothing of ours, so any layer may use it."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
from typing import Any

SETPRIV_FALLBACK = "/usr/bin/setpriv"


class SetprivMissing(FileNotFoundError):
    """No setpriv (util-linux) on this host: a child could outlive its parent."""


@functools.cache
def setpriv() -> str:
    """setpriv's path, looked up once per process."""
    found = shutil.which("setpriv") or (SETPRIV_FALLBACK if os.path.exists(SETPRIV_FALLBACK) else None)
    if found is None:
        raise SetprivMissing(
            "setpriv (util-linux) is not installed: it is what kills a child QEMU or guest agent "
            "when its parent dies"
        )
    return found


# $PPID is read when the shell starts, after setpriv's prctl: a parent gone by then reads as
# another pid (init or a subreaper), and the program never runs.
_PARENT_STILL_THERE = '[ "$PPID" = "$1" ] || exit 137; shift; exec "$@"'


def dying_with_parent(argv: list[str], parent: int | None = None) -> list[str]:
    """`argv` run so that it is SIGKILLed when the calling thread exits, and not run at all if its
    parent (this process unless `parent` says otherwise) is gone before the signal is armed."""
    expected = os.getpid() if parent is None else parent
    return [
        setpriv(),
        "--pdeathsig",
        "KILL",
        "--",
        "/bin/sh",
        "-c",
        _PARENT_STILL_THERE,
        "sh",
        str(expected),
        *argv,
    ]


async def spawn(*argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """asyncio.create_subprocess_exec of `argv`, SIGKILLed when the calling thread exits. Takes
    create_subprocess_exec's keyword arguments except preexec_fn (see the module's docstring)."""
    if "preexec_fn" in kwargs:
        raise TypeError("spawn() sets the parent-death signal itself and takes no preexec_fn")
    return await asyncio.create_subprocess_exec(*dying_with_parent(list(argv)), **kwargs)
