"""The QEMU command line for a VmConfig, and the kernel command line translated for QEMU.

Device placement follows docs/CONTRACTS.md: the guest finds SCSI controller i at PCI 00:{0x10+i}.0
and the mux port by name, so these addresses are part of the host/guest contract."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from hcsshim.hcs.qemu.config import TEMPLATE_MEMORY_FILE, Disk, PMemDevice, ScsiController, VmConfig
from hcsshim.hvsock.abi import PLAN9_MOUNT_TAG, SCSI_PCI_SLOT_BASE
from hcsshim.hvsock.abi import VIRTIO_MUX_PORT_NAME as MUX_PORT_NAME

VIRTIO_SERIAL_PCI_SLOT = 0x08
PLAN9_PCI_SLOT = 0x09
RNG_PCI_SLOT = 0x0A
PCI_BUS = "pci.0"

# Arguments that only make sense on Hyper-V: with them a QEMU guest loses PCI, its serial console
# or its clock source (and vsock is how we want to talk where the host has it).
_DROP_EXACT = {
    "pci=off",
    "8250_core.nr_uarts=0",
    "initcall_blacklist=virtio_vsock_init",
    "brd.rd_nr=0",
    "pmtmr=0",
}
_DROP_PREFIX = ("console=",)


def translate_kernel_cmdline(cmdline: str) -> str:
    """Drop Hyper-V-only arguments and point the console at ttyS0; keep everything after ` -- `."""
    head, sep, tail = cmdline.partition(" -- ")
    if not sep and cmdline.startswith("-- "):
        head, sep, tail = "", " -- ", cmdline[3:]
    kept = [a for a in head.split() if a not in _DROP_EXACT and not a.startswith(_DROP_PREFIX)]
    kept.append("console=ttyS0")
    # A guest that stops answering is diagnosed with SysRq sent as key presses over QMP (stall.py);
    # Debian's default sysrq mask leaves out the task dumps.
    kept.append("sysrq_always_enabled=1")
    out = " ".join(kept)
    return f"{out} -- {tail}" if sep else out


def kernel_cmdline(cfg: VmConfig) -> str:
    """The translated command line; a VHD-rooted VM boots from SCSI 0:0, the first disk."""
    cmdline = translate_kernel_cmdline(cfg.cmdline)
    head, sep, tail = cmdline.partition(" -- ")
    if cfg.rootfs == "vhd" and not any(a.startswith("root=") for a in head.split()):
        head += " root=/dev/sda rootwait"
    return f"{head}{sep}{tail}"


@dataclass(frozen=True)
class Paths:
    qmp: str
    mux: str
    console: str
    plan9_root: str


def scsi_controller_id(index: int) -> str:
    return f"scsi{index}"


def scsi_node_name(index: int, lun: int) -> str:
    return f"scsi{index}-{lun}"


def blockdev_args(index: int, lun: int, disk: Disk) -> dict[str, Any]:
    device = disk.path.startswith("/dev/")
    args: dict[str, Any] = {
        "driver": "raw" if device or disk.raw_file or disk.fixed_vhd_data_size is not None else "vpc",
        "node-name": scsi_node_name(index, lun),
        "read-only": disk.read_only,
        "file": {
            "driver": "host_device" if device else "file",
            "filename": disk.path,
            "read-only": disk.read_only,
        },
    }
    if not device and disk.fixed_vhd_data_size is not None:
        # A fixed VHD is its raw image plus a footer the guest must not see.
        args["offset"] = 0
        args["size"] = disk.fixed_vhd_data_size
    return args


def scsi_device_args(index: int, lun: int) -> dict[str, Any]:
    return {
        "driver": "scsi-hd",
        "id": scsi_node_name(index, lun),
        "drive": scsi_node_name(index, lun),
        "bus": f"{scsi_controller_id(index)}.0",
        "channel": 0,
        "scsi-id": 0,
        "lun": lun,
    }


VPMEM_ALIGN = 2 << 20
VPMEM_MAX_SLOTS = 16
VPMEM_DEFAULT_MAX_SIZE = 4 << 30  # upstream's default MaximumSizeBytes


def vpmem_id(n: int) -> str:
    return f"vpmem{n}"


def vpmem_size(path: str) -> int:
    """The mapped size: the file rounded down to the alignment, which also leaves out a VHD footer
    (a fixed VHD is the raw image plus a 512-byte footer) and never lets QEMU grow the file."""
    return os.path.getsize(path) // VPMEM_ALIGN * VPMEM_ALIGN


def vpmem_object_args(n: int, dev: PMemDevice) -> dict[str, Any]:
    return {
        "qom-type": "memory-backend-file",
        "id": vpmem_id(n),
        "mem-path": dev.path,
        "size": vpmem_size(dev.path),
        "share": False,
        "readonly": dev.read_only,
        "align": VPMEM_ALIGN,
    }


def vpmem_device_args(n: int) -> dict[str, Any]:
    return {"driver": "virtio-pmem-pci", "id": vpmem_id(n), "memdev": vpmem_id(n), "bus": PCI_BUS}


def memory_args(cfg: VmConfig) -> str:
    """Plain RAM, or RAM plus memory-device slots when the document allows VPMem devices
    (virtio-pmem devices are memory devices: they need slots and maxmem reserved at boot)."""
    slots = min(max(cfg.vpmem_max_count, len(cfg.vpmem)), VPMEM_MAX_SLOTS)
    if slots == 0:
        return f"{cfg.memory_mb}M"
    per = cfg.vpmem_max_size or VPMEM_DEFAULT_MAX_SIZE
    per = (per + VPMEM_ALIGN - 1) // VPMEM_ALIGN * VPMEM_ALIGN
    return f"size={cfg.memory_mb}M,slots={slots},maxmem={cfg.memory_mb * (1 << 20) + slots * per}"


RAM_BACKEND_ID = "pc.ram"


def ram_backend_args(cfg: VmConfig) -> list[str]:
    """Guest RAM of a template (a shared mapping of its memory file, so saving it writes only device
    state) or of a clone (a private, copy-on-write mapping of the template's file, opened read-only
    so no clone can change what the others map)."""
    if cfg.template_dir:
        path, mode = os.path.join(cfg.template_dir, TEMPLATE_MEMORY_FILE), "share=on"
    elif cfg.restore_dir:
        path, mode = os.path.join(cfg.restore_dir, TEMPLATE_MEMORY_FILE), "share=off,readonly=on,rom=off"
    else:
        return []
    spec = f"memory-backend-file,id={RAM_BACKEND_ID},size={cfg.memory_mb}M,mem-path={path},{mode}"
    return ["-object", spec]


def _scsi(ctrl: ScsiController) -> list[str]:
    args = [
        "-device",
        json.dumps(
            {
                "driver": "virtio-scsi-pci",
                "id": scsi_controller_id(ctrl.index),
                "bus": PCI_BUS,
                "addr": f"0x{SCSI_PCI_SLOT_BASE + ctrl.index:02x}",
            }
        ),
    ]
    for lun, disk in sorted(ctrl.disks.items()):
        args += ["-blockdev", json.dumps(blockdev_args(ctrl.index, lun, disk))]
        args += ["-device", json.dumps(scsi_device_args(ctrl.index, lun))]
    return args


def build_argv(
    qemu: str, name: str, cfg: VmConfig, paths: Paths, accel: str, *, qmp_server: bool = False
) -> list[str]:
    """`accel` is QEMU's -accel argument: `kvm`, `tcg`, or with options (`tcg,thread=single`).
    QEMU dials its creator's QMP socket, or with `qmp_server` listens on it itself (a parked clone:
    whichever process adopts it later connects)."""
    kvm = accel.split(",")[0] == "kvm"
    argv = [
        qemu,
        "-name",
        f"guest={name},debug-threads=on",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        # A guest panic with panic=-1 reboots; -no-reboot turns that into a QEMU exit we can see.
        "-no-reboot",
        # Created but not started, like HCS: start() sends `cont`.
        "-S",
        "-machine",
        f"pc,memory-backend={RAM_BACKEND_ID}" if cfg.template_dir or cfg.restore_dir else "pc",
        "-accel",
        accel,
        "-cpu",
        "host" if kvm else "max",
        "-m",
        memory_args(cfg),
        "-smp",
        str(cfg.cpus),
        "-kernel",
        cfg.kernel,
        "-append",
        kernel_cmdline(cfg),
        "-chardev",
        f"file,id=console,path={paths.console}",
        "-serial",
        "chardev:console",
        "-chardev",
        f"socket,id=qmp,path={paths.qmp}" + (",server=on,wait=off" if qmp_server else ""),
        "-mon",
        "chardev=qmp,mode=control",
        "-device",
        f"virtio-serial-pci,id=vser0,bus={PCI_BUS},addr=0x{VIRTIO_SERIAL_PCI_SLOT:02x}",
        "-chardev",
        f"socket,id=mux,path={paths.mux},server=on,wait=off",
        "-device",
        f"virtserialport,bus=vser0.0,chardev=mux,name={MUX_PORT_NAME}",
        "-fsdev",
        f"local,id=plan9,path={paths.plan9_root},security_model=none,multidevs=remap",
        "-device",
        f"virtio-9p-pci,fsdev=plan9,mount_tag={PLAN9_MOUNT_TAG},bus={PCI_BUS},addr=0x{PLAN9_PCI_SLOT:02x}",
        # The guest's crng would otherwise wait for entropy (upstream feeds it over hvsock port 1).
        "-device",
        f"virtio-rng-pci,bus={PCI_BUS},addr=0x{RNG_PCI_SLOT:02x}",
    ]
    argv += ram_backend_args(cfg)
    if cfg.restore_dir:
        # The state is loaded over QMP once the x-ignore-shared capability is set (template.py).
        argv += ["-incoming", "defer"]
    if cfg.initrd or cfg.stage1_initrd:
        argv += ["-initrd", cfg.initrd or cfg.stage1_initrd or ""]
    for ctrl in sorted(cfg.scsi.values(), key=lambda c: c.index):
        argv += _scsi(ctrl)
    for n, dev in sorted(cfg.vpmem.items()):
        argv += ["-object", json.dumps(vpmem_object_args(n, dev))]
        argv += ["-device", json.dumps(vpmem_device_args(n))]
    return argv
