"""The vsock HvSocket path of the qemu backend with vhost-vsock FAKED (this host has none): the
decision, the CID reservation, the QEMU argv and kernel parameter, and the host-side accept with a
TCP socket standing in for AF_VSOCK."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from pathlib import Path

import pytest

from hcsshim import hcs, hvsock
from hcsshim.hcs.qemu import system as qemu_system
from hcsshim.hcs.qemu import vsock
from hcsshim.hcs.qemu.cmdline import Paths, build_argv
from hcsshim.hcs.qemu.config import VmConfig
from tests.support import fake_qemu
from tests.support.documents import minimal_lcow_document


def _ok() -> tuple[bool, str]:
    return True, "fake vhost-vsock is usable"


def _missing() -> tuple[bool, str]:
    return False, "/dev/vhost-vsock does not exist"


# ---- the decision ---------------------------------------------------------------------------------


def test_choose_with_fake_vsock_availability() -> None:
    assert vsock.choose("v", {}, _ok).transport == "vsock"
    serial = vsock.choose("v", {}, _missing)
    assert serial.transport == "virtio-serial" and "does not exist" in serial.reason
    forced_serial = vsock.choose("v", {"HCSSHIM_HVSOCKET": "virtio-serial"}, _ok)
    assert forced_serial.transport == "virtio-serial" and "HCSSHIM_HVSOCKET" in forced_serial.reason
    with pytest.raises(hcs.ErrNotSupported, match="HCSSHIM_HVSOCKET=vsock but /dev/vhost-vsock"):
        vsock.choose("v", {"HCSSHIM_HVSOCKET": "vsock"}, _missing)


def test_probe_missing_device(tmp_path: Path) -> None:
    ok, why = vsock.probe(str(tmp_path / "vhost-vsock"))
    assert not ok and "does not exist" in why


def test_this_host_stays_on_virtio_serial() -> None:
    if os.path.exists(vsock.VHOST_VSOCK_DEVICE):
        pytest.skip("this host has vhost-vsock")
    decision, host = vsock.setup("v", {})
    assert decision.transport == "virtio-serial" and host is None


# ---- CID reservation -------------------------------------------------------------------------------


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_allocate_cid_skips_cids_in_use_with_fake_vhost() -> None:
    opened: list[int] = []
    tried: list[int] = []

    def opener(path: str, flags: int) -> int:
        assert path == "/dev/vhost-vsock" and flags & os.O_RDWR
        fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        opened.append(fd)
        return fd

    def ioctl(fd: int, request: int, arg: bytes) -> int:
        assert request == vsock.VHOST_VSOCK_SET_GUEST_CID == 0x4008AF60
        cid = struct.unpack("=Q", arg)[0]
        tried.append(cid)
        if len(tried) < 3:
            raise OSError(errno.EADDRINUSE, "in use")
        return 0

    fd, cid = vsock.allocate_cid(opener=opener, ioctl=ioctl, start=vsock.MAX_GUEST_CID)
    try:
        # Wraps around past the top of the range back to 3; never hands out 0, 1, 2.
        assert tried == [vsock.MAX_GUEST_CID, 3, 4] and cid == 4 and fd == opened[0]
        assert _fd_open(fd)
    finally:
        os.close(fd)

    fd, cid = vsock.allocate_cid(opener=opener, ioctl=lambda *a: 0)
    os.close(fd)
    assert vsock.MIN_GUEST_CID <= cid <= vsock.MAX_GUEST_CID


def test_allocate_cid_failures_close_the_fd_with_fake_vhost() -> None:
    opened: list[int] = []

    def opener(path: str, flags: int) -> int:
        fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        opened.append(fd)
        return fd

    def denied(fd: int, request: int, arg: bytes) -> int:
        raise OSError(errno.EPERM, "denied")

    with pytest.raises(PermissionError):
        vsock.allocate_cid(opener=opener, ioctl=denied)

    def busy(fd: int, request: int, arg: bytes) -> int:
        raise OSError(errno.EADDRINUSE, "in use")

    with pytest.raises(OSError, match="no free vsock guest CID"):
        vsock.allocate_cid(opener=opener, ioctl=busy)
    assert len(opened) == 2 and not any(_fd_open(fd) for fd in opened)


# ---- argv and kernel command line --------------------------------------------------------------------


def _tcp_listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    sock.setblocking(False)
    return sock


class TcpVsockHost(vsock.VsockHost):
    """A VsockHost over TCP: the peer's CID is looked up by its source port (AF_VSOCK is faked)."""

    def __init__(self, cid: int) -> None:
        super().__init__(cid, os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC), _tcp_listener())
        self.peer_cids: dict[int, int] = {}

    def peer_cid(self, writer: asyncio.StreamWriter) -> int:
        return self.peer_cids.get(writer.get_extra_info("peername")[1], -1)


