"""Turn an HCS schema2 ComputeSystem document into a validated VM description.

Validation happens here, before any process or directory exists, so a bad document leaves
nothing behind and the error names the field (a JSON path) that is wrong."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hcsshim.hcs.errors import ErrInvalidData, ErrNotSupported
from hcsshim.hvsock.abi import (
    PLAN9_FLAG_CASE_SENSITIVE,
    PLAN9_FLAG_LINUX_METADATA,
    PLAN9_FLAG_READ_ONLY,
    PLAN9_FLAG_UNLIMITED_CONNECTIONS,
    SCSI_CONTROLLERS,
    SCSI_LUNS_PER_CONTROLLER,
    scsi_controller_index,
)

STAGE1_INITRD = "vhd-initrd.img"
TEMPLATE_MEMORY_FILE = "memory"
TEMPLATE_STATE_FILE = "state"


@dataclass(frozen=True)
class Disk:
    path: str
    read_only: bool
    fixed_vhd_data_size: int | None = None
    # PassThru of a regular file: the file is the raw disk (no VHD footer, nothing hidden).
    raw_file: bool = False


@dataclass
class ScsiController:
    index: int
    guid: str
    disks: dict[int, Disk] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan9ShareConfig:
    name: str
    path: str
    read_only: bool


@dataclass(frozen=True)
class PMemDevice:
    path: str
    read_only: bool


@dataclass
class VmConfig:
    owner: str
    kernel: str
    initrd: str | None
    cmdline: str
    memory_mb: int
    cpus: int
    scsi: dict[str, ScsiController]
    plan9: list[Plan9ShareConfig]
    vpmem: dict[int, PMemDevice]
    vpmem_max_count: int
    vpmem_max_size: int
    stage1_initrd: str | None = None
    # Templating (hcs/qemu/template.py): the directory this VM will be saved into as a template, or
    # the template directory it is restored from.
    template_dir: str | None = None
    restore_dir: str | None = None

    @property
    def rootfs(self) -> str:
        """`initrd` when the document boots an initrd, else `vhd` (SCSI 0:0 is the root disk)."""
        return "initrd" if self.initrd else "vhd"


class _Reader:
    def __init__(self, op: str, system_id: str) -> None:
        self.op = op
        self.system_id = system_id

    def fail(self, where: str, why: str) -> ErrInvalidData:
        return ErrInvalidData(self.op, self.system_id, f"{where}: {why}")

    def obj(self, parent: dict[str, Any], key: str, where: str, required: bool = False) -> dict[str, Any]:
        value = parent.get(key)
        if value is None:
            if required:
                raise self.fail(f"{where}.{key}", "is required")
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{where}.{key}", f"must be an object, got {type(value).__name__}")
        return value

    def int_(self, parent: dict[str, Any], key: str, where: str, default: int) -> int:
        value = parent.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(f"{where}.{key}", f"must be a non-negative integer, got {value!r}")
        return value

    def str_(self, parent: dict[str, Any], key: str, where: str, required: bool = False) -> str:
        value = parent.get(key)
        if value is None or value == "":
            if required:
                raise self.fail(f"{where}.{key}", "is required")
            return ""
        if not isinstance(value, str):
            raise self.fail(f"{where}.{key}", f"must be a string, got {type(value).__name__}")
        return value

    def file(self, parent: dict[str, Any], key: str, where: str, required: bool = True) -> str:
        path = self.str_(parent, key, where, required)
        if path and not os.path.isfile(path):
            raise self.fail(f"{where}.{key}", f"file {path!r} does not exist")
        return path


# ---- what this backend realizes -------------------------------------------------------------------
#
# Every section and field of a document is either realized (listed below), or refused with
# ErrNotSupported naming its path: never dropped. A field at its neutral value (absent, null, false,
# 0, "", [] or {}) asks for nothing and passes, which is how the builders' defaults for the documents
# our shims send get through: Go's omitempty leaves these out, so a neutral value means "unset".
# The sections named in _PRESENCE are the exception: their mere presence ({}) asks for a device.

Accept = Callable[[Any], bool]
Shape = dict[str, "Shape | Accept"]


def _any(value: Any) -> bool:
    return True


def _is(*allowed: Any) -> Accept:
    return lambda value: value in allowed


_PRESENCE = frozenset({"Keyboard", "Mouse", "EnhancedModeVideo", "GuestCrashReporting", "Battery"})

# The VirtualMachine sections parse_document reads itself (and whose own checks name the fields).
_READ_BY_PARSER: Accept = _any

_HV_SOCKET: Shape = {
    "HvSocketConfig": {
        # The builders' default descriptor (SYSTEM and Administrators) has nothing to apply to here:
        # the guest transport is a socket in the VM's 0700 state directory, reachable by its owner only.
        "DefaultBindSecurityDescriptor": _any,
        "DefaultConnectSecurityDescriptor": _any,
        # ServiceTable (extra hvsock services from annotations) is refused: there is no per-service
        # hvsock endpoint to configure.
    },
}

_SHAPE: Shape = {
    "Owner": _any,
    "SchemaVersion": _any,
    # The VM lives as long as its owner holds it: Close terminates it, orphans are cleaned up.
    "ShouldTerminateOnLastHandleClosed": _any,
    "VirtualMachine": {
        # -no-reboot: a guest reset is a QEMU exit, which is what StopOnReset asks for.
        "StopOnReset": _is(True, False),
        "Chipset": {
            "LinuxKernelDirect": {"KernelFilePath": _any, "InitRdPath": _any, "KernelCmdLine": _any},
            "Uefi": _READ_BY_PARSER,
            # QEMU's RTC runs in UTC.
            "UseUtc": _is(True, False),
        },
        "ComputeTopology": {
            "Memory": {
                "SizeInMB": _any,
                # QEMU's guest RAM is anonymous memory committed on first touch: overcommitted and
                # deferred, as these ask; false (fully backed) is their neutral value and omitted.
                "AllowOvercommit": _is(True, False),
                "EnableDeferredCommit": _is(True, False),
                "Backing": _is("Virtual", None, ""),
            },
            "Processor": {"Count": _any},
        },
        "Devices": {
            "Scsi": _READ_BY_PARSER,
            "VirtualPMem": _READ_BY_PARSER,
            "Plan9": _READ_BY_PARSER,
            "NetworkAdapters": _READ_BY_PARSER,
            "HvSocket": _HV_SOCKET,
        },
        "RestoreState": {"SaveStateFilePath": _any, "TemplateSystemId": _any},
        "SaveableAsTemplate": {"SaveStateFilePath": _any},
    },
}

_ATTACHMENT: Shape = {"Type": _any, "Path": _any, "ReadOnly": _is(True, False)}
PMEM_DEVICE_SHAPE: Shape = {
    "HostPath": _any,
    "ReadOnly": _is(True, False),
    # A fixed VHD is its ext4 image followed by a 512-byte footer the guest never reads.
    "ImageFormat": _is("Vhd1", "", None),
}
_PMEM_CONTROLLER: Shape = {"Devices": _any, "MaximumCount": _any, "MaximumSizeBytes": _any}
_PLAN9_SHARE: Shape = {
    "Name": _any,
    "Path": _any,
    "Flags": _any,  # checked bit by bit in parse_plan9_share
    "ReadOnly": _is(True, False),
    # Every share travels over the one virtio-9p device; Hyper-V's vsock port has no meaning here.
    "Port": _any,
    "AccessName": _any,  # must equal Name, checked in parse_plan9_share
}
_PLAN9: Shape = {"Shares": _any}


def _neutral(value: Any) -> bool:
    return value is None or value is False or value in ("", [], {}) or (type(value) is int and value == 0)


def refuse_unrealized(r: _Reader, node: Any, shape: Shape, where: str) -> None:
    """ErrNotSupported naming the first field of `node` the backend cannot realize."""
    if not isinstance(node, dict):
        return  # the parser names a value of the wrong type
    for key, value in node.items():
        path = f"{where}.{key}" if where else key
        rule = shape.get(key)
        if rule is None:
            if key in _PRESENCE or not _neutral(value):
                raise ErrNotSupported(r.op, r.system_id, f"{path} is not supported by the qemu backend")
        elif isinstance(rule, dict):
            refuse_unrealized(r, value, rule, path)
        elif not rule(value):
            raise ErrNotSupported(r.op, r.system_id, f"{path}={value!r} is not supported by the qemu backend")


def parse_attachment(r: _Reader, att: Any, where: str) -> Disk:
    if not isinstance(att, dict):
        raise r.fail(where, "must be an object")
    refuse_unrealized(r, att, _ATTACHMENT, where)
    kind = att.get("Type", "VirtualDisk")
    if kind not in ("VirtualDisk", "PassThru"):
        raise ErrNotSupported(
            r.op, r.system_id, f"{where}.Type: {kind!r} is not supported by the qemu backend"
        )
    path = r.str_(att, "Path", where, required=True)
    if kind == "VirtualDisk" and not os.path.isfile(path):
        raise r.fail(f"{where}.Path", f"file {path!r} does not exist")
    if kind == "PassThru" and not os.path.exists(path):
        raise r.fail(f"{where}.Path", f"device {path!r} does not exist")
    raw = fixed_vhd_data_size(path) if kind == "VirtualDisk" else None
    raw_file = kind == "PassThru" and os.path.isfile(path)
    return Disk(
        path=path, read_only=bool(att.get("ReadOnly", False)), fixed_vhd_data_size=raw, raw_file=raw_file
    )


_VHD_FOOTER = 512
_VHD_COOKIE = b"conectix"
_VHD_TYPE_FIXED = 2


def fixed_vhd_data_size(path: str) -> int | None:
    """The data size of a fixed VHD (the raw image before its 512-byte footer), else None. QEMU
    reads such a disk with its raw driver over that range: raw can be migrated (a template is
    saved by migration) where the vpc driver cannot."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            if end < _VHD_FOOTER or end % 512:
                return None
            f.seek(end - _VHD_FOOTER)
            footer = f.read(_VHD_FOOTER)
    except OSError:
        return None
    if footer[:8] != _VHD_COOKIE or int.from_bytes(footer[60:64], "big") != _VHD_TYPE_FIXED:
        return None
    return end - _VHD_FOOTER


