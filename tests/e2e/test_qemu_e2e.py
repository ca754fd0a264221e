"""The qemu backend with a real QEMU and kernel, booting a busybox init (no guest agent needed)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from hcsshim import hcs
from hcsshim.hcs.qemu import system as qemu_system
from hcsshim.hcs.qemu.mounts import mounts_under
from hcsshim.hvsock.abi import SCSI_CONTROLLER_GUIDS
from tests.support.documents import minimal_lcow_document
from tests.support.uvm import (
    FLOOR_READY,
    build_busybox_initrd,
    have_root_and_qemu,
    kernel,
    make_vhd_with_file,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.root,
    pytest.mark.skipif(not have_root_and_qemu(), reason="needs root and qemu-system-x86_64"),
    pytest.mark.skipif(kernel() is None, reason="needs a UVM kernel (hcsshim uvm build)"),
    pytest.mark.timeout(180),
]

SCSI = f"VirtualMachine/Devices/Scsi/{SCSI_CONTROLLER_GUIDS[0]}/Attachments"


def _doc(tmp: Path, script: str) -> dict[str, Any]:
    initrd = build_busybox_initrd(str(tmp / "initrd.img"), script)
    doc = minimal_lcow_document("e2e", str(tmp), memory_mb=256, cpus=1)
    lkd = doc["VirtualMachine"]["Chipset"]["LinuxKernelDirect"]
    lkd["KernelFilePath"] = kernel()
    lkd["InitRdPath"] = initrd
    return doc


READY_AND_SLEEP = (
    "#!/bin/sh\n/bin/busybox mount -t devtmpfs dev /dev\n"
    f"echo {FLOOR_READY} > /dev/ttyS0\nexec /bin/busybox sleep 1000\n"
)


async def _wait_console(cs: qemu_system.QemuComputeSystem, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(cs.paths.console, errors="replace") as f:
            if text in f.read():
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not seen on the console within {timeout}s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_missing_kernel_or_malformed_document_fails_before_any_process(tmp_path: Path) -> None:
    doc = _doc(tmp_path, READY_AND_SLEEP)
    doc["VirtualMachine"]["Chipset"]["LinuxKernelDirect"]["KernelFilePath"] = str(tmp_path / "no-kernel")
    sid = f"e2e-missing-{os.getpid()}"
    with pytest.raises(hcs.ErrInvalidData, match=r"KernelFilePath: file .*no-kernel' does not exist"):
        asyncio.run(hcs.create_compute_system(sid, doc))
    with pytest.raises(hcs.ErrVmcomputeInvalidJSON, match="not valid JSON"):
        asyncio.run(hcs.create_compute_system(sid, '{"VirtualMachine": '))
    doc = _doc(tmp_path, READY_AND_SLEEP)
    doc["VirtualMachine"]["Devices"]["Scsi"][SCSI_CONTROLLER_GUIDS[0]] = {
        "Attachments": {"1": {"Path": str(tmp_path / "missing.vhd")}}
    }
    with pytest.raises(hcs.ErrInvalidData, match=r"Attachments\.1\.Path: file .*missing.vhd' does not exist"):
        asyncio.run(hcs.create_compute_system(sid, doc))
    assert not os.path.exists(qemu_system.state_dir_for(sid))


def test_kill9_is_reported_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "f").write_text("x")
    vhd = make_vhd_with_file(str(tmp_path / "d.vhd"), "f", b"y")

    async def run() -> None:
        doc = _doc(tmp_path, READY_AND_SLEEP)
        doc["VirtualMachine"]["Devices"]["Plan9"] = {"Shares": [{"Name": "boot", "Path": str(share)}]}
        cs = await hcs.create_compute_system(f"e2e-kill-{os.getpid()}", doc)
        try:
            assert isinstance(cs, qemu_system.QemuComputeSystem)
            await cs.start()
            await _wait_console(cs, FLOOR_READY)
            await cs.modify({"ResourcePath": f"{SCSI}/1", "RequestType": "Add", "Settings": {"Path": vhd}})
            share2 = {"Name": "hot", "Path": str(share), "Flags": 1}
            await cs.modify(
                {
                    "ResourcePath": "VirtualMachine/Devices/Plan9/Shares",
                    "RequestType": "Add",
                    "Settings": share2,
                }
            )
            assert len(mounts_under(cs.state_dir)) == 2
            pid = cs.pid
            assert pid is not None
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            info = await asyncio.wait_for(cs.wait(), 10)
            noticed = time.monotonic() - killed
            assert noticed < 2.0, f"took {noticed:.2f}s to notice"
            assert info.unexpected and "SIGKILL" in info.reason
            assert not _alive(pid)
            assert not os.path.exists(cs.paths.qmp) and not os.path.exists(cs.paths.mux)
            assert mounts_under(cs.state_dir) == []
            assert not os.path.exists(cs.state_dir)
            assert (share / "f").read_text() == "x"  # teardown never deletes through a share
            with pytest.raises(hcs.ErrVmcomputeAlreadyStopped):
                await cs.modify(
                    {"ResourcePath": f"{SCSI}/2", "RequestType": "Add", "Settings": {"Path": vhd}}
                )
        finally:
            await cs.terminate()

    asyncio.run(run())


def test_guest_panic_is_reported(tmp_path: Path) -> None:
    async def run() -> None:
        # init exiting panics the kernel; panic=-1 reboots and -no-reboot turns that into an exit.
        cs = await hcs.create_compute_system(
            f"e2e-panic-{os.getpid()}", _doc(tmp_path, "#!/bin/sh\nexit 0\n")
        )
        try:
            await cs.start()
            info = await asyncio.wait_for(cs.wait(), 90)
        finally:
            await cs.terminate()
        assert info.reason == "guest panic" and info.error and "Kernel panic" in info.error

    asyncio.run(run())


def test_scsi_and_plan9_hot_add_remove_on_qemu(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    vhd = make_vhd_with_file(str(tmp_path / "d.vhd"), "f", b"y")

    async def run() -> None:
        cs = await hcs.create_compute_system(f"e2e-hot-{os.getpid()}", _doc(tmp_path, READY_AND_SLEEP))
        assert isinstance(cs, qemu_system.QemuComputeSystem)
        try:
            await cs.start()
            settings = {"Path": vhd, "Type": "VirtualDisk", "ReadOnly": True}
            await cs.modify({"ResourcePath": f"{SCSI}/5", "RequestType": "Add", "Settings": settings})
            blocks = await cs.execute("test", "query-block")
            # A fixed VHD is read raw over its data range: QEMU names it by a json: filename then.
            assert any(vhd in b.get("inserted", {}).get("file", "") and b["inserted"]["ro"] for b in blocks)
            await cs.modify({"ResourcePath": f"{SCSI}/5", "RequestType": "Remove"})
            blocks = await cs.execute("test", "query-block")
            assert not any(vhd in b.get("inserted", {}).get("file", "") for b in blocks)
            p9 = {"ResourcePath": "VirtualMachine/Devices/Plan9/Shares"}
            await cs.modify(
                {**p9, "RequestType": "Add", "Settings": {"Name": "0", "Path": str(share), "Flags": 1}}
            )
            target = os.path.join(cs.paths.plan9_root, "0")
            assert mounts_under(cs.state_dir) == [target]
            with pytest.raises(OSError):
                open(os.path.join(target, "new"), "w").close()  # read-only share
            await cs.modify({**p9, "RequestType": "Remove", "Settings": {"Name": "0"}})
            assert mounts_under(cs.state_dir) == [] and not os.path.exists(target)
        finally:
            await cs.terminate()
        info = await cs.wait()
        assert info.reason == "terminated" and not info.unexpected
        assert not os.path.exists(cs.state_dir)

    asyncio.run(run())


def test_vpmem_boot_and_hot_add_on_qemu(tmp_path: Path) -> None:
    boot_dev = make_vhd_with_file(str(tmp_path / "p0.vhd"), "f", b"0", 4)
    hot_dev = make_vhd_with_file(str(tmp_path / "p1.vhd"), "f", b"1", 4)

    async def run() -> None:
        doc = _doc(tmp_path, READY_AND_SLEEP)
        doc["VirtualMachine"]["Devices"]["VirtualPMem"] = {
            "MaximumCount": 2,
            "MaximumSizeBytes": 64 << 20,
            "Devices": {"0": {"HostPath": boot_dev, "ReadOnly": True, "ImageFormat": "Vhd1"}},
        }
        cs = await hcs.create_compute_system(f"e2e-pmem-{os.getpid()}", doc)
        assert isinstance(cs, qemu_system.QemuComputeSystem)
        try:
            await cs.start()
            path = "VirtualMachine/Devices/VirtualPMem/Devices"
            await cs.modify(
                {"ResourcePath": f"{path}/1", "RequestType": "Add", "Settings": {"HostPath": hot_dev}}
            )
            devs = await cs.execute("test", "query-memory-devices")
            assert sorted(d["data"]["memdev"] for d in devs if d["type"] == "virtio-pmem") == [
                "/objects/vpmem0",
                "/objects/vpmem1",
            ]
            with pytest.raises(hcs.ErrNotSupported, match="no free VPMem slot"):
                await cs.modify(
                    {"ResourcePath": f"{path}/2", "RequestType": "Add", "Settings": {"HostPath": hot_dev}}
                )
            with pytest.raises(hcs.ErrNotSupported, match="cannot unplug"):
                await cs.modify({"ResourcePath": f"{path}/1", "RequestType": "Remove"})
        finally:
            await cs.terminate()
        assert os.path.getsize(boot_dev) == (4 << 20) + 512  # QEMU never grew the image

    asyncio.run(run())
