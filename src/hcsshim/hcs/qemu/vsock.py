"""vsock as the HvSocket stand-in, on hosts that have /dev/vhost-vsock.

Where the host has vhost-vsock (and `HCSSHIM_HVSOCKET` is not `virtio-serial`), the qemu backend:
1. reserves a guest CID: it opens /dev/vhost-vsock itself and sets a free CID (>= 3) on that fd with
   VHOST_VSOCK_SET_GUEST_CID; the kernel refuses a CID another VM holds (EADDRINUSE), so the
   reservation is race-free, and QEMU inherits the fd (`vhost-vsock-pci,vhostfd=`), as kata does;
2. listens on AF_VSOCK (VMADDR_CID_ANY, a kernel-chosen port) before QEMU starts;
3. adds `-device vhost-vsock-pci,guest-cid=<cid>,vhostfd=<fd>` and `hcsshim.transport=vsock:2:<port>`
   to the kernel command line (the image's /init hands it to the agent, which dials the host);
4. accepts the guest's connection, from that CID only, and the mux session runs over it exactly as
   it does over the virtio-serial port.
Otherwise nothing changes: the virtio-serial path is the default on hosts without vhost-vsock."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import random
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hcsshim import hvsock as mux
from hcsshim import settings
from hcsshim.hcs.errors import ErrNotSupported
from hcsshim.hvsock.abi import VMADDR_CID_HOST

log = logging.getLogger(__name__)

VHOST_VSOCK_DEVICE = "/dev/vhost-vsock"
ENV = settings.HVSOCKET_ENV
TRANSPORT_VSOCK = "vsock"
TRANSPORT_VIRTIO_SERIAL = "virtio-serial"
# _IOW(VHOST_VIRTIO=0xAF, 0x60, __u64)
VHOST_VSOCK_SET_GUEST_CID = 0x4008AF60
VMADDR_CID_ANY = 0xFFFFFFFF
VMADDR_PORT_ANY = 0xFFFFFFFF
MIN_GUEST_CID = 3
MAX_GUEST_CID = 0x7FFFFFFF
CID_ATTEMPTS = 128

_SERIAL_NAMES = ("virtio-serial", "virtio", "serial")


@dataclass(frozen=True)
class Decision:
    transport: str
    reason: str


def probe(device: str = VHOST_VSOCK_DEVICE) -> tuple[bool, str]:
    """(usable, why): the device exists and opens read-write, and AF_VSOCK sockets can be made."""
    if not hasattr(socket, "AF_VSOCK"):
        return False, "this Python has no AF_VSOCK"
    if not os.path.exists(device):
        return False, f"{device} does not exist"
    try:
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return False, f"{device} cannot be opened: {e.strerror}"
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError as e:
        return False, f"AF_VSOCK sockets are unavailable ({e.strerror}; is the vsock module loaded?)"
    return True, f"{device} is usable"


def _wanted(env: Mapping[str, str] | None) -> str:
    return (settings.current() if env is None else settings.Settings.from_environ(env)).hvsocket


def choose(
    system_id: str = "",
    env: Mapping[str, str] | None = None,
    probe_fn: Callable[[], tuple[bool, str]] = probe,
) -> Decision:
    """vsock when usable unless `HCSSHIM_HVSOCKET=virtio-serial`; `=vsock` makes it mandatory.
    `env` stands in for the process's environment (tests)."""
    want = _wanted(env)
    if want in _SERIAL_NAMES:
        return Decision(TRANSPORT_VIRTIO_SERIAL, f"{ENV}={want}")
    ok, why = probe_fn()
    if ok:
        return Decision(TRANSPORT_VSOCK, why)
    if want == TRANSPORT_VSOCK:
        raise ErrNotSupported("CreateComputeSystem", system_id, f"{ENV}=vsock but {why}")
    return Decision(TRANSPORT_VIRTIO_SERIAL, f"{why}; using virtio-serial")


def setup(
    system_id: str = "",
    env: Mapping[str, str] | None = None,
    probe_fn: Callable[[], tuple[bool, str]] = probe,
    open_fn: Callable[[], VsockHost] | None = None,
) -> tuple[Decision, VsockHost | None]:
    """The transport for a new VM and, for vsock, its reserved CID and listener. A vsock setup that
    fails falls back to virtio-serial (with the reason) unless `HCSSHIM_HVSOCKET=vsock`."""
    decision = choose(system_id, env, probe_fn)
    if decision.transport != TRANSPORT_VSOCK:
        return decision, None
    try:
        host = (open_fn or VsockHost.open)()
    except OSError as e:
        forced = _wanted(env) == TRANSPORT_VSOCK
        if forced:
            raise ErrNotSupported("CreateComputeSystem", system_id, f"vsock setup failed: {e}") from e
        return Decision(TRANSPORT_VIRTIO_SERIAL, f"vsock setup failed ({e}); using virtio-serial"), None
    return Decision(TRANSPORT_VSOCK, f"{decision.reason}; guest CID {host.cid}, port {host.port}"), host


Ioctl = Callable[[int, int, bytes], Any]


def allocate_cid(
    device: str = VHOST_VSOCK_DEVICE,
    *,
    opener: Callable[[str, int], int] = os.open,
    ioctl: Ioctl = fcntl.ioctl,
    start: int | None = None,
) -> tuple[int, int]:
    """(vhost fd, cid): a vhost-vsock fd that holds a free guest CID. Close the fd to release it."""
    fd = opener(device, os.O_RDWR | os.O_CLOEXEC)
    try:
        span = MAX_GUEST_CID - MIN_GUEST_CID + 1
        first = start if start is not None else random.SystemRandom().randrange(MIN_GUEST_CID, MAX_GUEST_CID)
        for i in range(CID_ATTEMPTS):
            cid = MIN_GUEST_CID + (first - MIN_GUEST_CID + i) % span
            try:
                ioctl(fd, VHOST_VSOCK_SET_GUEST_CID, struct.pack("=Q", cid))
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                continue
            return fd, cid
        raise OSError(errno.EADDRINUSE, f"no free vsock guest CID in {CID_ATTEMPTS} attempts")
    except BaseException:
        os.close(fd)
        raise


