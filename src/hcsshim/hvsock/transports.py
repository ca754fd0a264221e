"""Byte-stream transports a mux session runs over, and the one parser of HvSocket addresses.

Address forms (``open_transport``):

- ``unix:PATH``: dial a unix socket (the host end of QEMU's virtio-serial chardev, or a local agent);
- ``virtio:PATH``: open a virtio-serial port's char device (the guest end; empty PATH: the mux port);
- ``vsock:PORT`` or ``vsock:CID:PORT``: dial AF_VSOCK (CID defaults to the host, 2).

A dialer's view: the qemu backend's own ``vsock:<guest cid>:<host port>`` address names a listener
the backend holds and the guest dials (hcs.qemu.vsock), so the host side accepts there instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import threading
from dataclasses import dataclass
from typing import Protocol

from hcsshim.hvsock.abi import BRIDGE_PORT, VIRTIO_MUX_DEVICE, VMADDR_CID_HOST


class Transport(Protocol):
    async def read(self) -> bytes:
        """Some bytes, or b"" at end of stream."""
        ...

    async def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class StreamTransport:
    """An asyncio stream pair (unix socket, vsock socket, TCP)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        return await self._reader.read(256 * 1024)

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    def close(self) -> None:
        self._writer.close()


class FdTransport:
    """A raw file descriptor, e.g. the guest end of a virtio-serial port (a char device).

    Uses the event loop when the fd is pollable and falls back to blocking I/O in threads when it is
    not (epoll refuses some fds with EPERM).

    ``wait_for_peer``: a virtio-serial port reads as end-of-file while nothing is connected to the
    host side; until the first byte arrives, treat that as "not yet" and poll again.
    """

    def __init__(self, fd: int, *, threaded: bool | None = None, wait_for_peer: bool = False) -> None:
        self._fd = fd
        self._closed = False
        self._waiting_for_peer = wait_for_peer
        self._threaded = threaded if threaded is not None else not _pollable(fd)
        if not self._threaded:
            os.set_blocking(fd, False)
        self._wlock = threading.Lock()

    async def read(self) -> bytes:
        while True:
            data = await self._read_once()
            if data or not self._waiting_for_peer or self._closed:
                self._waiting_for_peer = False
                return data
            await asyncio.sleep(0.05)

    async def _read_once(self) -> bytes:
        if self._closed:
            return b""
        loop = asyncio.get_running_loop()
        if self._threaded:
            return await loop.run_in_executor(None, self._blocking_read)
        while True:
            try:
                return os.read(self._fd, 256 * 1024)
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno in (errno.EIO, errno.EBADF, errno.ECONNRESET):
                    return b""
                raise
            await _wait_fd(loop, self._fd, readable=True)

    def _blocking_read(self) -> bytes:
        try:
            return os.read(self._fd, 256 * 1024)
        except OSError:
            return b""

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            if self._closed:
                raise ConnectionResetError("transport closed")
            if self._threaded:
                n = await loop.run_in_executor(None, self._blocking_write, bytes(view))
            else:
                try:
                    n = os.write(self._fd, view)
                except BlockingIOError:
                    await _wait_fd(loop, self._fd, readable=False)
                    continue
            view = view[n:]

    def _blocking_write(self, data: bytes) -> int:
        with self._wlock:
            return os.write(self._fd, data)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(self._fd)


def _pollable(fd: int) -> bool:
    import select

    ep = select.epoll()
    try:
        ep.register(fd, select.EPOLLIN)
        return True
    except OSError:
        return False
    finally:
        ep.close()


async def _wait_fd(loop: asyncio.AbstractEventLoop, fd: int, *, readable: bool) -> None:
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if readable:
        loop.add_reader(fd, ready)
    else:
        loop.add_writer(fd, ready)
    try:
        await fut
    finally:
        if readable:
            loop.remove_reader(fd)
        else:
            loop.remove_writer(fd)


async def connect_unix(path: str) -> StreamTransport:
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    return StreamTransport(reader, writer)


def open_char_device(path: str) -> FdTransport:
    return FdTransport(os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC), wait_for_peer=True)


async def connect_vsock(port: int, cid: int = VMADDR_CID_HOST) -> StreamTransport:
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (cid, port))
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    return StreamTransport(reader, writer)


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed HvSocket address: ``scheme`` is unix, virtio or vsock."""

    scheme: str
    path: str = ""
    cid: int = VMADDR_CID_HOST
    port: int = BRIDGE_PORT


ADDRESS_FORMS = "unix:PATH, virtio:[PATH] or vsock:[CID:]PORT"
_U32 = 0xFFFFFFFF


def parse_address(address: str) -> Address:
    """Raises ValueError naming the address and what is wrong with it."""
    scheme, sep, rest = address.partition(":")
    if not sep:
        raise ValueError(f"HvSocket address {address!r} has no scheme (want {ADDRESS_FORMS})")
    if scheme == "unix":
        if not rest:
            raise ValueError(f"HvSocket address {address!r} names no socket path")
        return Address("unix", path=rest)
    if scheme == "virtio":
        return Address("virtio", path=rest or VIRTIO_MUX_DEVICE)
    if scheme == "vsock":
        parts = rest.split(":") if rest else []
        if len(parts) > 2:
            raise ValueError(f"HvSocket address {address!r}: want vsock:PORT or vsock:CID:PORT")
        try:
            numbers = [int(x, 0) for x in parts]
        except ValueError:
            raise ValueError(f"HvSocket address {address!r}: CID and port must be integers") from None
        if any(not 0 <= n <= _U32 for n in numbers):
            raise ValueError(f"HvSocket address {address!r}: CID and port must be 0..{_U32:#x}")
        if len(numbers) == 2:
            return Address("vsock", cid=numbers[0], port=numbers[1])
        return Address("vsock", port=numbers[0] if numbers else BRIDGE_PORT)
    raise ValueError(f"unsupported HvSocket address {address!r} (want {ADDRESS_FORMS})")


async def open_transport(address: str) -> Transport:
    """Dial (or open) ``address``; see the module docstring for the forms."""
    a = parse_address(address)
    if a.scheme == "unix":
        return await connect_unix(a.path)
    if a.scheme == "virtio":
        return open_char_device(a.path)
    return await connect_vsock(a.port, a.cid)