def test_apply_adds_device_and_kernel_parameter_with_fake_vhost(tmp_path: Path) -> None:
    cfg = VmConfig(
        owner="o",
        kernel="/boot/kernel",
        initrd="/boot/initrd.img",
        cmdline="8250_core.nr_uarts=0 panic=-1 quiet -- -e 1 /bin/vsockexec -e 109 /bin/gcs -loglevel debug",
        memory_mb=256,
        cpus=1,
        scsi={},
        plan9=[],
        vpmem={},
        vpmem_max_count=0,
        vpmem_max_size=0,
    )
    paths = Paths(qmp="/s/qmp", mux="/s/mux", console="/s/console", plan9_root="/s/p9")
    argv = build_argv("qemu", "vm", cfg, paths, "tcg")
    host = TcpVsockHost(cid=1234)
    try:
        out = host.apply(argv)
        i = out.index("-append")
        head, _sep, tail = out[i + 1].partition(" -- ")
        assert f"hcsshim.transport=vsock:2:{host.port}" in head.split()
        assert tail == "-e 1 /bin/vsockexec -e 109 /bin/gcs -loglevel debug"
        assert out[-2:] == ["-device", f"vhost-vsock-pci,id=vsock0,guest-cid=1234,vhostfd={host.vhost_fd}"]
        assert out[: len(argv)][:i] == argv[:i]  # nothing else changes
        assert host.address == f"vsock:1234:{host.port}"
    finally:
        host.close()
    assert not _fd_open(host.vhost_fd)
    # A transport parameter already in the document is replaced, and a bare cmdline works.
    assert vsock.with_kernel_param("a hcsshim.transport=virtio:/x b", "hcsshim.transport=vsock:2:7") == (
        "a b hcsshim.transport=vsock:2:7"
    )
    assert vsock.with_kernel_param("-- x", "p") == "p -- x"


def test_setup_falls_back_when_vsock_setup_fails_with_fake_vhost() -> None:
    def broken() -> vsock.VsockHost:
        raise OSError(errno.ENODEV, "no vhost")

    decision, host = vsock.setup("v", {}, _ok, broken)
    assert decision.transport == "virtio-serial" and "vsock setup failed" in decision.reason and host is None
    with pytest.raises(hcs.ErrNotSupported, match="vsock setup failed"):
        vsock.setup("v", {"HCSSHIM_HVSOCKET": "vsock"}, _ok, broken)
    fake = TcpVsockHost(cid=77)
    decision, host = vsock.setup("v", {}, _ok, lambda: fake)
    assert decision.transport == "vsock" and host is fake and "guest CID 77" in decision.reason
    fake.close()


# ---- the host end: accept from the guest's CID only, then the mux --------------------------------------


