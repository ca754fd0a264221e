from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from hcsshim.hcs import ErrInvalidData, ErrNotSupported
from hcsshim.hcs.qemu.cmdline import Paths, build_argv, kernel_cmdline, translate_kernel_cmdline
from hcsshim.hcs.qemu.config import parse_document
from hcsshim.hvsock.abi import SCSI_CONTROLLER_GUIDS
from tests.support.documents import minimal_lcow_document


@pytest.fixture
def boot(tmp_path: Path) -> Path:
    (tmp_path / "kernel").write_bytes(b"k")
    (tmp_path / "initrd.img").write_bytes(b"i")
    (tmp_path / "rootfs.vhd").write_bytes(b"v")
    return tmp_path


def doc_for(boot: Path) -> dict[str, Any]:
    return minimal_lcow_document("t", str(boot), memory_mb=512, cpus=2)


def test_parses_minimal_document(boot: Path) -> None:
    cfg = parse_document(doc_for(boot), "t")
    assert cfg.kernel == str(boot / "kernel") and cfg.initrd == str(boot / "initrd.img")
    assert cfg.memory_mb == 512 and cfg.cpus == 2 and cfg.rootfs == "initrd"
    assert cfg.scsi[SCSI_CONTROLLER_GUIDS[0]].index == 0


def test_missing_kernel_names_the_field(boot: Path) -> None:
    os.unlink(boot / "kernel")
    with pytest.raises(
        ErrInvalidData, match=r"LinuxKernelDirect\.KernelFilePath: file .*kernel' does not exist"
    ):
        parse_document(doc_for(boot), "t")


def test_malformed_documents(boot: Path) -> None:
    doc = doc_for(boot)
    bad = copy.deepcopy(doc)
    bad["VirtualMachine"]["ComputeTopology"]["Memory"]["SizeInMB"] = "lots"
    with pytest.raises(ErrInvalidData, match=r"Memory\.SizeInMB: must be a non-negative integer"):
        parse_document(bad, "t")
    with pytest.raises(ErrInvalidData, match=r"ComputeSystem\.VirtualMachine: is required"):
        parse_document({"Owner": "x"}, "t")
    bad = copy.deepcopy(doc)
    bad["VirtualMachine"]["Devices"]["Scsi"][SCSI_CONTROLLER_GUIDS[0]] = {
        "Attachments": {"99": {"Path": "x"}}
    }
    with pytest.raises(ErrInvalidData, match="LUN must be"):
        parse_document(bad, "t")


def test_vhd_rootfs_needs_scsi_0_0(boot: Path) -> None:
    doc = doc_for(boot)
    del doc["VirtualMachine"]["Chipset"]["LinuxKernelDirect"]["InitRdPath"]
    with pytest.raises(ErrInvalidData, match="InitRdPath: is required unless"):
        parse_document(doc, "t")
    doc["VirtualMachine"]["Devices"]["Scsi"][SCSI_CONTROLLER_GUIDS[0]] = {
        "Attachments": {"0": {"Path": str(boot / "rootfs.vhd"), "Type": "VirtualDisk", "ReadOnly": True}}
    }
    cfg = parse_document(doc, "t")
    assert cfg.rootfs == "vhd"
    assert kernel_cmdline(cfg).endswith("console=ttyS0 sysrq_always_enabled=1 root=/dev/sda rootwait")
    assert cfg.stage1_initrd is None
    (boot / "vhd-initrd.img").write_bytes(b"s")
    cfg = parse_document(doc, "t")
    argv = build_argv("qemu", "t", cfg, Paths("/s/q", "/s/m", "/s/c", "/s/p"), "tcg")
    assert argv[argv.index("-initrd") + 1] == str(boot / "vhd-initrd.img")
    assert cfg.scsi[SCSI_CONTROLLER_GUIDS[0]].disks[0].read_only


def test_uefi_is_not_supported(boot: Path) -> None:
    with pytest.raises(ErrNotSupported, match="Uefi"):
        parse_document({"VirtualMachine": {"Chipset": {"Uefi": {}}}}, "t")


def test_kernel_cmdline_translation() -> None:
    upstream = (
        "initrd=/initrd.img 8250_core.nr_uarts=0 panic=-1 quiet pci=off nr_cpus=2 brd.rd_nr=0 pmtmr=0 "
        "initcall_blacklist=virtio_vsock_init console=hvc0 -- -e 1 /bin/vsockexec -e 109 /bin/gcs"
    )
    out = translate_kernel_cmdline(upstream)
    head, _, tail = out.partition(" -- ")
    assert head.split() == [
        "initrd=/initrd.img",
        "panic=-1",
        "quiet",
        "nr_cpus=2",
        "console=ttyS0",
        "sysrq_always_enabled=1",
    ]
    assert tail == "-e 1 /bin/vsockexec -e 109 /bin/gcs"
    assert translate_kernel_cmdline("quiet") == "quiet console=ttyS0 sysrq_always_enabled=1"


def test_argv_places_devices_per_contract(boot: Path) -> None:
    doc = doc_for(boot)
    doc["VirtualMachine"]["Devices"]["Scsi"][SCSI_CONTROLLER_GUIDS[1]] = {
        "Attachments": {"3": {"Path": str(boot / "rootfs.vhd"), "ReadOnly": True}}
    }
    cfg = parse_document(doc, "t")
    argv = build_argv("qemu", "t", cfg, Paths("/s/qmp", "/s/mux", "/s/console", "/s/p9"), "tcg")
    joined = " ".join(argv)
    for flag in ("-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-S"):
        assert flag in argv
    assert '"driver": "virtio-scsi-pci", "id": "scsi0", "bus": "pci.0", "addr": "0x10"' in joined
    assert '"id": "scsi1", "bus": "pci.0", "addr": "0x11"' in joined
    assert '"driver": "vpc"' in joined and '"lun": 3' in joined
    assert "virtserialport,bus=vser0.0,chardev=mux,name=hcsshim.mux" in joined
    assert "mount_tag=hcsshim-plan9" in joined
    assert "-machine pc -accel tcg " in joined
