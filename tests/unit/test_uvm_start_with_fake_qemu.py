"""UtilityVM.start against a fake QEMU whose guest never answers: the errors name what was awaited."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from hcsshim.hcs.qemu import system as qemu_system
from hcsshim.uvm.errors import UvmError
from hcsshim.uvm.utility_vm import UtilityVM
from tests.support import fake_qemu
from tests.support.documents import minimal_lcow_document


@pytest.fixture
def doc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    fake_qemu.install(tmp_path, monkeypatch)
    return minimal_lcow_document("fake", str(tmp_path))


def test_start_timeout_names_the_bridge_with_fake_qemu(doc: dict[str, Any]) -> None:
    async def run() -> None:
        vm = await UtilityVM.create("silent", doc)
        with pytest.raises(UvmError, match=r"negotiate the bridge timed out after 1s \(mux port 0x40000000"):
            await vm.start(timeout=1)
        info = await asyncio.wait_for(vm.wait(), 10)
        assert info.reason == "terminated"
        assert isinstance(vm.system, qemu_system.QemuComputeSystem)
        assert not os.path.exists(vm.system.state_dir)

    asyncio.run(run())


def test_vm_death_during_start_is_reported_with_fake_qemu(doc: dict[str, Any]) -> None:
    async def run() -> None:
        vm = await UtilityVM.create("dies", doc)
        assert isinstance(vm.system, qemu_system.QemuComputeSystem)
        pid = vm.system.pid
        assert pid is not None
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, os.kill, pid, signal.SIGKILL)
        with pytest.raises(UvmError, match="exited before the guest agent connected: qemu killed by SIGKILL"):
            await vm.start(timeout=30)

    asyncio.run(run())
