"""The port-forward relay in the pod's netns on the host (CRI PortForward lands here).

containerd's streaming server dials ``localhost:PORT`` inside the pod's netns. Nothing of the pod
runs there, so one iptables rule in that namespace's nat OUTPUT chain redirects every TCP
connection to 127.0.0.1 onto this relay's listener; the relay reads the original port
(SO_ORIGINAL_DST), dials the guest's port-forward service over the channel mux, and the guest
connects to localhost:PORT inside the pod's namespace in the VM (guest/portforward.py). Dialing
the pod IP over the NIC instead would miss workloads that listen on localhost only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from hcsshim.network.cmd import run_in
from hcsshim.network.errors import NetworkError

log = logging.getLogger(__name__)

SO_ORIGINAL_DST = 80
IPTABLES = "iptables"
HEADER_TIMEOUT = 15.0


class MuxChannel(Protocol):
    async def read(self, n: int = ...) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    def close_write(self) -> None: ...
    def close(self) -> None: ...


Dial = Callable[[], Awaitable[MuxChannel]]


def _listen_in(netns_path: str) -> socket.socket:
    """A listening socket on 127.0.0.1:<ephemeral> inside the namespace (own thread: setns)."""
    import ctypes
    import os

    result: list[socket.socket] = []
    errors: list[BaseException] = []

    def work() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(target, 0x40000000) != 0:
                raise OSError(ctypes.get_errno(), f"setns {netns_path}")
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", 0))
                sock.listen(128)
                sock.setblocking(False)
                result.append(sock)
            finally:
                if libc.setns(own, 0x40000000) != 0:
                    raise OSError(ctypes.get_errno(), "setns back")
        except BaseException as e:
            errors.append(e)
        finally:
            os.close(own)
            os.close(target)

    t = threading.Thread(target=work, name="pf-listen", daemon=True)
    t.start()
    t.join()
    if errors:
        for s in result:
            s.close()
        raise errors[0]
    return result[0]


def original_port(sock: socket.socket) -> int:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return int(struct.unpack_from("!H", raw, 2)[0])


class PortForwardRelay:
    def __init__(self, netns_path: str, namespace_id: str, dial: Dial) -> None:
        self.netns_path = netns_path
        self.namespace_id = namespace_id
        self._dial = dial
        self._server: asyncio.Server | None = None
        self._rule: list[str] = []
        self.port = 0
        self._conns: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        try:
            sock = await asyncio.to_thread(_listen_in, self.netns_path)
        except OSError as e:
            raise NetworkError(f"port-forward relay in {self.netns_path}: {e}") from e
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._serve, sock=sock)
        rule = ["-t", "nat", "OUTPUT", "-p", "tcp", "-d", "127.0.0.1/32"]
        rule += ["-j", "REDIRECT", "--to-ports", str(self.port)]
        try:
            await run_in(self.netns_path, IPTABLES, "-w", "5", *rule[:2], "-A", *rule[2:])
        except BaseException:
            await self.stop()
            raise
        self._rule = rule

    async def stop(self) -> None:
        if self._rule:
            rule, self._rule = self._rule, []
            rc, _, err = await run_in(
                self.netns_path, IPTABLES, "-w", "5", *rule[:2], "-D", *rule[2:], check=False
            )
            if rc != 0:
                log.info("port-forward rule already gone", extra={"netns": self.netns_path, "error": err})
        if self._server is not None:
            self._server.close()
            self._server = None
        for t in list(self._conns):
            t.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            sock = writer.get_extra_info("socket")
            port = original_port(sock)
            ch = await self._dial()
            try:
                header = json.dumps({"NamespaceID": self.namespace_id, "Port": port}) + "\n"
                await ch.write(header.encode())
                answer = await asyncio.wait_for(_read_line(ch), HEADER_TIMEOUT)
                if answer != b"OK\n":
                    # The client sees the connection close: containerd reports its dial as failed.
                    log.info(
                        "guest refused port-forward",
                        extra={"port": port, "answer": answer.decode(errors="replace")},
                    )
                    return
                await _pump(ch, reader, writer)
            finally:
                ch.close()
        except (OSError, ConnectionError, TimeoutError) as e:
            log.info("port-forward connection ended", extra={"error": str(e)})
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._conns.discard(task)


async def _read_line(ch: MuxChannel) -> bytes:
    buf = b""
    while not buf.endswith(b"\n") and len(buf) < 4096:
        data = await ch.read(1)
        if not data:
            break
        buf += data
    return buf


async def _pump(ch: MuxChannel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    async def up() -> None:  # local client -> guest
        while data := await reader.read(65536):
            await ch.write(data)
        ch.close_write()

    async def down() -> None:  # guest -> local client
        while data := await ch.read():
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
    try:
        await asyncio.gather(*tasks)
    except (ConnectionError, OSError):
        pass
    finally:
        for t in tasks:
            t.cancel()
