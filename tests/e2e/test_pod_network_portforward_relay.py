"""The port-forward relay end to end without a VM: the host relay in one network namespace (the
"CNI netns"), the guest's forwarder serving a second one (the "pod netns in the guest"), joined by a
real channel mux over a socketpair. A client dialing localhost:PORT in the first namespace reaches
a server bound to localhost:PORT in the second, as containerd's PortForward does."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator

import pytest

from hcsshim import hvsock
from hcsshim.guest import portforward as guest_pf
from hcsshim.guest.netlink import in_fresh_thread, setns_path
from hcsshim.guest.network import NetworkNamespaces
from hcsshim.hvsock.abi import PORT_FORWARD_PORT
from hcsshim.network.cmd import run_in
from hcsshim.network.portforward import PortForwardRelay, _listen_in

pytestmark = [pytest.mark.e2e, pytest.mark.root]


def _netns() -> Iterator[str]:
    name = f"hcs-pf-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def host_ns() -> Iterator[str]:
    yield from _netns()


@pytest.fixture
def guest_ns() -> Iterator[str]:
    yield from _netns()


class _FakeNamespaces(NetworkNamespaces):
    """The guest's registry with one pod namespace that is a namespace on this host."""

    def __init__(self, ns_id: str, path: str) -> None:
        super().__init__()
        self._path = (ns_id, path)

    def path_for(self, namespace_id: str) -> str:
        if namespace_id == self._path[0]:
            return self._path[1]
        return super().path_for(namespace_id)


def _client_socket(path: str) -> socket.socket:
    def work() -> socket.socket:
        with setns_path(path):
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    return in_fresh_thread(work)


async def _scenario(host_ns: str, guest_ns: str) -> tuple[bytes, bytes, str]:
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_unix_connection(sock=a)
    rb, wb = await asyncio.open_unix_connection(sock=b)
    host = hvsock.MuxSession(hvsock.StreamTransport(ra, wa), hvsock.Role.HOST).start()
    guest = hvsock.MuxSession(hvsock.StreamTransport(rb, wb), hvsock.Role.GUEST).start()
    serve = asyncio.create_task(guest_pf.serve(guest, _FakeNamespaces("pod-x", guest_ns)))

    # A server in the "guest" pod namespace bound to localhost only.
    server_sock = await asyncio.to_thread(_listen_in, guest_ns)
    port = server_sock.getsockname()[1]

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read(100)
        w.write(b"echo:" + data)
        await w.drain()
        w.close()

    server = await asyncio.start_server(echo, sock=server_sock)

    async def dial() -> hvsock.Channel:
        return await host.dial(PORT_FORWARD_PORT, timeout=5)

    relay = PortForwardRelay(host_ns, "pod-x", dial)
    await relay.start()
    try:
        _, rules, _ = await run_in(host_ns, "iptables", "-t", "nat", "-S", "OUTPUT")
        client = await asyncio.to_thread(_client_socket, host_ns)
        client.setblocking(False)
        await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", port))
        cr, cw = await asyncio.open_connection(sock=client)
        cw.write(b"ping")
        await cw.drain()
        got = await asyncio.wait_for(cr.read(100), 10)
        cw.close()
        # A port nothing listens on in the guest: the connection is closed without data.
        refused = await asyncio.to_thread(_client_socket, host_ns)
        refused.setblocking(False)
        await asyncio.get_running_loop().sock_connect(
            refused, ("127.0.0.1", port + 1 if port < 65535 else port - 1)
        )
        rr, rw = await asyncio.open_connection(sock=refused)
        nothing = await asyncio.wait_for(rr.read(100), 10)
        rw.close()
    finally:
        await relay.stop()
        server.close()
        serve.cancel()
        await host.aclose()
        await guest.aclose()
    _, after, _ = await run_in(host_ns, "iptables", "-t", "nat", "-S", "OUTPUT")
    return got, nothing, rules + "\n---\n" + after


def test_relay_reaches_a_localhost_listener_in_the_guest_namespace(host_ns: str, guest_ns: str) -> None:
    got, nothing, rules = asyncio.run(_scenario(host_ns, guest_ns))
    assert got == b"echo:ping"
    assert nothing == b""
    before, after = rules.split("\n---\n")
    assert "REDIRECT" in before
    assert "REDIRECT" not in after, "the relay's iptables rule outlived it"
    assert os.path.exists(host_ns)
