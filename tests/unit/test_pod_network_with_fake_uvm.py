"""PodNetwork against a fake UVM and fake tap helpers: what is attached, and that a failure part way
leaves no tap behind and closes the namespace."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from hcsshim.network import pod as pod_mod
from hcsshim.network.netns import Address, Link, PodNetns, Route


class _FakeUvm:
    def __init__(self, fail_add: bool = False) -> None:
        self.fail_add = fail_add
        self.added: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.removed: list[tuple[str, str]] = []

    async def add_network_adapter(self, nic_id: str, host: dict[str, Any], guest: dict[str, Any]) -> None:
        if self.fail_add:
            raise RuntimeError("guest refused the adapter")
        self.added.append((nic_id, host, guest))

    async def remove_network_adapter(self, nic_id: str, namespace_id: str, host: dict[str, Any]) -> None:
        self.removed.append((nic_id, namespace_id))


LINK = Link(
    "eth0",
    3,
    "0a:58:0a:58:00:05",
    1450,
    "veth",
    (Address("10.88.0.5", 16, 4),),
    (Route("0.0.0.0/0", "10.88.0.1", 0, "eth0"),),
)


@pytest.fixture
def taps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    log: list[str] = []

    async def create(netns: str, tap: str, veth: str, mtu: int) -> None:
        log.append(f"create {tap} {veth} {mtu}")

    async def delete(netns: str, tap: str, veth: str) -> None:
        log.append(f"delete {tap} {veth}")

    monkeypatch.setattr(pod_mod, "create_tap", create)
    monkeypatch.setattr(pod_mod, "delete_tap", delete)
    return log


def _network() -> tuple[pod_mod.PodNetwork, int]:
    fd = os.open("/dev/null", os.O_RDONLY)
    return pod_mod.PodNetwork("/var/run/netns/cni-x", fd, PodNetns("/var/run/netns/cni-x", (LINK,))), fd


def test_attach_detach_release_with_fake_uvm(taps: list[str]) -> None:
    net, fd = _network()
    uvm = _FakeUvm()

    async def run() -> None:
        await net.attach(uvm)
        await net.detach(uvm)
        await net.release()

    asyncio.run(run())
    (nic_id, host, guest) = uvm.added[0]
    assert host["MacAddress"] == LINK.mac and host["Tap"]["Name"] == "tap0_hcs" and host["Tap"]["Mtu"] == 1450
    assert host["Tap"]["NetNsPath"] == f"/proc/{os.getpid()}/fd/{fd}"
    assert guest["NamespaceID"] == "cni-x" and guest["ID"] == nic_id
    assert uvm.removed == [(nic_id, "cni-x")]
    assert taps == ["create tap0_hcs eth0 1450", "delete tap0_hcs eth0"]
    with pytest.raises(OSError):
        os.fstat(fd)


def test_guest_failure_with_fake_uvm_removes_the_tap_and_closes_the_namespace(taps: list[str]) -> None:
    net, fd = _network()
    with pytest.raises(RuntimeError, match="guest refused"):
        asyncio.run(net.attach(_FakeUvm(fail_add=True)))
    assert taps == ["create tap0_hcs eth0 1450", "delete tap0_hcs eth0"]
    with pytest.raises(OSError):
        os.fstat(fd)
