"""hcsshim.hvsock: the one HvSocket address parser, and open_transport over real unix sockets and FIFOs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from hcsshim.hvsock import Address, open_transport, parse_address
from hcsshim.hvsock.abi import BRIDGE_PORT, VIRTIO_MUX_DEVICE, VMADDR_CID_HOST


@pytest.mark.parametrize(
    ("address", "want"),
    [
        ("unix:/run/x/mux.sock", Address("unix", path="/run/x/mux.sock")),
        ("virtio:/dev/vport1p1", Address("virtio", path="/dev/vport1p1")),
        ("virtio:", Address("virtio", path=VIRTIO_MUX_DEVICE)),
        ("vsock:1234", Address("vsock", cid=VMADDR_CID_HOST, port=1234)),
        ("vsock:0x40000000", Address("vsock", cid=VMADDR_CID_HOST, port=BRIDGE_PORT)),
        ("vsock:3:77", Address("vsock", cid=3, port=77)),
        ("vsock:", Address("vsock", cid=VMADDR_CID_HOST, port=BRIDGE_PORT)),
    ],
)
def test_parse_address_forms(address: str, want: Address) -> None:
    assert parse_address(address) == want


@pytest.mark.parametrize(
    ("address", "complaint"),
    [
        ("/run/x/mux.sock", "no scheme"),
        ("tcp:127.0.0.1:5", "unsupported HvSocket address 'tcp:127.0.0.1:5'"),
        ("unix:", "names no socket path"),
        ("vsock:a:b", "must be integers"),
        ("vsock:1:2:3", "vsock:CID:PORT"),
        ("vsock:4294967296", "0..0xffffffff"),
    ],
)
def test_parse_address_rejects_with_the_address_named(address: str, complaint: str) -> None:
    with pytest.raises(ValueError, match="HvSocket address") as e:
        parse_address(address)
    assert complaint in str(e.value)


def test_open_transport_unix_dials_the_socket(tmp_path: Path) -> None:
    async def main() -> bytes:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(await reader.readexactly(5))
            writer.write(b"world")
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(on_conn, str(tmp_path / "s"))
        transport = await open_transport(f"unix:{tmp_path / 's'}")
        try:
            await transport.write(b"hello")
            assert await asyncio.wait_for(got, 5) == b"hello"
            return await asyncio.wait_for(transport.read(), 5)
        finally:
            transport.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(main()) == b"world"


def test_open_transport_virtio_opens_the_char_device_path(tmp_path: Path) -> None:
    # A FIFO opened read-write stands in for the virtio-serial port: what is written comes back.
    fifo = tmp_path / "vport"
    os.mkfifo(fifo)

    async def main() -> bytes:
        transport = await open_transport(f"virtio:{fifo}")
        try:
            await transport.write(b"ping")
            return await asyncio.wait_for(transport.read(), 5)
        finally:
            transport.close()

    assert asyncio.run(main()) == b"ping"


def test_open_transport_unix_to_a_missing_socket_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        asyncio.run(open_transport(f"unix:{tmp_path / 'absent'}"))
