"""Thin ctypes wrappers for the few syscalls the agent needs and the stdlib lacks (mount, prctl).

Calling libc directly keeps mounts free of child processes, which matters because the agent reaps
every child itself (it is a subreaper). An image without ctypes (Debian's python3-minimal alone)
still works: mounts then run the ``mount``/``umount`` binaries and the agent must be PID 1 (which
adopts orphans anyway) instead of a subreaper.
"""

from __future__ import annotations

import os
from typing import Any

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
PR_SET_CHILD_SUBREAPER = 36

_FLAG_NAMES = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}


def _load_libc() -> Any:
    try:
        import ctypes
    except ImportError:
        return None
    try:
        # By soname first: find_library would run ldconfig, which a UVM may not have.
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        import ctypes.util

        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


_libc = _load_libc()


def libc() -> Any:
    """The agent's one handle on libc (errno kept); OSError in an image without ctypes."""
    if _libc is None:
        raise OSError("no ctypes in this image: libc cannot be called")
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    what = f"mount {source} on {target} ({fstype or 'bind'}, {data or '-'})"
    if _libc is None:
        _run_tool(["mount", *_mount_args(source, target, fstype, flags, data)], what)
        return
    import ctypes

    ret = _libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check(ret, what)


def umount(target: str, flags: int = 0) -> None:
    if _libc is None:
        _run_tool(["umount", *(["-l"] if flags & MNT_DETACH else []), target], f"umount {target}")
        return
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def set_child_subreaper() -> bool:
    """Become the reaper of orphaned descendants; False when that is impossible without ctypes."""
    if _libc is None:
        return os.getpid() == 1
    _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
    return True


def _mount_args(source: str, target: str, fstype: str, flags: int, data: str) -> list[str]:
    opts = [name for name, bit in _FLAG_NAMES.items() if flags & bit]
    if flags & MS_BIND:
        opts.append("rbind" if flags & MS_REC else "bind")
    if flags & MS_REMOUNT:
        opts.append("remount")
    if data:
        opts.append(data)
    args = ["-t", fstype] if fstype else []
    if opts:
        args += ["-o", ",".join(opts)]
    return [*args, source or "none", target]


def _run_tool(argv: list[str], what: str) -> None:
    # Runs synchronously: waitpid on the exact pid reaps it before the loop's SIGCHLD callback runs.
    pid = os.posix_spawnp(argv[0], argv, dict(os.environ))
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(f"{what}: {argv[0]} exited with {os.waitstatus_to_exitcode(status)}")


def split_options(options: list[str]) -> tuple[int, str]:
    """Mount options as (flags, data string): flag words become bits, the rest stays data."""
    flags = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAG_NAMES:
            flags |= _FLAG_NAMES[opt]
        elif opt == "rw":
            flags &= ~MS_RDONLY
        elif opt:
            data.append(opt)
    return flags, ",".join(data)


def is_mountpoint(path: str) -> bool:
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    return True
    except OSError:
        return False
    return False


def mounts_under(prefix: str) -> list[str]:
    """Mount points at or below ``prefix``, deepest first (the order to unmount them)."""
    prefix = os.path.realpath(prefix)
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4:
                mp = _unescape(fields[4])
                if mp == prefix or mp.startswith(prefix.rstrip("/") + "/"):
                    found.append(mp)
    return sorted(found, key=len, reverse=True)


def _unescape(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