# Flags a Linux host's virtio-9p export already behaves as: the host fs keeps Linux metadata and is
# case sensitive, and one device has no connection limit. RestrictFileAccess (AllowedFiles) is not.
_PLAN9_REALIZED_FLAGS = (
    PLAN9_FLAG_READ_ONLY
    | PLAN9_FLAG_LINUX_METADATA
    | PLAN9_FLAG_CASE_SENSITIVE
    | PLAN9_FLAG_UNLIMITED_CONNECTIONS
)


def parse_plan9_share(r: _Reader, share: Any, where: str) -> Plan9ShareConfig:
    if not isinstance(share, dict):
        raise r.fail(where, "must be an object")
    refuse_unrealized(r, share, _PLAN9_SHARE, where)
    name = r.str_(share, "Name", where, required=True)
    if "/" in name or name in (".", ".."):
        raise r.fail(f"{where}.Name", f"{name!r} is not a valid share name")
    access = r.str_(share, "AccessName", where)
    if access and access != name:
        raise ErrNotSupported(
            r.op, r.system_id, f"{where}.AccessName {access!r} other than Name {name!r} is not supported"
        )
    path = r.str_(share, "Path", where, required=True)
    if not os.path.exists(path):
        raise r.fail(f"{where}.Path", f"{path!r} does not exist")
    flags = r.int_(share, "Flags", where, 0)
    if flags & ~_PLAN9_REALIZED_FLAGS:
        raise ErrNotSupported(
            r.op,
            r.system_id,
            f"{where}.Flags 0x{flags & ~_PLAN9_REALIZED_FLAGS:x} is not supported by the qemu backend",
        )
    read_only = bool(share.get("ReadOnly", False)) or bool(flags & PLAN9_FLAG_READ_ONLY)
    return Plan9ShareConfig(name=name, path=path, read_only=read_only)


