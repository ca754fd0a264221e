"""The agent's bridge server against garbage: every request gets a well-formed response and the
server keeps serving. The container runtime is a fake that refuses everything."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hcsshim import hvsock
from hcsshim.gcs import protocol as p
from hcsshim.gcs.bridge import BridgeClient
from hcsshim.guest.server import BridgeServer
from hcsshim.hvsock.abi import BRIDGE_PORT


class FakeHost:
    """Stands in for guest.runtime.Host: any operation fails with a GcsError."""

    session: Any = None
    notify: Any = None

    def __getattr__(self, name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise p.GcsError(f"fake host refuses {name}", p.Hresult.E_NOTIMPL)

        return refuse


rpc_types = st.one_of(
    st.sampled_from([p.request_type(r) for r in p.Rpc]),
    st.integers(0, 2**32 - 1).map(lambda t: p.MsgType.REQUEST | (t & 0x0FFFFFFF)),
)
bodies = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(
        st.sampled_from(["ContainerId", "ProcessId", "Settings", "Query", "Request", "ContainerConfig", "x"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=3)),
        max_size=4,
    ).map(lambda d: p.dumps(d)),
)


async def _serve_pair() -> tuple[hvsock.MuxSession, hvsock.MuxSession, BridgeServer, asyncio.Task[None]]:
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    rb, wb = await asyncio.open_connection(sock=b)
    host = hvsock.MuxSession(hvsock.StreamTransport(ra, wa), hvsock.Role.HOST).start()
    guest = hvsock.MuxSession(hvsock.StreamTransport(rb, wb), hvsock.Role.GUEST).start()
    server = BridgeServer(FakeHost(), guest)  # type: ignore[arg-type]
    task = asyncio.create_task(server.serve_forever(redial_delay=0.01))
    return host, guest, server, task


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(rpc_types, bodies), min_size=1, max_size=6))
def test_fake_host_garbage_requests_get_error_responses_and_server_keeps_serving(
    frames: list[tuple[int, bytes]],
) -> None:
    async def main() -> None:
        host, guest, _, task = await _serve_pair()
        client = await BridgeClient.connect(host, timeout=5)
        try:
            for msg_type, body in frames:
                resp = await client.request_raw(msg_type, body, timeout=5)
                assert isinstance(resp.get("Result"), int)
                if resp["Result"] != 0:
                    assert resp["ErrorMessage"] and resp["ErrorRecords"][0]["Result"] == resp["Result"]
            await client.start_container("c1", timeout=5)  # Start touches no runtime: still serving
        finally:
            await client.close()
            task.cancel()
            await guest.aclose()
            await host.aclose()

    asyncio.run(main())


def test_fake_host_lost_framing_is_answered_then_bridge_redialed() -> None:
    async def main() -> None:
        host, guest, _, task = await _serve_pair()
        listener = await host.listen(BRIDGE_PORT)
        ch = await listener.accept()
        await ch.write(p.HEADER.pack(p.request_type(p.Rpc.DUMP_STACKS), 3, 42))  # size < header
        dec = p.Decoder()
        got: list[p.Message] = []
        while not got:
            data = await asyncio.wait_for(ch.read(), 5)
            assert data
            got += dec.feed(data)
        assert got[0].id == 42 and got[0].type == p.response_type(p.request_type(p.Rpc.DUMP_STACKS))
        assert got[0].json()["Result"] == p.Hresult.VMCOMPUTE_INVALID_JSON
        assert await asyncio.wait_for(ch.read(), 5) == b""  # the agent dropped the broken bridge
        client = await BridgeClient.connect(host, timeout=5, listener=listener)  # and dialed again
        resp = await client.request_raw(p.request_type(p.Rpc.START), p.request_base("c"))
        assert resp["Result"] == 0  # Start is a no-op on the Linux GCS
        await client.close()
        listener.close()
        task.cancel()
        await guest.aclose()
        await host.aclose()

    asyncio.run(main())


def test_fake_host_requests_before_negotiation_are_refused() -> None:
    async def main() -> None:
        host, guest, _, task = await _serve_pair()
        listener = await host.listen(BRIDGE_PORT)
        ch = await listener.accept()
        client = BridgeClient(host, ch)
        resp = await client.request_raw(p.request_type(p.Rpc.DUMP_STACKS), p.request_base())
        assert resp["Result"] == p.Hresult.VMCOMPUTE_UNKNOWN_MESSAGE
        resp = await client.request_raw(
            p.request_type(p.Rpc.NEGOTIATE_PROTOCOL),
            {**p.request_base(), "MinimumVersion": 5, "MaximumVersion": 9},
        )
        assert resp["Result"] == p.Hresult.VMCOMPUTE_UNSUPPORTED_PROTOCOL_VERSION
        await client.close()
        listener.close()
        task.cancel()
        await guest.aclose()
        await host.aclose()

    asyncio.run(main())