def test_accept_runs_mux_over_guest_connection_with_fake_vsock() -> None:
    async def run() -> None:
        host = TcpVsockHost(cid=42)
        transport = host.transport()
        session = hvsock.MuxSession(transport, hvsock.Role.HOST).start()
        listener = await session.listen(0x40000000)

        async def connect(cid: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            host.peer_cids[sock.getsockname()[1]] = cid
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", host.port))
            return await asyncio.open_connection(sock=sock)

        # Another VM dialing the port is refused.
        r, _w = await connect(99)
        assert await asyncio.wait_for(r.read(), 5) == b""
        r, w = await connect(42)
        guest = hvsock.MuxSession(hvsock.StreamTransport(r, w), hvsock.Role.GUEST).start()
        ch = await guest.dial(0x40000000, timeout=5)
        await ch.write(b"hello")
        accepted = await asyncio.wait_for(listener.accept(), 5)
        assert await accepted.readexactly(5) == b"hello"
        await guest.aclose()
        await session.aclose()
        host.close()

    asyncio.run(run())


def test_deferred_transport_closed_before_guest_connects_with_fake_vsock() -> None:
    async def run() -> None:
        host = TcpVsockHost(cid=5)
        transport = host.transport()
        reader = asyncio.create_task(transport.read())
        await asyncio.sleep(0.01)
        transport.close()
        assert await asyncio.wait_for(reader, 5) == b""
        with pytest.raises(ConnectionResetError):
            await transport.write(b"x")
        host.close()
        # A VM that stops before its guest connects fails the accept cleanly.
        host2 = TcpVsockHost(cid=6)
        t2 = host2.transport()
        pending = asyncio.create_task(t2.read())
        await asyncio.sleep(0.01)
        host2.close()
        with pytest.raises(ConnectionError, match="accepting the guest's vsock connection failed"):
            await asyncio.wait_for(pending, 5)

    asyncio.run(run())


# ---- the qemu backend with vsock chosen ------------------------------------------------------------------


def test_qemu_system_reports_vsock_with_fake_qemu_and_fake_vhost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prelude = f'printf "%s\\n" "$@" >{tmp_path}/argv\nls /proc/$$/fd >{tmp_path}/fds\n'
    fake_qemu.install(tmp_path, monkeypatch, prelude=prelude)
    fake = TcpVsockHost(cid=321)
    monkeypatch.setattr(vsock, "setup", lambda system_id: (vsock.Decision("vsock", "fake vhost-vsock"), fake))

    async def run() -> None:
        cs = await hcs.create_compute_system("vs1", minimal_lcow_document("vs1", str(tmp_path)))
        assert isinstance(cs, qemu_system.QemuComputeSystem)
        backend = (await cs.properties())["Backend"]
        assert backend["HvSocketTransport"] == "vsock" and backend["GuestCid"] == 321
        assert backend["VsockPort"] == fake.port
        assert cs.hvsocket_address == f"vsock:321:{fake.port}"
        argv = (tmp_path / "argv").read_text().splitlines()
        assert f"vhost-vsock-pci,id=vsock0,guest-cid=321,vhostfd={fake.vhost_fd}" in argv
        assert f"hcsshim.transport=vsock:2:{fake.port}" in argv[argv.index("-append") + 1]
        assert str(fake.vhost_fd) in (tmp_path / "fds").read_text().split()  # QEMU inherits it
        transport = await cs.open_guest_transport()  # what UtilityVM.start runs the mux over
        assert isinstance(transport, vsock.DeferredTransport)
        transport.close()
        await cs.terminate()
        await cs.wait()
        assert fake.closed

    asyncio.run(run())


def test_qemu_system_reports_virtio_serial_with_fake_qemu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_qemu.install(tmp_path, monkeypatch)
    monkeypatch.setenv("HCSSHIM_HVSOCKET", "virtio-serial")

    async def run() -> None:
        cs = await hcs.create_compute_system("vs2", minimal_lcow_document("vs2", str(tmp_path)))
        backend = (await cs.properties())["Backend"]
        assert backend["HvSocketTransport"] == "virtio-serial"
        assert backend["HvSocketTransportReason"] == "HCSSHIM_HVSOCKET=virtio-serial"
        assert "GuestCid" not in backend
        assert (cs.hvsocket_address or "").startswith("unix:")
        transport = await cs.open_guest_transport()  # dials the fake's mux chardev socket
        assert isinstance(transport, hvsock.StreamTransport)
        transport.close()
        await cs.terminate()

    asyncio.run(run())


def test_real_af_vsock_listener_gets_a_port() -> None:
    try:
        sock = vsock.listen()
    except (OSError, AttributeError) as e:
        pytest.skip(f"no AF_VSOCK here: {e}")
    try:
        cid, port = sock.getsockname()
        assert cid == vsock.VMADDR_CID_ANY and 0 < port < vsock.VMADDR_PORT_ANY
    finally:
        sock.close()
