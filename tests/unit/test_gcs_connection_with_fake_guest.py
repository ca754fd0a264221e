"""GuestConnection: listen before the guest dials, drain its log, negotiate, and hand the guest's
notifications on as typed ContainerExit / OomKill events (a fake guest over a real mux session)."""

from __future__ import annotations

import asyncio
import socket

from hcsshim import hvsock
from hcsshim.gcs import protocol as p
from hcsshim.gcs.connection import ContainerExit, GuestConnection, OomKill, dispatcher, parse_notification
from hcsshim.hvsock.abi import BRIDGE_PORT, LOG_PORT


def test_notifications_parse_into_typed_events() -> None:
    assert parse_notification(p.oom_notification("c1", 3)) == OomKill("c1", 3)
    assert parse_notification(p.container_notification("c1", "GracefulExit", result=7)) == ContainerExit(
        "c1", "GracefulExit", 7
    )
    assert parse_notification({"Type": "UnexpectedExit"}) is None  # names no container
    odd = {"ContainerId": "c2", "Type": "OomKilled", "ResultInfo": "{not a number}"}
    assert parse_notification(odd) == OomKill("c2", 1)


def test_dispatcher_routes_each_kind_to_its_subscriber() -> None:
    exits: list[ContainerExit] = []
    ooms: list[OomKill] = []
    notify = dispatcher(exits.append, ooms.append)
    notify(p.oom_notification("c1"))
    notify(p.container_notification("c1", "UnexpectedExit"))
    notify({"Type": "Started"})
    assert ooms == [OomKill("c1", 1)] and exits == [ContainerExit("c1", "UnexpectedExit", 0)]
    dispatcher(None, None)(p.oom_notification("c1"))  # nobody subscribed: dropped, no error


async def _fake_guest(session: hvsock.MuxSession, log_lines: list[bytes]) -> None:
    # Like the agent: the log channel first, then the bridge; it answers NegotiateProtocol, sends an
    # OOM kill and an exit, then echoes nothing more.
    log = await session.dial(LOG_PORT, timeout=5)
    for line in log_lines:
        await log.write(line)
    ch = await session.dial(BRIDGE_PORT, timeout=5)
    dec = p.Decoder()
    while data := await ch.read():
        for msg in dec.feed(data):
            if p.rpc_of(msg.type) == p.Rpc.NEGOTIATE_PROTOCOL:
                body = {"Result": 0, "Version": 4, "Capabilities": p.capabilities()}
                await ch.write(p.encode(p.response_type(msg.type), msg.id, body))
                await ch.write(p.encode(p.NOTIFY_OOM, 0, p.oom_notification("c1", 2)))
                await ch.write(p.encode(p.NOTIFY_CONTAINER, 0, p.container_notification("c1", "ForcedExit")))


def test_fake_guest_connection_drains_the_log_negotiates_and_types_notifications() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        ra, wa = await asyncio.open_connection(sock=a)
        rb, wb = await asyncio.open_connection(sock=b)
        host = hvsock.MuxSession(hvsock.StreamTransport(ra, wa), hvsock.Role.HOST).start()
        guest = hvsock.MuxSession(hvsock.StreamTransport(rb, wb), hvsock.Role.GUEST).start()
        conn = GuestConnection(host, "fake")
        exits: list[ContainerExit] = []
        ooms: list[OomKill] = []
        conn.subscribe(on_exit=exits.append, on_oom=ooms.append)
        await conn.listen(guest_log=True)  # before the guest can dial
        fake = asyncio.create_task(_fake_guest(guest, [b"gcs starting\nlistening", b" on the bridge\n"]))
        before: list[str] = []

        async def identity() -> None:
            before.append("sent")

        try:
            client = await conn.connect(5, before=identity)
            assert before == ["sent"]
            assert client.negotiated is not None and client.negotiated.version == 4
            assert conn.oom_notifications
            for _ in range(100):
                if exits and len(conn.guest_log) == 2:
                    break
                await asyncio.sleep(0.02)
            assert ooms == [OomKill("c1", 2)]
            assert exits == [ContainerExit("c1", "ForcedExit", 0)]
            assert conn.guest_log == ["gcs starting", "listening on the bridge"]
            await conn.fail("utility VM fake exited: killed")
            assert client.closed
        finally:
            await conn.close("test over")
            fake.cancel()
            await guest.aclose()

    asyncio.run(main())
