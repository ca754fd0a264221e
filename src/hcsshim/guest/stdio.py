"""Relaying a process's stdio to the host over mux channels (the hvsock stdio ports)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios

from hcsshim.gcs.mux import Channel, FdTransport, MuxSession

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


async def _fd_to_channel(fd: int, ch: Channel, tty: bool = False) -> None:
    t = FdTransport(fd)
    try:
        while True:
            data = await t.read()
            if not data and tty:
                data = await _pty_tail(fd)
            if not data:
                break
            await ch.write(data)
    except (ConnectionError, OSError) as e:
        LOG.debug("stdout relay ended", extra={"port": ch.port, "error": str(e)})
    finally:
        t.close()
        ch.close_write()
        ch.close()


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
                self._out_tasks.append(asyncio.create_task(_fd_to_channel(fd, ch)))
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
            self._out_tasks.append(asyncio.create_task(_fd_to_channel(master, cout, tty=True)))
        else:
            self._out_tasks.append(asyncio.create_task(_discard(master)))

    def resize(self, height: int, width: int) -> None:
        if self._tty is None:
            raise OSError("process has no console")
        fcntl.ioctl(self._tty, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    async def wait_outputs(self) -> None:
        if self._out_tasks:
            await asyncio.gather(*self._out_tasks, return_exceptions=True)

    def close(self) -> None:
        for t in [*self._out_tasks, *([self._in_task] if self._in_task else [])]:
            t.cancel()
        if self._tty is not None:
            with contextlib.suppress(OSError):
                os.close(self._tty)
            self._tty = None


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
