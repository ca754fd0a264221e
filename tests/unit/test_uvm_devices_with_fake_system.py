"""UtilityVM device pairing (host modify + guest modify), rollback and reference counts, against a
fake ComputeSystem and a fake bridge."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hcsshim.hcs import ComputeSystem, Document, ExitInfo, HcsError, SystemState, document_to_dict
from hcsshim.hvsock.abi import SCSI_CONTROLLER_GUIDS
from hcsshim.uvm.errors import UvmError
from hcsshim.uvm.utility_vm import UtilityVM

G0 = SCSI_CONTROLLER_GUIDS[0]


class FakeSystem(ComputeSystem):
    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.id = "fake@vm"
        self.calls = calls
        self.fail_next_modify = False

    async def start(self) -> None: ...

    async def modify(self, request: Document) -> None:
        req = document_to_dict(request)
        if self.fail_next_modify:
            self.fail_next_modify = False
            raise HcsError("Modify", self.id, "fake host failure")
        self.calls.append(("host", (req["RequestType"], req["ResourcePath"])))

    async def properties(self, query: Document | None = None) -> dict[str, Any]:
        return {}

    async def pause(self) -> None: ...
    async def resume(self) -> None: ...
    async def shutdown(self) -> None: ...
    async def terminate(self) -> None: ...

    async def wait(self) -> ExitInfo:
        return ExitInfo("terminated")

    @property
    def state(self) -> SystemState:
        return SystemState.RUNNING

    @property
    def exit_info(self) -> ExitInfo | None:
        return None


class FakeBridge:
    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.calls = calls
        self.fail_next = False

    async def modify_settings(self, request: dict[str, Any], container_id: str = "") -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("fake guest failure")
        self.calls.append(("guest", (request["RequestType"], request["ResourceType"], request["Settings"])))

    async def fail(self, reason: str) -> None: ...


def make_uvm() -> tuple[UtilityVM, FakeSystem, FakeBridge, list[tuple[str, Any]]]:
    calls: list[tuple[str, Any]] = []
    system = FakeSystem(calls)
    doc = {"VirtualMachine": {"Devices": {"Scsi": {G0: {"Attachments": {"0": {"Path": "/rootfs.vhd"}}}}}}}
    vm = UtilityVM("fake", system, doc)
    bridge = FakeBridge(calls)
    vm._bridge = bridge  # type: ignore[assignment]  # a fake bridge
    return vm, system, bridge, calls


def test_scsi_add_is_host_then_guest_and_refcounted_with_fake_system() -> None:
    async def run() -> None:
        vm, _, _, calls = make_uvm()
        m = await vm.add_scsi("/x/a.vhd", read_only=True)
        assert (m.controller, m.lun, m.guest_path) == (0, 1, "/run/mounts/scsi/0_1_0")
        assert [c[0] for c in calls] == ["host", "guest"]
        assert calls[0][1] == ("Add", f"VirtualMachine/Devices/Scsi/{G0}/Attachments/1")
        assert calls[1][1][1] == "MappedVirtualDisk" and calls[1][1][2]["MountPath"] == m.guest_path
        again = await vm.add_scsi("/x/a.vhd", read_only=True)
        assert again is m and m.refs == 2 and len(calls) == 2
        m2 = await vm.add_scsi("/x/b.vhd")
        assert m2.lun == 2
        calls.clear()
        await vm.remove_scsi("/x/a.vhd")
        assert calls == []
        await vm.remove_scsi("/x/a.vhd")
        assert [(c[0], c[1][0], c[1][1]) for c in calls] == [
            ("guest", "Remove", "MappedVirtualDisk"),
            ("guest", "Remove", "SCSIDevice"),
            ("host", "Remove", f"VirtualMachine/Devices/Scsi/{G0}/Attachments/1"),
        ]
        with pytest.raises(UvmError, match="not attached"):
            await vm.remove_scsi("/x/a.vhd")
        m3 = await vm.add_scsi("/x/c.vhd")
        assert m3.lun == 1  # the freed slot is reused

    asyncio.run(run())


def test_scsi_guest_failure_rolls_back_host_with_fake_system() -> None:
    async def run() -> None:
        vm, system, bridge, calls = make_uvm()
        bridge.fail_next = True
        with pytest.raises(RuntimeError, match="fake guest failure"):
            await vm.add_scsi("/x/a.vhd")
        assert [c[1][0] for c in calls] == ["Add", "Remove"]
        assert (0, 1) not in vm.scsi.taken and not vm.scsi.by_path
        system.fail_next_modify = True
        with pytest.raises(HcsError):
            await vm.add_scsi("/x/a.vhd")
        assert (0, 1) not in vm.scsi.taken

    asyncio.run(run())


def test_plan9_add_remove_with_fake_system() -> None:
    async def run() -> None:
        vm, _, bridge, calls = make_uvm()
        path = await vm.add_plan9("/host/dir", read_only=True)
        assert path == "/run/mounts/plan9/0"
        assert calls[0] == ("host", ("Add", "VirtualMachine/Devices/Plan9/Shares"))
        assert calls[1][1][1] == "MappedDirectory" and calls[1][1][2]["ShareName"] == "0"
        assert await vm.add_plan9("/host/dir", read_only=True) == path
        with pytest.raises(UvmError, match="already shared"):
            await vm.add_plan9("/host/dir", read_only=False)
        bridge.fail_next = True
        with pytest.raises(RuntimeError):
            await vm.add_plan9("/host/other")
        assert calls[-1] == ("host", ("Remove", "VirtualMachine/Devices/Plan9/Shares"))
        calls.clear()
        await vm.remove_plan9("/host/dir")
        await vm.remove_plan9("/host/dir")
        assert [c[0] for c in calls] == ["guest", "host"]

    asyncio.run(run())


def test_bridge_before_start_is_an_error_with_fake_system() -> None:
    vm, _, _, _ = make_uvm()
    vm._bridge = None
    with pytest.raises(UvmError, match="start"):
        _ = vm.bridge


def test_cancelled_terminate_propagates_and_spares_exit_handling_with_fake_system() -> None:
    class SlowFailBridge(FakeBridge):
        def __init__(self, calls: list[tuple[str, Any]]) -> None:
            super().__init__(calls)
            self.release = asyncio.Event()

        async def fail(self, reason: str) -> None:
            await self.release.wait()

    async def run() -> None:
        vm, _, _, calls = make_uvm()
        bridge = SlowFailBridge(calls)
        vm._bridge = bridge  # type: ignore[assignment]  # a fake bridge
        vm._exit_task = asyncio.create_task(vm._on_exit())
        terminate = asyncio.create_task(vm.terminate())
        await asyncio.sleep(0.05)  # terminate now waits for the exit handling, which waits on the bridge
        terminate.cancel()
        with pytest.raises(asyncio.CancelledError):
            await terminate
        assert not vm._exit_task.done()  # the VM's own exit handling goes on
        bridge.release.set()
        await asyncio.wait_for(vm.wait(), 5)
        assert not vm._exit_task.cancelled()

    asyncio.run(run())


def test_start_without_a_guest_transport_fails_before_booting_with_fake_system() -> None:
    # The base ComputeSystem hands out no guest transport; UtilityVM.start must not boot the VM then.
    class NoTransport(FakeSystem):
        async def start(self) -> None:
            self.calls.append(("host", ("start", "")))

    async def run() -> None:
        calls: list[tuple[str, Any]] = []
        vm = UtilityVM("fake", NoTransport(calls), {})
        with pytest.raises(UvmError, match=r"no guest transport: .*the NoTransport backend has no guest"):
            await vm.start(timeout=1)
        assert calls == []

    asyncio.run(run())


def test_a_nic_is_one_request_host_first_on_add_guest_first_on_remove_with_fake_system() -> None:
    async def run() -> None:
        vm, _, bridge, calls = make_uvm()
        host = {"MacAddress": "02-00-00-00-00-01", "Tap": {"Name": "tap0"}}
        path = "VirtualMachine/Devices/NetworkAdapters/nic0"
        await vm.add_network_adapter("nic0", host, {"ID": "nic0", "NamespaceID": "ns"})
        assert calls == [
            ("host", ("Add", path)),
            ("guest", ("Add", "Network", {"ID": "nic0", "NamespaceID": "ns"})),
        ]
        calls.clear()
        bridge.fail_next = True
        with pytest.raises(RuntimeError, match="fake guest failure"):
            await vm.add_network_adapter("nic0", host, {"ID": "nic0"})
        assert calls == [("host", ("Add", path)), ("host", ("Remove", path))]  # the host half undone
        calls.clear()
        await vm.remove_network_adapter("nic0", "ns", host)
        assert calls == [
            ("guest", ("Remove", "Network", {"NamespaceID": "ns", "ID": "nic0"})),
            ("host", ("Remove", path)),
        ]

    asyncio.run(run())
