"""The container's root filesystem on the host: containerd's snapshot mounts at ``<bundle>/rootfs``.

The snapshot (overlay upperdir, or a bind of an active snapshot) takes the container's writes, so the
image's layers stay untouched; the shim shares the mounted directory into the UVM. ``delete`` must
unmount it even when the serve process is gone (reference §2.5, §2.7).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("hcsshim.shim.rootfs")

MOUNT = "/bin/mount"
UMOUNT = "/bin/umount"


class MountError(OSError):
    pass


@dataclass(frozen=True)
class MountSpec:
    type: str
    source: str
    options: tuple[str, ...]


def _run(argv: Sequence[str]) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise MountError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")


def is_mountpoint(path: str) -> bool:
    target = os.path.realpath(path)
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == target:
                return True
    return False


def mount_all(mounts: Sequence[MountSpec], target: str) -> None:
    """Mount containerd's rootfs mounts in order at ``target`` (created if missing)."""
    os.makedirs(target, mode=0o711, exist_ok=True)
    done = 0
    try:
        for m in mounts:
            options = [o for o in m.options if o]
            argv = [MOUNT]
            if m.type and m.type not in ("bind", "rbind"):
                argv += ["-t", m.type]
            if m.type in ("bind", "rbind") and not any(o in ("bind", "rbind") for o in options):
                options.insert(0, m.type)
            if options:
                argv += ["-o", ",".join(options)]
            argv += [m.source or "none", target]
            _run(argv)
            done += 1
    except BaseException:
        for _ in range(done):
            with contextlib.suppress(MountError):
                unmount(target)
        raise
    log.info("rootfs mounted", extra={"target": target, "mounts": len(mounts)})


def unmount(target: str) -> bool:
    """Unmount everything stacked at ``target``; True if something was mounted."""
    found = False
    for _ in range(8):
        if not is_mountpoint(target):
            return found
        found = True
        try:
            _run([UMOUNT, target])
        except MountError:
            # Still busy (a 9p export being torn down): detach it, the kernel finishes later.
            _run([UMOUNT, "-l", target])
    return found