def _template_dirs(r: _Reader, vm: dict[str, Any]) -> tuple[str | None, str | None]:
    """(save-into dir, restore-from dir): upstream's RestoreState for a clone, and hcsshim's
    SaveableAsTemplate for the VM that will be saved (QEMU must map its RAM from a file at boot)."""
    save = r.obj(vm, "SaveableAsTemplate", "VirtualMachine")
    restore = r.obj(vm, "RestoreState", "VirtualMachine")
    save_dir = r.str_(save, "SaveStateFilePath", "VirtualMachine.SaveableAsTemplate") or None
    restore_dir = r.str_(restore, "SaveStateFilePath", "VirtualMachine.RestoreState") or None
    if save and not save_dir:
        raise r.fail("VirtualMachine.SaveableAsTemplate.SaveStateFilePath", "is required")
    if restore and not restore_dir:
        raise r.fail("VirtualMachine.RestoreState.SaveStateFilePath", "is required (a template directory)")
    if save_dir and restore_dir:
        raise r.fail("VirtualMachine.RestoreState", "a clone cannot also be saved as a template")
    if save_dir and not os.path.isabs(save_dir):
        raise r.fail("VirtualMachine.SaveableAsTemplate.SaveStateFilePath", f"{save_dir!r} is not absolute")
    if restore_dir:
        for name in (TEMPLATE_MEMORY_FILE, TEMPLATE_STATE_FILE):
            if not os.path.isfile(os.path.join(restore_dir, name)):
                raise r.fail(
                    "VirtualMachine.RestoreState.SaveStateFilePath",
                    f"{restore_dir!r} is not a saved template: it has no {name} file",
                )
    return save_dir, restore_dir


