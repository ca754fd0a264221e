"""A bridge call that times out against a live QEMU says what the guest is doing: the qemu backend
sends SysRq key presses over QMP and reads the console, so the error tells a stuck guest kernel from
a live kernel whose agent does not answer."""

from __future__ import annotations

import pytest

from hcsshim.gcs.bridge import BridgeTimeoutError
from hcsshim.hcs.qemu.system import QemuComputeSystem
from tests.support.uvm import BootedUvm, start_busybox, stop_busybox

pytestmark = [pytest.mark.e2e, pytest.mark.root, pytest.mark.timeout(300)]


def test_timeout_against_a_live_kernel_says_the_agent_is_not_answering(booted_uvm: BootedUvm) -> None:
    vm = booted_uvm.vm
    pid = booted_uvm.run(start_busybox(vm, booted_uvm.layer.guest_path, "diag-live", ["sleep", "1000"]))
    try:
        # WaitForProcess on a sleeping process does not answer: from the host that is a stalled call.
        with pytest.raises(BridgeTimeoutError) as info:
            booted_uvm.run(vm.bridge.wait_process("diag-live", pid, timeout=2))
        message = str(info.value)
        assert "timed out after 2s" in message
        assert "guest kernel is alive (it answered SysRq); the agent is not answering" in message
        assert "task:python3" in message  # the agent's own line of the task dump
    finally:
        booted_uvm.run(stop_busybox(vm, booted_uvm.layer.guest_path, "diag-live", pid))


def test_timeout_against_a_frozen_guest_says_the_kernel_is_stuck(booted_uvm: BootedUvm) -> None:
    vm = booted_uvm.vm
    system = vm.system
    assert isinstance(system, QemuComputeSystem)
    # QMP `stop` behind the backend's back freezes both vCPUs exactly as a TCG livelock does: QEMU
    # and its monitor stay up, the guest runs nothing.
    booted_uvm.run(system.execute("test", "stop"))
    try:
        with pytest.raises(BridgeTimeoutError) as info:
            booted_uvm.run(vm.bridge.dump_stacks(timeout=2))
        assert "guest kernel is stuck: no console output within" in str(info.value)
    finally:
        booted_uvm.run(system.execute("test", "cont"))
    assert "thread" in booted_uvm.run(vm.bridge.dump_stacks(timeout=60))
