"""The qemu backend's lifecycle against a fake QEMU process (tests/support/fake_qemu.py)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from hcsshim import hcs
from hcsshim.hcs.qemu import system as qemu_system
from hcsshim.hvsock.abi import SCSI_CONTROLLER_GUIDS
from tests.support import fake_qemu
from tests.support.documents import minimal_lcow_document

SCSI = f"VirtualMachine/Devices/Scsi/{SCSI_CONTROLLER_GUIDS[0]}/Attachments"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state = fake_qemu.install(tmp_path, monkeypatch, boot_files=("kernel", "initrd.img", "disk.vhd"))
    return {"doc": minimal_lcow_document("fake", str(tmp_path)), "state": state, "tmp": tmp_path}


def test_lifecycle_with_fake_qemu(env: dict[str, Any]) -> None:
    async def run() -> None:
        cs = await hcs.create_compute_system("fake1", env["doc"])
        assert isinstance(cs, qemu_system.QemuComputeSystem)
        assert cs.state == hcs.SystemState.CREATED
        assert hcs.open_compute_system("fake1") is cs
        with pytest.raises(hcs.ErrAlreadyExists):
            await hcs.create_compute_system("fake1", env["doc"])
        with pytest.raises(hcs.ErrVmcomputeOperationInvalidState):
            await cs.resume()
        await cs.start()
        await cs.pause()
        assert (await cs.properties())["State"] == "Paused"
        await cs.resume()
        disk = {"Path": str(env["tmp"] / "disk.vhd"), "Type": "VirtualDisk", "ReadOnly": True}
        await cs.modify({"ResourcePath": f"{SCSI}/1", "RequestType": "Add", "Settings": disk})
        with pytest.raises(hcs.ErrAlreadyExists):
            await cs.modify({"ResourcePath": f"{SCSI}/1", "RequestType": "Add", "Settings": disk})
        with pytest.raises(hcs.HcsError, match="lun 63 refused"):
            await cs.modify({"ResourcePath": f"{SCSI}/63", "RequestType": "Add", "Settings": disk})
        await cs.modify({"ResourcePath": f"{SCSI}/1", "RequestType": "Remove"})
        with pytest.raises(hcs.ErrElementNotFound):
            await cs.modify({"ResourcePath": f"{SCSI}/1", "RequestType": "Remove"})
        with pytest.raises(hcs.ErrNotSupported):
            await cs.modify(
                {"ResourcePath": "VirtualMachine/Devices/VirtualPMem/Devices/0", "RequestType": "Add"}
            )
        props = await cs.properties()
        assert props["State"] == "Running" and props["Backend"]["Accelerator"] == "tcg,thread=multi"
        assert props["Backend"]["QemuVersion"] == "10.0.2"
        await cs.terminate()
        info = await cs.wait()
        assert info.reason == "terminated" and not info.unexpected
        await cs.terminate()  # idempotent
        with pytest.raises(hcs.ErrVmcomputeAlreadyStopped):
            await cs.start()
        assert not os.path.exists(cs.state_dir)

    asyncio.run(run())


def test_sigkill_is_reported_with_fake_qemu(env: dict[str, Any]) -> None:
    async def run() -> None:
        cs = await hcs.create_compute_system("fake2", env["doc"])
        assert isinstance(cs, qemu_system.QemuComputeSystem)
        await cs.start()
        assert cs.pid is not None
        os.kill(cs.pid, signal.SIGKILL)
        info = await asyncio.wait_for(cs.wait(), 5)
        assert info.unexpected and "SIGKILL" in info.reason
        assert not os.path.exists(cs.state_dir)
        with pytest.raises(hcs.ErrComputeSystemDoesNotExist):
            hcs.open_compute_system("fake2")

    asyncio.run(run())


def test_startup_failure_leaves_nothing_with_fake_qemu(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QEMU_FAIL", "1")

    async def run() -> None:
        with pytest.raises(hcs.ErrVmcomputeUnexpectedExit, match="failing at startup"):
            await hcs.create_compute_system("fake3", env["doc"])

    asyncio.run(run())
    assert not os.listdir(env["state"])


def test_missing_initrd_fails_before_any_process_with_fake_qemu(env: dict[str, Any]) -> None:
    os.unlink(env["tmp"] / "initrd.img")
    with pytest.raises(hcs.ErrInvalidData, match="InitRdPath"):
        asyncio.run(hcs.create_compute_system("fake4", env["doc"]))
    assert not env["state"].exists()


def test_stale_state_is_swept_with_fake_dirs(tmp_path: Path) -> None:
    dead = tmp_path / "dead"
    (dead / "plan9").mkdir(parents=True)
    (dead / qemu_system.PID_FILE).write_text("999999999")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    qemu_system.sweep_stale_state(str(tmp_path))
    assert not dead.exists()
    assert fresh.exists()  # still being set up by someone: no pid file yet, and young