def listen(port: int = VMADDR_PORT_ANY) -> socket.socket:
    """A non-blocking AF_VSOCK listener on (VMADDR_CID_ANY, port); the default port is kernel-chosen."""
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind((VMADDR_CID_ANY, port))
        sock.listen(4)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def transport_param(port: int) -> str:
    """What the image's /init reads and hands to the agent (`--transport vsock:CID:PORT`)."""
    return f"hcsshim.transport=vsock:{VMADDR_CID_HOST}:{port}"


def with_kernel_param(cmdline: str, param: str) -> str:
    """Add a kernel parameter before ` -- ` (what follows it is init's argv)."""
    head, sep, tail = cmdline.partition(" -- ")
    if not sep and cmdline.startswith("-- "):
        head, sep, tail = "", " -- ", cmdline[3:]
    kept = [a for a in head.split() if not a.startswith("hcsshim.transport=")]
    head = " ".join([*kept, param])
    return f"{head}{sep}{tail}"


class VsockHost:
    """The host end for one VM: the CID reservation (vhost fd) and the listener."""

    def __init__(self, cid: int, vhost_fd: int, listener: socket.socket) -> None:
        self.cid = cid
        self.vhost_fd = vhost_fd
        self.listener = listener
        self.port = int(listener.getsockname()[1])
        self._closed = False
        self._server: asyncio.Server | None = None
        self._connected: asyncio.Future[mux.StreamTransport] | None = None

    @classmethod
    def open(
        cls,
        device: str = VHOST_VSOCK_DEVICE,
        *,
        allocate: Callable[[str], tuple[int, int]] = allocate_cid,
        listen_fn: Callable[[], socket.socket] = listen,
    ) -> VsockHost:
        fd, cid = allocate(device)
        try:
            return cls(cid, fd, listen_fn())
        except BaseException:
            os.close(fd)
            raise

    def device_args(self) -> list[str]:
        return ["-device", f"vhost-vsock-pci,id=vsock0,guest-cid={self.cid},vhostfd={self.vhost_fd}"]

    def apply(self, argv: list[str]) -> list[str]:
        """QEMU's argv with the vsock device added and the agent pointed at the host's port."""
        out = list(argv)
        i = out.index("-append")
        out[i + 1] = with_kernel_param(out[i + 1], transport_param(self.port))
        return out + self.device_args()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def address(self) -> str:
        return f"vsock:{self.cid}:{self.port}"

    def transport(self) -> DeferredTransport:
        """The mux transport over the connection the guest will make (ComputeSystem.open_guest_transport)."""
        return DeferredTransport(asyncio.ensure_future(self.accept()))

    async def accept(self) -> mux.StreamTransport:
        """The guest's connection; connections from any other CID are refused."""
        if self._closed:
            raise ConnectionAbortedError("the vsock listener is closed")
        loop = asyncio.get_running_loop()
        if self._server is None:
            self._connected = loop.create_future()
            self._server = await asyncio.start_server(self._on_connection, sock=self.listener, limit=1 << 20)
        assert self._connected is not None
        return await asyncio.shield(self._connected)

    def peer_cid(self, writer: asyncio.StreamWriter) -> int:
        """The CID a connection comes from (AF_VSOCK peername is (cid, port)); -1 if unknown."""
        peer = writer.get_extra_info("peername")
        return peer[0] if isinstance(peer, tuple) and peer and isinstance(peer[0], int) else -1

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_cid = self.peer_cid(writer)
        if peer_cid != self.cid or self._connected is None or self._connected.done():
            log.warning("refused vsock connection", extra={"peer_cid": peer_cid, "expected_cid": self.cid})
            writer.close()
            return
        self._connected.set_result(mux.StreamTransport(reader, writer))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(ConnectionAbortedError("the VM stopped before the guest connected"))
            self._connected.exception()  # retrieved: a waiter may be gone already
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(OSError):
            self.listener.close()
        with contextlib.suppress(OSError):
            os.close(self.vhost_fd)


class DeferredTransport:
    """A mux Transport whose stream is the connection the guest makes after boot: the host's mux
    session (and its listeners) exists before the guest dials, as with the virtio-serial socket."""

    def __init__(
        self, accept: asyncio.Future[mux.StreamTransport] | asyncio.Task[mux.StreamTransport]
    ) -> None:
        self._accept = accept
        self._closed = asyncio.Event()

    async def _inner(self) -> mux.Transport | None:
        if not self._accept.done():
            closed: asyncio.Future[Any] = asyncio.ensure_future(self._closed.wait())
            accept: asyncio.Future[Any] = self._accept
            try:
                await asyncio.wait({accept, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
        if self._closed.is_set() or self._accept.cancelled():
            return None
        err = self._accept.exception()
        if err is not None:
            raise ConnectionError(f"accepting the guest's vsock connection failed: {err}") from err
        return self._accept.result()

    async def read(self) -> bytes:
        inner = await self._inner()
        return b"" if inner is None else await inner.read()

    async def write(self, data: bytes) -> None:
        inner = await self._inner()
        if inner is None:
            raise ConnectionResetError("transport closed")
        await inner.write(data)

    def close(self) -> None:
        self._closed.set()
        if not self._accept.done():
            self._accept.cancel()
        elif not self._accept.cancelled() and self._accept.exception() is None:
            self._accept.result().close()
