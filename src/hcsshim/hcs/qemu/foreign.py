"""A QEMU this process did not start: a parked clone (parked.py) adopted from the warm pool.

Such a QEMU is not our child, so it does not die with us (no PDEATHSIG) and we cannot waitpid() it.
Its exit is watched through a pidfd; its exit status is read from the zombie's /proc entry or, once
init has reaped it, with PIDFD_GET_INFO (Linux 6.15), and is None where neither can tell. Which QEMU a
pid is stays pinned by its argv naming the directory it was parked in (PARKED_FILE's `origin`), so a
reused pid is never signalled. Blocking helpers here are for threads or short-lived processes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import struct
import time
from typing import Any

from hcsshim import procfs

# Written by the parker into the directory: {"pid", "origin", "memory_mb"}. `origin` is the directory
# the QEMU was started in; its argv names it, wherever the directory has been renamed to since.
PARKED_FILE = "parked.json"
# Written by the process that adopted it: "<pid> <start time>", so a sweep can tell its owner died.
OWNER_FILE = "owner"

_PIDFD_INFO_EXIT = 1 << 3
_PIDFD_INFO_SIZE = 64
# _IOWR(PIDFS_IOCTL_MAGIC 0xFF, 11, struct pidfd_info)
_PIDFD_GET_INFO = (3 << 30) | (_PIDFD_INFO_SIZE << 16) | (0xFF << 8) | 11
_EXIT_CODE_OFFSET = 60


def names(pid: int, needle: str) -> bool:
    """Whether process `pid` is alive and its argv names `needle` (a state or parking directory)."""
    raw = needle.encode()
    return bool(raw) and any(raw in arg for arg in procfs.argv(pid))


def read_parked(directory: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(directory, PARKED_FILE)) as f:
            body = json.load(f)
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def parked_pid(directory: str) -> int | None:
    """The pid of the QEMU parked in (or adopted into) `directory` while it still runs."""
    body = read_parked(directory)
    if body is None:
        return None
    pid, origin = body.get("pid"), body.get("origin")
    if isinstance(pid, int) and isinstance(origin, str) and names(pid, origin):
        return pid
    return None


def kill_parked(directory: str, timeout: float = 5.0) -> bool:
    """SIGKILL the QEMU of `directory` and wait until it is gone; False when none ran."""
    pid = parked_pid(directory)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # our child when we parked it ourselves
        if not os.path.exists(f"/proc/{pid}") or _zombie(pid):
            return True
        time.sleep(0.02)
    return True


def _zombie(pid: int) -> bool:
    return _stat_fields(pid)[:1] == ["Z"]


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat from the state on (field 3), or [] when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return []
    return text[text.rfind(")") + 2 :].split()


def start_time(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[19]) if len(fields) > 19 else 0


def write_owner(directory: str) -> None:
    me = os.getpid()
    with open(os.path.join(directory, OWNER_FILE), "w") as f:
        f.write(f"{me} {start_time(me)}")


def owner_gone(directory: str) -> bool:
    """True when `directory` was adopted by a process that has exited (its QEMU lives on)."""
    try:
        with open(os.path.join(directory, OWNER_FILE)) as f:
            pid_text, _, started = f.read().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    return start_time(pid) != int(started or 0)


def _exit_status(pid: int, pidfd: int) -> int | None:
    """The returncode (negative for a signal, as subprocess reports it) of an exited process we are
    not the parent of, or None if the kernel no longer says."""
    fields = _stat_fields(pid)
    status: int | None = None
    if fields[:1] == ["Z"] and len(fields) > 49:
        status = int(fields[49])  # field 52, exit_code: the wait status
    else:
        buf = bytearray(_PIDFD_INFO_SIZE)
        struct.pack_into("<Q", buf, 0, _PIDFD_INFO_EXIT)
        try:
            fcntl.ioctl(pidfd, _PIDFD_GET_INFO, buf)
        except OSError:
            return None
        if struct.unpack_from("<Q", buf, 0)[0] & _PIDFD_INFO_EXIT:
            status = struct.unpack_from("<i", buf, _EXIT_CODE_OFFSET)[0]
    if status is None:
        return None
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else None


class ForeignProcess:
    """What QemuComputeSystem needs of its QEMU process (asyncio.subprocess.Process's pid,
    returncode, wait() and kill()), for a QEMU another process started."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = pidfd
        self._exited = asyncio.Event()
        self._waiter: asyncio.Task[None] | None = None

    @classmethod
    def open(cls, pid: int, origin: str) -> ForeignProcess:
        """Pin `pid` with a pidfd and check, after pinning, that it is the QEMU of `origin`."""
        fd = os.pidfd_open(pid)
        if not names(pid, origin):
            os.close(fd)
            raise ProcessLookupError(f"process {pid} is not the QEMU parked in {origin}")
        return cls(pid, fd)

    def watch(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._pidfd, self._readable)

    def _readable(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        self._waiter = asyncio.ensure_future(self._collect())

    async def _collect(self) -> None:
        # The zombie may be reaped by init between the two reads: look a few times.
        code = None
        for _ in range(10):
            code = await asyncio.to_thread(_exit_status, self.pid, self._pidfd)
            if code is not None:
                break
            await asyncio.sleep(0.02)
        self.returncode = code
        os.close(self._pidfd)
        self._pidfd = -1
        self._exited.set()

    async def wait(self) -> int | None:
        await self._exited.wait()
        return self.returncode

    @property
    def running(self) -> bool:
        return not self._exited.is_set()

    def kill(self) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def close(self) -> None:
        if self._pidfd >= 0 and not self._exited.is_set():
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1


def join_own_cgroup(pid: int) -> None:
    """Move every thread of `pid` into this process's cgroup (v2), where a QEMU we started would
    have been born (the shim may have moved itself into its shim_cgroup)."""
    try:
        with open("/proc/self/cgroup") as f:
            mine = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), None)
        with open(f"/proc/{pid}/cgroup") as f:
            theirs = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), None)
    except OSError:
        return
    if mine is None or mine == theirs:
        return
    with open(os.path.join("/sys/fs/cgroup", mine.lstrip("/"), "cgroup.procs"), "w") as f:
        f.write(str(pid))


def match_own_scheduling(pid: int) -> None:
    """Give every thread of `pid` this process's scheduling policy and nice value (a warm pool fills
    at SCHED_IDLE so that it never competes with a request; the adopted VM must not stay there)."""
    policy = os.sched_getscheduler(0)
    param = os.sched_getparam(0)
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    for name in os.listdir(f"/proc/{pid}/task"):
        tid = int(name)
        with contextlib.suppress(ProcessLookupError):
            if os.sched_getscheduler(tid) != policy:
                os.sched_setscheduler(tid, policy, param)
            if os.getpriority(os.PRIO_PROCESS, tid) != nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
