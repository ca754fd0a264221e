"""Container OOM-kill detection from the memory cgroup, reported as ``OomKilled`` notifications.

Upstream's Linux GCS only watches the whole ``/pods`` cgroup and logs; it never tells the host which
container was OOM-killed (and runhcs never publishes TaskOOM). We report per container:

* cgroup v2: ``memory.events`` (its ``oom_kill`` counter). kernfs raises ``EPOLLPRI`` on the open file
  whenever the file changes, so every watched file sits in one ``epoll`` set that the event loop
  watches as a single fd: no timer, no thread, nothing runs until the kernel says something changed.
* cgroup v1: ``memory.oom_control`` registered with an eventfd through ``cgroup.event_control``
  (the kernel's v1 OOM notifier); the eventfd sits in the same ``epoll`` set. The ``oom_kill``
  counter in ``memory.oom_control`` (kernel 4.13+) tells a kill from a mere OOM condition. The kernel
  signals *before* it picks and kills a victim, so the counter is read again a few times shortly after
  (``V1_RECHECK_DELAYS``).
* A file that cannot be watched that way (not a kernfs file, e.g. a test's fake cgroup directory, or
  a failed v1 registration) is polled every ``POLL_INTERVAL`` seconds, and only while such a
  container is watched.

Whatever the mechanism, :meth:`OomWatcher.check` runs once more when the container's init exits
(before the exit is reported), so a kill that ends the container is never missed or reported late.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
from collections.abc import Callable
from dataclasses import dataclass

from . import log, stats

LOG = log.get("oom")
POLL_INTERVAL = 0.5
V1_RECHECK_DELAYS = (0.05, 0.25, 1.0)

OnOom = Callable[[str, int], None]


def oom_kill_count(cgroups_path: str, root: str = stats.CGROUP_ROOT) -> int | None:
    """The cgroup's OOM-kill counter, or None when the cgroup (or the counter) is not there."""
    rel = cgroups_path.strip("/")
    if stats.is_cgroup2(root):
        path = os.path.join(root, rel, "memory.events")
    else:
        path = os.path.join(root, "memory", rel, "memory.oom_control")
    return _counter(path, "oom_kill")


def _counter(path: str, key: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return None


@dataclass
class _Watch:
    cid: str
    cgroups_path: str
    count: int
    fds: tuple[int, ...] = ()  # fds registered in the epoll set (closed on unwatch)
    polled: bool = False


class OomWatcher:
    """Watch containers' memory cgroups; call ``on_oom(cid, new_kills)`` when the kill count rises."""

    def __init__(self, on_oom: OnOom, root: str = stats.CGROUP_ROOT, poll_interval: float = POLL_INTERVAL):
        self.on_oom = on_oom
        self.root = root
        self.poll_interval = poll_interval
        self._watches: dict[str, _Watch] = {}
        self._by_fd: dict[int, str] = {}
        self._epoll: select.epoll | None = None
        self._poller: asyncio.Task[None] | None = None

    @property
    def watched(self) -> list[str]:
        return list(self._watches)

    def watch(self, cid: str, cgroups_path: str) -> None:
        if cid in self._watches or not cgroups_path:
            return
        count = oom_kill_count(cgroups_path, self.root)
        if count is None:
            LOG.info("no memory cgroup counter; OOM kills will not be reported", extra={"cid": cid})
            return
        w = _Watch(cid, cgroups_path, count)
        self._watches[cid] = w
        try:
            w.fds = self._register(cgroups_path)
        except OSError as e:
            LOG.info("memory cgroup not pollable, polling it", extra={"cid": cid, "error": str(e)})
            w.polled = True
            self._ensure_poller()
            return
        for fd in w.fds:
            self._by_fd[fd] = cid

    def unwatch(self, cid: str) -> None:
        w = self._watches.pop(cid, None)
        if w is None:
            return
        for fd in w.fds:
            self._by_fd.pop(fd, None)
            if self._epoll is not None:
                with contextlib.suppress(OSError):
                    self._epoll.unregister(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    def check(self, cid: str) -> int:
        """Read the counter now; report and return the number of new kills (0 if none)."""
        w = self._watches.get(cid)
        if w is None:
            return 0
        count = oom_kill_count(w.cgroups_path, self.root)
        if count is None or count <= w.count:
            return 0
        new, w.count = count - w.count, count
        LOG.warning("container OOM kill", extra={"cid": cid, "oom_kill": count, "polled": w.polled})
        try:
            self.on_oom(cid, new)
        except Exception:
            LOG.exception("OOM callback failed", extra={"cid": cid})
        return new

    def close(self) -> None:
        for cid in list(self._watches):
            self.unwatch(cid)
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if self._epoll is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None

    # ---- event-driven path -----------------------------------------------------------------------

    def _ensure_epoll(self) -> select.epoll:
        if self._epoll is None:
            self._epoll = select.epoll()
            asyncio.get_running_loop().add_reader(self._epoll.fileno(), self._on_ready)
        return self._epoll

    def _register(self, cgroups_path: str) -> tuple[int, ...]:
        rel = cgroups_path.strip("/")
        if stats.is_cgroup2(self.root):
            return (self._register_v2(os.path.join(self.root, rel, "memory.events")),)
        return self._register_v1(os.path.join(self.root, "memory", rel))

    def _register_v2(self, path: str) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.read(fd, 4096)  # arms kernfs' change detection for this open file
            # A regular file (not kernfs) refuses epoll with EPERM: the caller falls back to polling.
            self._ensure_epoll().register(fd, select.EPOLLPRI)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _register_v1(self, memcg: str) -> tuple[int, ...]:
        control = os.open(os.path.join(memcg, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        efd = -1
        try:
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            with open(os.path.join(memcg, "cgroup.event_control"), "w", encoding="ascii") as f:
                f.write(f"{efd} {control}")
            self._ensure_epoll().register(efd, select.EPOLLIN)
        except OSError:
            if efd >= 0:
                os.close(efd)
            os.close(control)
            raise
        return (efd, control)

    def _on_ready(self) -> None:
        assert self._epoll is not None
        try:
            ready = self._epoll.poll(0)
        except OSError:
            return
        for fd, _ in ready:
            cid = self._by_fd.get(fd)
            if cid is None:
                continue
            w = self._watches[cid]
            if fd == w.fds[0] and len(w.fds) == 2:
                with contextlib.suppress(OSError):
                    os.eventfd_read(fd)
                loop = asyncio.get_running_loop()
                for delay in V1_RECHECK_DELAYS:
                    loop.call_later(delay, self.check, cid)
            else:
                with contextlib.suppress(OSError):
                    os.lseek(fd, 0, os.SEEK_SET)
                    os.read(fd, 4096)  # re-arms kernfs' change detection
            self.check(cid)

    # ---- polling fallback ------------------------------------------------------------------------

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="oom-poll")

    async def _poll(self) -> None:
        while any(w.polled for w in self._watches.values()):
            await asyncio.sleep(self.poll_interval)
            for w in [w for w in self._watches.values() if w.polled]:
                self.check(w.cid)
        self._poller = None