def parse_document(doc: dict[str, Any], system_id: str, op: str = "CreateComputeSystem") -> VmConfig:
    r = _Reader(op, system_id)
    if doc.get("Container") is not None and doc.get("VirtualMachine") is None:
        raise ErrNotSupported(op, system_id, "Container documents (process isolation) need Windows")
    vm = r.obj(doc, "VirtualMachine", "ComputeSystem", required=True)
    chipset = r.obj(vm, "Chipset", "VirtualMachine", required=True)
    if chipset.get("Uefi") is not None:
        raise ErrNotSupported(
            op, system_id, "VirtualMachine.Chipset.Uefi boot is not supported; use LinuxKernelDirect"
        )
    refuse_unrealized(r, doc, _SHAPE, "")
    lkd = r.obj(chipset, "LinuxKernelDirect", "VirtualMachine.Chipset", required=True)
    where = "VirtualMachine.Chipset.LinuxKernelDirect"
    kernel = r.file(lkd, "KernelFilePath", where)
    initrd = r.file(lkd, "InitRdPath", where, required=False) or None
    cmdline = r.str_(lkd, "KernelCmdLine", where)

    topo = r.obj(vm, "ComputeTopology", "VirtualMachine")
    memory = r.obj(topo, "Memory", "VirtualMachine.ComputeTopology")
    memory_mb = r.int_(memory, "SizeInMB", "VirtualMachine.ComputeTopology.Memory", 1024)
    if memory_mb < 64:
        raise r.fail(
            "VirtualMachine.ComputeTopology.Memory.SizeInMB", f"{memory_mb} is below the 64 MB minimum"
        )
    proc = r.obj(topo, "Processor", "VirtualMachine.ComputeTopology")
    cpus = r.int_(proc, "Count", "VirtualMachine.ComputeTopology.Processor", 1) or 1

    devices = r.obj(vm, "Devices", "VirtualMachine")
    if devices.get("NetworkAdapters"):
        # A boot-time NIC needs a tap the document cannot carry; NICs are hot-added (hcs/qemu/nic.py).
        raise ErrNotSupported(
            op,
            system_id,
            "VirtualMachine.Devices.NetworkAdapters at creation is not supported by qemu: "
            "hot-add each adapter with a ModifySettingRequest",
        )
    scsi: dict[str, ScsiController] = {}
    scsi_doc = r.obj(devices, "Scsi", "VirtualMachine.Devices")
    if len(scsi_doc) > SCSI_CONTROLLERS:
        raise r.fail("VirtualMachine.Devices.Scsi", f"at most {SCSI_CONTROLLERS} controllers")
    used: set[int] = set()
    for pos, (guid, ctrl) in enumerate(scsi_doc.items()):
        cw = f"VirtualMachine.Devices.Scsi.{guid}"
        if not isinstance(ctrl, dict):
            raise r.fail(cw, "must be an object")
        index = scsi_controller_index(guid, pos)
        if index in used:
            index = next(i for i in range(SCSI_CONTROLLERS) if i not in used)
        used.add(index)
        refuse_unrealized(r, ctrl, {"Attachments": _any}, cw)
        controller = ScsiController(index=index, guid=guid.lower())
        for lun_s, att in r.obj(ctrl, "Attachments", cw).items():
            if not lun_s.isdigit() or int(lun_s) >= SCSI_LUNS_PER_CONTROLLER:
                raise r.fail(f"{cw}.Attachments.{lun_s}", f"LUN must be 0..{SCSI_LUNS_PER_CONTROLLER - 1}")
            controller.disks[int(lun_s)] = parse_attachment(r, att, f"{cw}.Attachments.{lun_s}")
        scsi[guid.lower()] = controller

    if initrd is None and not any(c.index == 0 and 0 in c.disks for c in scsi.values()):
        raise r.fail(
            where + ".InitRdPath",
            "is required unless SCSI controller 0 LUN 0 holds the root filesystem VHD",
        )

    plan9 = [
        parse_plan9_share(r, s, f"VirtualMachine.Devices.Plan9.Shares[{i}]")
        for i, s in enumerate(r.obj(devices, "Plan9", "VirtualMachine.Devices").get("Shares") or [])
    ]
    plan9_doc = r.obj(devices, "Plan9", "VirtualMachine.Devices")
    refuse_unrealized(r, plan9_doc, _PLAN9, "VirtualMachine.Devices.Plan9")
    pmem_doc = r.obj(devices, "VirtualPMem", "VirtualMachine.Devices")
    refuse_unrealized(r, pmem_doc, _PMEM_CONTROLLER, "VirtualMachine.Devices.VirtualPMem")
    vpmem: dict[int, PMemDevice] = {}
    for n_s, dev in r.obj(pmem_doc, "Devices", "VirtualMachine.Devices.VirtualPMem").items():
        pw = f"VirtualMachine.Devices.VirtualPMem.Devices.{n_s}"
        if not n_s.isdigit() or not isinstance(dev, dict):
            raise r.fail(pw, "must be a numbered object")
        refuse_unrealized(r, dev, PMEM_DEVICE_SHAPE, pw)
        vpmem[int(n_s)] = PMemDevice(r.file(dev, "HostPath", pw), bool(dev.get("ReadOnly", True)))
    # A distribution kernel cannot mount a SCSI root by itself (virtio_scsi is a module): a VHD-rooted
    # document boots the image's stage-1 initrd from beside the kernel, which mounts root= and
    # switches to it. Hyper-V's kernel has the drivers built in, hence nothing in the document.
    stage1 = os.path.join(os.path.dirname(kernel), STAGE1_INITRD)
    template_dir, restore_dir = _template_dirs(r, vm)
    return VmConfig(
        template_dir=template_dir,
        restore_dir=restore_dir,
        stage1_initrd=stage1 if initrd is None and os.path.isfile(stage1) else None,
        owner=str(doc.get("Owner", "")),
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline,
        memory_mb=memory_mb,
        cpus=cpus,
        scsi=scsi,
        plan9=plan9,
        vpmem=vpmem,
        vpmem_max_count=r.int_(pmem_doc, "MaximumCount", "VirtualMachine.Devices.VirtualPMem", 0),
        vpmem_max_size=r.int_(pmem_doc, "MaximumSizeBytes", "VirtualMachine.Devices.VirtualPMem", 0),
    )
