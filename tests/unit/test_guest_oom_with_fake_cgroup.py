"""The guest's OOM watcher against a fake cgroup tree (v2: polled, as a regular file cannot be epolled;
v1: the eventfd the kernel would signal is signalled by the test), and the OOM notification on the
bridge between the agent's server and the host client."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

from hcsshim import hvsock
from hcsshim.gcs import protocol as p
from hcsshim.gcs.bridge import BridgeClient
from hcsshim.guest import oom
from hcsshim.guest.server import BridgeServer
from hcsshim.hvsock.abi import BRIDGE_PORT

EVENTS = "low 0\nhigh 0\nmax {max}\noom {oom}\noom_kill {kill}\noom_group_kill 0\n"


def _v2_tree(tmp: Path, rel: str) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "cgroup.controllers").write_text("cpu memory pids\n")
    d = tmp / rel
    d.mkdir(parents=True)
    (d / "memory.events").write_text(EVENTS.format(max=0, oom=0, kill=0))
    return d


def test_v2_fake_cgroup_kill_counter_rise_is_reported_once_by_polling(tmp_path: Path) -> None:
    async def main() -> None:
        d = _v2_tree(tmp_path, "containers/c1")
        (d / "memory.events").write_text(EVENTS.format(max=3, oom=1, kill=1))  # history before watch
        got: list[tuple[str, int]] = []
        w = oom.OomWatcher(lambda cid, n: got.append((cid, n)), str(tmp_path), poll_interval=0.02)
        w.watch("c1", "/containers/c1")
        w.watch("gone", "/containers/missing")  # no cgroup: nothing to watch
        assert w.watched == ["c1"]
        await asyncio.sleep(0.1)
        assert got == []  # the baseline is not a kill
        (d / "memory.events").write_text(EVENTS.format(max=9, oom=3, kill=3))
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.02)
        assert got == [("c1", 2)]
        assert w.check("c1") == 0  # already reported
        w.unwatch("c1")
        await asyncio.sleep(0.1)
        assert w.watched == [] and w._poller is None  # polling stops with the last polled container
        (d / "memory.events").write_text(EVENTS.format(max=9, oom=4, kill=4))
        assert w.check("c1") == 0
        w.close()

    asyncio.run(main())


def test_v1_fake_cgroup_eventfd_wakes_the_watcher_and_oom_without_kill_is_ignored(tmp_path: Path) -> None:
    async def main() -> None:
        memcg = tmp_path / "memory" / "pods" / "p1" / "c1"
        memcg.mkdir(parents=True)
        control = memcg / "memory.oom_control"
        control.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
        (memcg / "cgroup.event_control").write_text("")
        got: list[tuple[str, int]] = []
        w = oom.OomWatcher(lambda cid, n: got.append((cid, n)), str(tmp_path), poll_interval=60)
        w.watch("c1", "pods/p1/c1")
        efd, control_fd = w._watches["c1"].fds
        registration = (memcg / "cgroup.event_control").read_text()
        assert registration == f"{efd} {control_fd}"  # what the kernel's v1 notifier is given
        os.eventfd_write(efd, 1)  # an OOM condition that killed nothing
        await asyncio.sleep(0.05)
        assert got == []
        control.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
        os.eventfd_write(efd, 1)
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        assert got == [("c1", 1)]
        w.close()
        assert w.watched == []

    asyncio.run(main())


def test_oom_kill_count_reads_v1_and_v2_counters(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    _v2_tree(v2, "a/b")
    assert oom.oom_kill_count("/a/b", str(v2)) == 0
    assert oom.oom_kill_count("/a/none", str(v2)) is None
    v1 = tmp_path / "v1" / "memory" / "x"
    v1.mkdir(parents=True)
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 1\n")  # kernel < 4.13
    assert oom.oom_kill_count("x", str(tmp_path / "v1")) is None


class FakeHost:
    session: Any = None
    notify: Any = None
    notify_oom: Any = None


async def _pair() -> tuple[hvsock.MuxSession, hvsock.MuxSession, BridgeServer, FakeHost, asyncio.Task[None]]:
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    rb, wb = await asyncio.open_connection(sock=b)
    host = hvsock.MuxSession(hvsock.StreamTransport(ra, wa), hvsock.Role.HOST).start()
    guest = hvsock.MuxSession(hvsock.StreamTransport(rb, wb), hvsock.Role.GUEST).start()
    fake = FakeHost()
    server = BridgeServer(fake, guest)  # type: ignore[arg-type]
    task = asyncio.create_task(server.serve_forever(redial_delay=0.01))
    return host, guest, server, fake, task


def test_fake_host_oom_notification_reaches_the_bridge_client_callback() -> None:
    async def main() -> None:
        host, guest, server, fake, task = await _pair()
        got: list[dict[str, Any]] = []
        client = await BridgeClient.connect(host, timeout=5, notify=got.append)
        assert client.oom_notifications and server.oom_notifications
        fake.notify_oom("c1", 2)
        fake.notify("c1", p.NotificationType.UNEXPECTED_EXIT)
        for _ in range(200):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
        assert [(n["ContainerId"], n["Type"]) for n in got] == [("c1", "OomKilled"), ("c1", "UnexpectedExit")]
        assert p.parse_any_in_string(got[0]["ResultInfo"], "ResultInfo") == {"OomKills": 2}
        await client.close()
        task.cancel()
        await guest.aclose()
        await host.aclose()

    asyncio.run(main())


def test_fake_host_that_did_not_ask_gets_no_oom_notification() -> None:
    async def main() -> None:
        host, guest, server, fake, task = await _pair()
        listener = await host.listen(BRIDGE_PORT)
        ch = await listener.accept()
        negotiate = {**p.request_base(), "MinimumVersion": 4, "MaximumVersion": 4}  # an upstream host
        await ch.write(p.encode(p.request_type(p.Rpc.NEGOTIATE_PROTOCOL), 1, negotiate))
        dec = p.Decoder()
        got: list[p.Message] = []
        while not got:
            got += dec.feed(await asyncio.wait_for(ch.read(), 5))
        caps = got[0].json()["Capabilities"]["GuestDefinedCapabilities"]
        assert caps[p.OOM_NOTIFICATIONS_CAPABILITY] is True and not server.oom_notifications
        fake.notify_oom("c1", 1)
        fake.notify("c1", p.NotificationType.FORCED_EXIT)
        got = []
        while not got:
            got += dec.feed(await asyncio.wait_for(ch.read(), 5))
        assert [m.type for m in got] == [p.NOTIFY_CONTAINER]  # only the exit
        assert p.type_name(p.NOTIFY_OOM) == "Notify(OomKilled)"
        listener.close()
        task.cancel()
        await guest.aclose()
        await host.aclose()

    asyncio.run(main())
