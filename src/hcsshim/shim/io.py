"""containerd's stdio FIFOs ↔ the guest process's stdio channels.

containerd (ctr, CRI) creates the FIFOs and opens its ends first; we open ours non-blocking and do
reads and writes driven by the event loop, so a client that never shows up (or removes its FIFOs)
cannot wedge anything. stdout/stderr are copied until the guest closes the channel (the process
exited and its output is drained), then our FIFO end is closed so the reader sees EOF. stdin is copied
until containerd closes its end or asks with ``CloseIO``; either closes the guest's stdin.
With a TTY there is no stderr: the guest merges it into the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from typing import Protocol

log = logging.getLogger("hcsshim.shim.io")

OPEN_TIMEOUT = 30.0
CHUNK = 32 * 1024


class Stream(Protocol):
    """The subset of a mux channel the relay uses (fakes implement the same)."""

    async def read(self, n: int = ...) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    def close_write(self) -> None: ...
    def close(self) -> None: ...


class GuestStdio(Protocol):
    @property
    def stdin(self) -> Stream | None: ...
    @property
    def stdout(self) -> Stream | None: ...
    @property
    def stderr(self) -> Stream | None: ...


async def open_fifo(path: str, flags: int, timeout: float = OPEN_TIMEOUT) -> int:
    """Open our end without ever blocking in open(2): a blocked open cannot be cancelled, and the
    client may remove its FIFOs (ctr does on exit) before it opens its end.

    A read end opens at once; a write end needs a reader, which containerd normally has opened
    already, so ENXIO is retried for a while."""
    if flags & os.O_ACCMODE == os.O_RDONLY:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ENXIO or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.02)


async def _wait_fd(fd: int, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if writable:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await _wait_fd(fd, writable=True)
            continue
        view = view[n:]


async def read_some(fd: int) -> bytes:
    """Wait for data, then read. Waiting first matters for a FIFO whose writer has not connected yet:
    a read would report EOF, while epoll stays quiet until a writer comes and writes or goes."""
    while True:
        await _wait_fd(fd, writable=False)
        try:
            return os.read(fd, CHUNK)
        except BlockingIOError:
            continue


class ProcessIO:
    """The FIFOs of one process (init or exec) and the tasks copying between them and the guest."""

    def __init__(self, stdin: str, stdout: str, stderr: str, terminal: bool) -> None:
        self.stdin_path = stdin
        self.stdout_path = stdout
        # containerd sends a stderr path with a TTY only by mistake; the guest has none to give.
        self.stderr_path = "" if terminal else stderr
        self.terminal = terminal
        self._stdin_channel: Stream | None = None
        self._stdin_task: asyncio.Task[None] | None = None
        self._stdin_fd = -1
        self._tasks: list[asyncio.Task[None]] = []
        self._output: list[asyncio.Task[None]] = []
        self._stdin_closed = False

    def process_params(self) -> dict[str, bool]:
        """The Create*Pipe fields of the guest's ProcessParameters."""
        return {
            "CreateStdInPipe": bool(self.stdin_path),
            "CreateStdOutPipe": bool(self.stdout_path),
            "CreateStdErrPipe": bool(self.stderr_path),
            "EmulateConsole": self.terminal,
        }

    def attach(self, guest: GuestStdio) -> None:
        log.debug(
            "stdio attach",
            extra={
                "stdin": guest.stdin is not None,
                "stdout": guest.stdout is not None,
                "stderr": guest.stderr is not None,
            },
        )
        if guest.stdout is not None and self.stdout_path:
            self._output.append(asyncio.create_task(self._copy_out(guest.stdout, self.stdout_path)))
        if guest.stderr is not None and self.stderr_path:
            self._output.append(asyncio.create_task(self._copy_out(guest.stderr, self.stderr_path)))
        if guest.stdin is not None and self.stdin_path:
            self._stdin_channel = guest.stdin
            self._stdin_task = asyncio.create_task(self._copy_in(guest.stdin, self.stdin_path))
            self._tasks.append(self._stdin_task)
        self._tasks.extend(self._output)

    async def _copy_out(self, channel: Stream, path: str) -> None:
        fd = -1
        copied = 0
        try:
            fd = await open_fifo(path, os.O_WRONLY)
            log.debug("stdio fifo open", extra={"path": path})
            while data := await channel.read(CHUNK):
                await write_all(fd, data)
                copied += len(data)
        except (OSError, ConnectionError) as exc:
            log.warning("stdio copy to %s stopped: %s", path, exc)
        finally:
            channel.close()
            if fd >= 0:
                os.close(fd)
            log.debug("stdio fifo closed", extra={"path": path, "bytes": copied})

    async def _copy_in(self, channel: Stream, path: str) -> None:
        try:
            self._stdin_fd = await open_fifo(path, os.O_RDONLY)
            while not self._stdin_closed:
                data = await read_some(self._stdin_fd)
                if not data:
                    break
                await channel.write(data)
        except (OSError, ConnectionError) as exc:
            log.info("stdin copy from %s stopped: %s", path, exc)
        finally:
            self.close_stdin()

    def close_stdin(self) -> None:
        """``CloseIO``: the guest process sees EOF on stdin."""
        self._stdin_closed = True
        task = self._stdin_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
        if self._stdin_channel is not None:
            with contextlib.suppress(Exception):
                self._stdin_channel.close_write()
        if self._stdin_fd >= 0:
            fd, self._stdin_fd = self._stdin_fd, -1
            with contextlib.suppress(OSError):
                asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    async def wait_output(self, timeout: float) -> bool:
        """Wait until stdout/stderr were copied to the end; False if that took longer than ``timeout``."""
        if not self._output:
            return True
        _, pending = await asyncio.wait(self._output, timeout=timeout)
        return not pending

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self.close_stdin()
        if self._stdin_channel is not None:
            self._stdin_channel.close()
        self._tasks.clear()
        self._output.clear()
