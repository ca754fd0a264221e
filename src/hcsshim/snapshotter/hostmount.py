"""Read-only host loop mounts of layer VHDs (a fixed VHD is raw ext4 plus a footer, so the file
mounts as is). They back the overlay that containerd temp-mounts on the host to read a container's
/etc/passwd and /etc/group; the container itself never uses them."""

from __future__ import annotations

import contextlib
import os
import subprocess

MOUNT = "/bin/mount"
UMOUNT = "/bin/umount"


class HostMountError(OSError):
    pass


def mountpoints() -> set[str]:
    points: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            points.add(line.split()[4].replace("\\040", " "))
    return points


def is_mounted(path: str) -> bool:
    return os.path.realpath(path) in mountpoints()


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise HostMountError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")


def mount_layer(vhd: str, target: str) -> None:
    """Loop-mount `vhd` read-only at `target` unless it already is (mount(8) sets autoclear, so the
    loop device goes away with the unmount)."""
    if is_mounted(target):
        return
    os.makedirs(target, mode=0o755, exist_ok=True)
    _run([MOUNT, "-t", "ext4", "-o", "ro,loop,noload", vhd, target])


def unmount(target: str) -> None:
    if not is_mounted(target):
        return
    try:
        _run([UMOUNT, target])
    except HostMountError:
        # Busy (a temp-mount of an overlay over it being torn down): detach, the kernel finishes it.
        _run([UMOUNT, "-l", target])
