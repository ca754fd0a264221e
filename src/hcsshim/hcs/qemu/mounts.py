"""Bind mounts for Plan9 shares (the 9p device exports one directory; each share is a bind mount
into it) and a teardown that never deletes through a mount point."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os

_MS_RDONLY = 0x1
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MNT_DETACH = 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def bind_mount(source: str, target: str, read_only: bool) -> None:
    """Bind `source` at `target` (a dir or an empty file made here); read-only when asked."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        open(target, "a").close()
    _check(_libc.mount(source.encode(), target.encode(), None, _MS_BIND | _MS_REC, None), f"bind {source}")
    if read_only:
        flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY
        rc = _libc.mount(None, target.encode(), None, flags, None)
        if rc != 0:
            err = ctypes.get_errno()
            _libc.umount2(target.encode(), _MNT_DETACH)
            raise OSError(err, f"read-only remount of {target}: {os.strerror(err)}")


def unmount(target: str) -> None:
    """Lazily unmount (QEMU may still hold files open) everything stacked at `target`."""
    while is_mount_point(target):
        _check(_libc.umount2(target.encode(), _MNT_DETACH), f"umount {target}")


def mounts_under(root: str) -> list[str]:
    """Mount points at or below `root`, deepest first."""
    root = os.path.realpath(root)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return sorted(set(found), key=len, reverse=True)


def is_mount_point(path: str) -> bool:
    return os.path.realpath(path) in mounts_under(path)


def remove_tree_safely(root: str) -> list[str]:
    """Unmount everything under `root`, then delete it bottom-up with unlink/rmdir only, so a
    mount that would not go away can never cause a shared host directory to be emptied.
    Returns what could not be removed."""
    if not os.path.lexists(root):
        return []
    for point in mounts_under(root):
        with contextlib.suppress(OSError):
            unmount(point)
    left = mounts_under(root)
    if left:
        return left
    problems: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            try:
                os.unlink(os.path.join(dirpath, name))
            except OSError:
                problems.append(os.path.join(dirpath, name))
        for name in dirnames:
            p = os.path.join(dirpath, name)
            try:
                if os.path.islink(p):
                    os.unlink(p)
                else:
                    os.rmdir(p)
            except OSError:
                problems.append(p)
    try:
        os.rmdir(root)
    except OSError:
        problems.append(root)
    return problems
