"""Child reaping and spawning without subprocess.

The agent is a child subreaper: container processes that runc detaches are re-parented to it, and
reaping them is the only way to learn their exit codes. A central SIGCHLD handler therefore owns
waitpid(-1); everything the agent starts goes through spawn() so nothing else competes for exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from hcsshim.hvsock.transports import FdTransport


def exit_code_of(status: int) -> int:
    """Shell convention (128 + signal for a killed process), as runc and containerd report."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


class Reaper:
    def __init__(self) -> None:
        self._waiters: dict[int, asyncio.Future[int]] = {}
        # Exits that arrived before anyone asked (a pid read from a pid file after the fact).
        self._unclaimed: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def uninstall(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = exit_code_of(status)
            fut = self._waiters.pop(pid, None)
            if fut is not None and not fut.done():
                fut.set_result(code)
            else:
                self._unclaimed[pid] = code
                if len(self._unclaimed) > 4096:
                    self._unclaimed.pop(next(iter(self._unclaimed)))

    def wait(self, pid: int) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        fut = self._waiters.get(pid)
        if fut is None:
            fut = loop.create_future()
            if pid in self._unclaimed:
                fut.set_result(self._unclaimed.pop(pid))
            else:
                self._waiters[pid] = fut
        # SIGCHLD may have been coalesced with one delivered before the waiter existed.
        self.reap()
        return fut


REAPER = Reaper()


def spawn(
    argv: Sequence[str],
    *,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    env: dict[str, str] | None = None,
    setsid: bool = False,
) -> int:
    """Start ``argv`` with the given fds as its stdio (None = /dev/null); returns the pid."""
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        actions = [
            (os.POSIX_SPAWN_DUP2, devnull if fd is None else fd, target)
            for target, fd in ((0, stdin), (1, stdout), (2, stderr))
        ]
        return os.posix_spawnp(
            argv[0],
            list(argv),
            dict(os.environ if env is None else env),
            file_actions=actions,
            setsigmask=(),
            setsid=setsid,
            setsigdef=(signal.SIGPIPE, signal.SIGCHLD, signal.SIGTERM, signal.SIGINT),
        )
    finally:
        os.close(devnull)


@dataclass(frozen=True, slots=True)
class Result:
    code: int
    stdout: bytes
    stderr: bytes


async def run(argv: Sequence[str], *, stdin_data: bytes | None = None, timeout: float = 60.0) -> Result:
    """Run a helper (runc, mkfs ...) to completion and capture its output."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    in_r = in_w = None
    if stdin_data is not None:
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = spawn(argv, stdin=in_r, stdout=out_w, stderr=err_w)
    except BaseException:
        for fd in (out_r, out_w, err_r, err_w, in_r, in_w):
            if fd is not None:
                os.close(fd)
        raise
    os.close(out_w)
    os.close(err_w)
    waiter = REAPER.wait(pid)
    out_t, err_t = FdTransport(out_r), FdTransport(err_r)

    async def drain(t: FdTransport) -> bytes:
        chunks = []
        while chunk := await t.read():
            chunks.append(chunk)
        return b"".join(chunks)

    async def feed() -> None:
        assert in_w is not None
        t = FdTransport(in_w)
        try:
            await t.write(stdin_data or b"")
        except OSError:
            pass
        finally:
            t.close()

    try:
        if in_r is not None:
            os.close(in_r)
        feeder = asyncio.ensure_future(feed()) if in_w is not None else None
        out, err = await asyncio.wait_for(asyncio.gather(drain(out_t), drain(err_t)), timeout)
        if feeder is not None:
            await feeder
        code = await asyncio.wait_for(waiter, timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise TimeoutError(f"{argv[0]} {' '.join(argv[1:3])} timed out after {timeout}s") from None
    finally:
        out_t.close()
        err_t.close()
    return Result(code, out, err)
