"""The qemu backend's NIC hot add/remove against a fake QMP: the command sequence, the device's
properties, and clear errors for bad settings."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from hcsshim.hcs.errors import ErrInvalidData, ErrNotSupported, HcsError
from hcsshim.hcs.qemu import nic as nic_mod
from hcsshim.hcs.qemu.devices import DeviceSet

SETTINGS = {
    "EndpointId": "e1",
    "MacAddress": "0A:58:0A:58:00:05",
    "Tap": {"Name": "tap0_hcs", "NetNsPath": "/proc/1/fd/9", "Mtu": 1450},
}


class _FakeQmp:
    def __init__(self) -> None:
        self.fds: list[int] = []

    def send_fd_scm(self, fd: int) -> None:
        os.fstat(fd)  # still open when handed over
        self.fds.append(fd)


class _FakeSystem:
    id = "vm1"

    def __init__(self, fail: str = "") -> None:
        self.qmp = _FakeQmp()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    async def execute(self, op: str, cmd: str, args: dict[str, Any] | None = None) -> Any:
        self.calls.append((cmd, dict(args or {})))
        if cmd == self.fail:
            raise HcsError(op, self.id, f"QMP {cmd} failed")
        return {}


@pytest.fixture
def fake_tap(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    opened: list[tuple[str, str]] = []

    def open_tap(netns: str, name: str) -> int:
        opened.append((netns, name))
        r, w = os.pipe()
        os.close(w)
        return r

    monkeypatch.setattr(nic_mod, "_open_tap_in", open_tap)
    return opened


def test_nic_add_with_fake_qmp_sends_getfd_netdev_and_device(fake_tap: list[tuple[str, str]]) -> None:
    system = _FakeSystem()
    devices = DeviceSet(system)  # type: ignore[arg-type]
    path = "VirtualMachine/Devices/NetworkAdapters/nic-1"
    asyncio.run(devices.modify({"ResourcePath": path, "RequestType": "Add", "Settings": SETTINGS}))
    assert fake_tap == [("/proc/1/fd/9", "tap0_hcs")]
    assert [c for c, _ in system.calls] == ["getfd", "netdev_add", "device_add"]
    fdname = system.calls[0][1]["fdname"]
    assert system.calls[1][1] == {"type": "tap", "id": "netdev-nic18", "fd": fdname, "vhost": False}
    dev = system.calls[2][1]
    assert dev["driver"] == "virtio-net-pci" and dev["mac"] == "0a:58:0a:58:00:05"
    assert (dev["addr"], dev["host_mtu"], dev["netdev"], dev["romfile"]) == ("0x18", 1450, "netdev-nic18", "")
    with pytest.raises(OSError):
        os.fstat(system.qmp.fds[0])  # our copy is closed once QEMU has its own
    assert "nic-1" in devices.nics.nics


def test_nic_device_add_failure_with_fake_qmp_removes_the_netdev(fake_tap: list[tuple[str, str]]) -> None:
    system = _FakeSystem(fail="device_add")
    devices = DeviceSet(system)  # type: ignore[arg-type]
    with pytest.raises(HcsError, match="device_add"):
        asyncio.run(devices.nics.add("nic-1", SETTINGS))
    assert system.calls[-1] == ("netdev_del", {"id": "netdev-nic18"})
    assert not devices.nics.nics


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({**SETTINGS, "MacAddress": "nope"}, "MacAddress"),
        ({k: v for k, v in SETTINGS.items() if k != "Tap"}, "Tap"),
        ({**SETTINGS, "Tap": {"Name": "x" * 16, "NetNsPath": "/p"}}, "Tap.Name"),
        ({**SETTINGS, "Tap": {"Name": "t", "NetNsPath": "rel"}}, "Tap.NetNsPath"),
    ],
)
def test_nic_settings_errors_with_fake_system_name_the_field(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ErrInvalidData, match=field):
        nic_mod.parse_nic_settings("vm1", "nic-1", settings)


def test_nic_iov_settings_are_not_supported() -> None:
    with pytest.raises(ErrNotSupported, match="IovSettings"):
        nic_mod.parse_nic_settings("vm1", "nic-1", {**SETTINGS, "IovSettings": {"OffloadWeight": 100}})
