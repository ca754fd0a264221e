"""Port forwarding into a pod's network namespace, carried over the channel mux.

containerd's CRI dials ``localhost:PORT`` inside the pod's netns on the host; the shim's relay there
dials ``PORT_FORWARD_PORT`` on the mux and names the namespace and the port. The connection to
127.0.0.1:PORT is made from a socket created inside the pod's namespace in the guest, so it
reaches listeners bound to localhost as well as to the pod's address (what kubelet's port-forward
promises and what a dial to the pod IP would miss).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

from hcsshim.hvsock.abi import PORT_FORWARD_PORT
from hcsshim.hvsock.session import Channel, MuxSession

from . import log
from .netlink import in_fresh_thread, setns_path
from .network import NetworkNamespaces

LOG = log.get("portforward")
HEADER_LIMIT = 4096
CONNECT_TIMEOUT = 10.0


async def serve(session: MuxSession, namespaces: NetworkNamespaces) -> None:
    listener = await session.listen(PORT_FORWARD_PORT)
    tasks: set[asyncio.Task[None]] = set()
    while True:
        try:
            ch = await listener.accept()
        except (ConnectionError, asyncio.CancelledError):
            return
        task = asyncio.create_task(_forward(ch, namespaces))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _read_line(ch: Channel) -> bytes:
    buf = b""
    while b"\n" not in buf:
        data = await ch.read(1)
        if not data:
            raise ConnectionError("port-forward channel closed before its header")
        buf += data
        if len(buf) > HEADER_LIMIT:
            raise ValueError("port-forward header too long")
    return buf


def _socket_in(path: str, family: int) -> socket.socket:
    def work() -> socket.socket:
        with setns_path(path):
            return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)

    return in_fresh_thread(work)


async def _connect(path: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    # As containerd does in the netns: IPv4 localhost first, then IPv6.
    for family, addr in ((socket.AF_INET, ("127.0.0.1", port)), (socket.AF_INET6, ("::1", port))):
        sock = await asyncio.to_thread(_socket_in, path, family)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, addr), CONNECT_TIMEOUT)
            return sock
        except (OSError, TimeoutError) as e:
            sock.close()
            errors.append(f"{addr[0]}: {e or 'timed out'}")
    raise ConnectionRefusedError(f"localhost:{port}: " + "; ".join(errors))


async def _forward(ch: Channel, namespaces: NetworkNamespaces) -> None:
    try:
        try:
            header = json.loads(await _read_line(ch))
            port = int(header["Port"])
            if not 0 < port < 65536:
                raise ValueError(f"port {port} out of range")
            path = namespaces.path_for(str(header.get("NamespaceID") or ""))
            sock = await _connect(path, port)
        except Exception as e:
            with contextlib.suppress(ConnectionError):
                await ch.write(f"ERR {e}\n".encode())
            LOG.info("port-forward refused", extra={"error": str(e)})
            return
        await ch.write(b"OK\n")
        reader, writer = await asyncio.open_connection(sock=sock)
        await _pump(ch, reader, writer)
    finally:
        ch.close()


async def _pump(ch: Channel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    async def up() -> None:  # channel -> socket
        while data := await ch.read():
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def down() -> None:  # socket -> channel
        while data := await reader.read(65536):
            await ch.write(data)
        ch.close_write()

    tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
    try:
        await asyncio.gather(*tasks)
    except (ConnectionError, OSError):
        pass
    finally:
        for t in tasks:
            t.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
