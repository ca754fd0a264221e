"""Relaying a process's stdio to the host over mux channels (the hvsock stdio ports)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios

from hcsshim.hvsock.session import Channel, MuxSession
from hcsshim.hvsock.transports import FdTransport

from . import log

LOG = log.get("stdio")


async def dial_ports(
    session: MuxSession, stdin: int | None, stdout: int | None, stderr: int | None, timeout: float = 30.0
) -> tuple[Channel | None, Channel | None, Channel | None]:
    """Connect to the host's stdio listeners (port 0 or None = not requested)."""
    chans: list[Channel | None] = []
    try:
        for port in (stdin, stdout, stderr):
            chans.append(await session.dial(port, timeout) if port else None)
    except BaseException:
        for ch in chans:
            if ch is not None:
                ch.close()
        raise
    return chans[0], chans[1], chans[2]


# A program writing to a terminal is line-buffered: one write(2) per line, and a pty master hands
# each one to a waiting reader on its own, so the relay sent a mux frame per line. Waiting a moment
# after a read lets the lines pile up in the pty and one frame carries many of them; 5 ms is below
# what a person at a console notices. (Measured under TCG, what remains is the guest kernel's own
# cost per pty write, ~60-100 us a line; bulk writes into the pty relay at several MB/s.)
TTY_COALESCE = 0.005
TTY_BATCH = 256 * 1024
# How many grace periods of continuous output an exited process's descendants may add.
MAX_GRACES = 15


async def _fd_to_channel(fd: int, ch: Channel, tty: bool = False, progress: list[int] | None = None) -> None:
    t = FdTransport(fd)
    try:
        while True:
            data = await t.read()
            if not data and tty:
                data = await _pty_tail(fd)
            if not data:
                break
            if tty and len(data) < TTY_BATCH:
                data = await _pty_more(fd, data)
            if progress is not None:
                progress[0] += len(data)
                progress[1] += 1
            try:
                await ch.write(data)
            finally:
                if progress is not None:
                    progress[1] -= 1
    except (ConnectionError, OSError) as e:
        LOG.debug("stdout relay ended", extra={"port": ch.port, "error": str(e)})
    finally:
        t.close()
        ch.close_write()
        ch.close()


async def _pty_more(fd: int, first: bytes) -> bytes:
    """``first`` plus whatever the pty gathers within TTY_COALESCE (up to TTY_BATCH)."""
    buf = bytearray(first)
    await asyncio.sleep(TTY_COALESCE)
    while len(buf) < TTY_BATCH:
        try:
            data = os.read(fd, TTY_BATCH - len(buf))
        except OSError:
            break  # EAGAIN (nothing more yet) or EIO (slave closed): the next read sorts it out
        if not data:
            break
        buf += data
    return bytes(buf)


async def _pty_tail(fd: int) -> bytes:
    """A pty master reports EIO as soon as the last slave closes, and the kernel may still be
    moving the final output into the master's buffer; look again briefly so it is not lost."""
    for _ in range(3):
        await asyncio.sleep(0.01)
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            continue
        except OSError:
            continue
        if data:
            return data
    return b""


async def _channel_to_fd(ch: Channel, fd: int) -> None:
    t = FdTransport(fd)
    try:
        while data := await ch.read():
            await t.write(data)
    except (ConnectionError, OSError) as e:
        LOG.debug("stdin relay ended", extra={"port": ch.port, "error": str(e)})
    finally:
        t.close()
        ch.close()


class Relay:
    """Copies between a process's fds and its host channels until both outputs reach EOF."""

    def __init__(self) -> None:
        self._out_tasks: list[asyncio.Task[None]] = []
        # [bytes read so far, writes to the host in flight]; the copy tasks update it.
        self._progress = [0, 0]
        self._in_task: asyncio.Task[None] | None = None
        self._tty: int | None = None

    def start_pipes(
        self,
        chans: tuple[Channel | None, Channel | None, Channel | None],
        fds: tuple[int | None, int | None, int | None],
    ) -> None:
        cin, cout, cerr = chans
        fin, fout, ferr = fds
        if cin is not None and fin is not None:
            self._in_task = asyncio.create_task(_channel_to_fd(cin, fin))
        else:
            _close(cin, fin)
        for ch, fd in ((cout, fout), (cerr, ferr)):
            if ch is not None and fd is not None:
                self._out_tasks.append(asyncio.create_task(_fd_to_channel(fd, ch, progress=self._progress)))
            elif fd is not None:
                # Nobody listens: drain so the process never blocks on a full pipe.
                self._out_tasks.append(asyncio.create_task(_discard(fd)))
            else:
                _close(ch, None)

    def start_tty(self, master: int, cin: Channel | None, cout: Channel | None) -> None:
        """One pty: stdin in, stdout out (a TTY process has no separate stderr, as upstream).

        Takes ownership of ``master``.
        """
        self._tty = os.dup(master)
        os.set_inheritable(self._tty, False)
        if cin is not None:
            self._in_task = asyncio.create_task(_channel_to_fd(cin, os.dup(master)))
        if cout is not None:
            self._out_tasks.append(
                asyncio.create_task(_fd_to_channel(master, cout, tty=True, progress=self._progress))
            )
        else:
            self._out_tasks.append(asyncio.create_task(_discard(master)))

    def resize(self, height: int, width: int) -> None:
        if self._tty is None:
            raise OSError("process has no console")
        resize_tty(self._tty, height, width)

    async def wait_outputs(self, grace: float | None = None) -> bool:
        """Wait until the outputs were relayed to the end. With ``grace``, give up once that long has
        passed with nothing read and nothing on its way to the host (a descendant holds the fds open
        and is silent), or after MAX_GRACES of them in all. False if it gave up."""
        if not self._out_tasks:
            return True
        if grace is None:
            await asyncio.gather(*self._out_tasks, return_exceptions=True)
            return True
        for _ in range(MAX_GRACES):
            before = self._progress[0]
            _, pending = await asyncio.wait(self._out_tasks, timeout=grace)
            if not pending:
                return True
            if self._progress[0] == before and not self._progress[1]:
                break
        LOG.info("output still open after the process exited", extra={"pending": len(pending)})
        return False

    def close(self) -> None:
        for t in [*self._out_tasks, *([self._in_task] if self._in_task else [])]:
            t.cancel()
        if self._tty is not None:
            with contextlib.suppress(OSError):
                os.close(self._tty)
            self._tty = None


def resize_tty(fd: int, height: int, width: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


async def _discard(fd: int) -> None:
    t = FdTransport(fd)
    try:
        while await t.read():
            pass
    finally:
        t.close()


def _close(ch: Channel | None, fd: int | None) -> None:
    if ch is not None:
        ch.close()
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
