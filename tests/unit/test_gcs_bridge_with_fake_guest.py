"""BridgeClient against a fake guest speaking the bridge codec over a real mux session."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from hcsshim import hvsock
from hcsshim.gcs import protocol as p
from hcsshim.gcs.bridge import BridgeClient, BridgeClosedError, BridgeError, BridgeTimeoutError
from hcsshim.hvsock.abi import BRIDGE_PORT

FakeGuest = Callable[[hvsock.Channel, p.Message], Awaitable[None]]


async def _reply(ch: hvsock.Channel, msg: p.Message, body: dict[str, object]) -> None:
    await ch.write(p.encode(p.response_type(msg.type), msg.id, {"Result": 0, **body}))


async def _fake_guest(session: hvsock.MuxSession, handle: FakeGuest) -> None:
    ch = await session.dial(BRIDGE_PORT, timeout=5)
    dec = p.Decoder()
    while data := await ch.read():
        for msg in dec.feed(data):
            if p.rpc_of(msg.type) == p.Rpc.NEGOTIATE_PROTOCOL:
                await _reply(ch, msg, {"Version": 4, "Capabilities": p.capabilities()})
            else:
                await handle(ch, msg)


def _run(handle: FakeGuest, body: Callable[[BridgeClient, list[dict[str, object]]], Awaitable[None]]) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        ra, wa = await asyncio.open_connection(sock=a)
        rb, wb = await asyncio.open_connection(sock=b)
        host = hvsock.MuxSession(hvsock.StreamTransport(ra, wa), hvsock.Role.HOST).start()
        guest = hvsock.MuxSession(hvsock.StreamTransport(rb, wb), hvsock.Role.GUEST).start()
        listener = await host.listen(BRIDGE_PORT)
        fake = asyncio.create_task(_fake_guest(guest, handle))
        notes: list[dict[str, object]] = []
        client = await BridgeClient.connect(host, timeout=5, notify=notes.append, listener=listener)
        try:
            assert client.negotiated is not None and client.negotiated.version == 4
            await asyncio.wait_for(body(client, notes), 20)
        finally:
            await client.close()
            fake.cancel()
            await guest.aclose()
            await host.aclose()

    asyncio.run(main())


def test_fake_guest_response_matching_out_of_order_and_notifications() -> None:
    held: list[tuple[hvsock.Channel, p.Message]] = []

    async def handle(ch: hvsock.Channel, msg: p.Message) -> None:
        held.append((ch, msg))
        if len(held) == 2:
            # Answer in reverse order, with a notification in between.
            await _reply(ch, held[1][1], {"ExitCode": 2})
            await ch.write(p.encode(p.NOTIFY_CONTAINER, 0, p.container_notification("c1", "UnexpectedExit")))
            await _reply(ch, held[0][1], {"ExitCode": 1})

    async def body(client: BridgeClient, notes: list[dict[str, object]]) -> None:
        first = asyncio.create_task(client.wait_process("c1", 10))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(client.wait_process("c1", 11))
        assert await first == 1 and await second == 2
        assert notes and notes[0]["ContainerId"] == "c1" and notes[0]["Type"] == "UnexpectedExit"
        body_sent = held[0][1].json()
        assert body_sent["ProcessId"] == 10 and body_sent["TimeoutInMs"] == p.INFINITE_WAIT_TIMEOUT

    _run(handle, body)


def test_fake_guest_error_response_raises_bridge_error() -> None:
    async def handle(ch: hvsock.Channel, msg: p.Message) -> None:
        err = p.error_response(p.GcsError("no such container", p.Hresult.VMCOMPUTE_SYSTEM_NOT_FOUND))
        await ch.write(p.encode(p.response_type(msg.type), msg.id, err))

    async def body(client: BridgeClient, notes: list[dict[str, object]]) -> None:
        with pytest.raises(BridgeError, match=r"Start c9 failed .*no such container") as info:
            await client.start_container("c9")
        assert info.value.result == p.Hresult.VMCOMPUTE_SYSTEM_NOT_FOUND

    _run(handle, body)


def test_fake_guest_silent_call_times_out_naming_the_operation() -> None:
    async def handle(ch: hvsock.Channel, msg: p.Message) -> None:
        return None

    async def body(client: BridgeClient, notes: list[dict[str, object]]) -> None:
        with pytest.raises(BridgeTimeoutError, match="DeleteContainerState c7 timed out"):
            await client.delete_container_state("c7", timeout=0.2)

    _run(handle, body)


def test_fake_guest_going_away_mid_call_and_fail() -> None:
    async def handle(ch: hvsock.Channel, msg: p.Message) -> None:
        if p.rpc_of(msg.type) == p.Rpc.DUMP_STACKS:
            ch.close()

    async def body(client: BridgeClient, notes: list[dict[str, object]]) -> None:
        with pytest.raises(BridgeClosedError, match="DumpStacks"):
            await client.dump_stacks()
        with pytest.raises(BridgeClosedError):
            await client.start_container("c1")

    _run(handle, body)

    async def never(ch: hvsock.Channel, msg: p.Message) -> None:
        return None

    async def body2(client: BridgeClient, notes: list[dict[str, object]]) -> None:
        pending = asyncio.create_task(client.wait_process("c1", 5))
        await asyncio.sleep(0.05)
        await client.fail("VM terminated")
        with pytest.raises(BridgeClosedError, match="WaitForProcess c1 pid 5 aborted: VM terminated"):
            await pending

    _run(never, body2)
