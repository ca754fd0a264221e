"""What a VM leaves behind when the process that created it died without terminate(): QEMU dies with
its creator (PDEATHSIG) but a QEMU that outlived it, its mounts and its state directory do not go
by themselves. `shim delete` runs in a fresh process, so this works from the system id alone."""

from __future__ import annotations

import contextlib
import os
import signal
import time

from hcsshim import procfs
from hcsshim.hcs.qemu import foreign
from hcsshim.hcs.qemu.mounts import remove_tree_safely
from hcsshim.hcs.qemu.system import state_dir_for


def cleanup_orphan(system_id: str) -> None:
    """Kill any process whose argv names the system's state directory (its QEMU), or the QEMU of a
    parked clone the system adopted (its argv names where it was parked: foreign.PARKED_FILE), then
    remove the directory (unmounting what is mounted under it). Nothing left is not an error.
    Blocking."""
    state_dir = state_dir_for(system_id)
    if not os.path.isdir(state_dir):
        return
    foreign.kill_parked(state_dir)
    needle = state_dir.encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and any(needle in arg for arg in procfs.argv(int(entry))):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)
    time.sleep(0.05)
    with contextlib.suppress(Exception):
        remove_tree_safely(state_dir)
