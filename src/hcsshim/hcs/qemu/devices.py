"""ModifySettingRequest handling: hot add/remove of SCSI disks, Plan9 shares and VPMem devices.

Resource paths are upstream's (internal/hcs/resourcepaths/virtualmachine.go). VPMem devices are
virtio-pmem-pci (works under TCG: boot-time and hot-added devices appear as /dev/pmemN and mount
read-only; they cannot be hot-removed, a QEMU limit, so Remove says so)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from typing import TYPE_CHECKING, Any

from hcsshim.hcs.errors import (
    ErrAlreadyExists,
    ErrElementNotFound,
    ErrInvalidData,
    ErrNotSupported,
    ErrTimeout,
    HcsError,
)
from hcsshim.hcs.qemu import mounts
from hcsshim.hcs.qemu.cmdline import (
    VPMEM_MAX_SLOTS,
    blockdev_args,
    scsi_device_args,
    scsi_node_name,
    vpmem_device_args,
    vpmem_id,
    vpmem_object_args,
)
from hcsshim.hcs.qemu.config import (
    PMEM_DEVICE_SHAPE,
    Disk,
    PMemDevice,
    _Reader,
    parse_attachment,
    parse_plan9_share,
    refuse_unrealized,
)
from hcsshim.hcs.qemu.nic import NIC_PATH, NicSet

if TYPE_CHECKING:
    from hcsshim.hcs.qemu.system import QemuComputeSystem

log = logging.getLogger(__name__)

SCSI_PATH = re.compile(r"^VirtualMachine/Devices/Scsi/([^/]+)/Attachments/(\d+)$")
PLAN9_PATH = "VirtualMachine/Devices/Plan9/Shares"
VPMEM_PATH = re.compile(r"^VirtualMachine/Devices/VirtualPMem/Devices/(\d+)(/Mappings/\d+)?$")
DEVICE_DELETED_TIMEOUT = 10.0


class DeviceSet:
    """What is attached to one VM, and the QMP choreography to change it."""

    def __init__(self, system: QemuComputeSystem) -> None:
        self.system = system
        self.disks: dict[tuple[int, int], Disk] = {}
        self.shares: dict[str, str] = {}  # name -> mount point in the 9p root
        self.pmem: dict[int, PMemDevice] = {}
        self.nics = NicSet(self)

    @property
    def _id(self) -> str:
        return self.system.id

    def load_boot_disks(self) -> None:
        self.pmem.update(self.system.cfg.vpmem)
        for ctrl in self.system.cfg.scsi.values():
            for lun, disk in ctrl.disks.items():
                self.disks[(ctrl.index, lun)] = disk

    async def modify(self, req: dict[str, Any]) -> None:
        path = req.get("ResourcePath", "")
        kind = req.get("RequestType", "Add") or "Update"
        settings = req.get("Settings")
        if not isinstance(path, str) or not path:
            raise ErrInvalidData("Modify", self._id, "ModifySettingRequest.ResourcePath is required")
        # GuestRequest (the guest half HCS forwards to its GCS) and anything else: this backend does
        # not talk to the guest, the UtilityVM sends that half over the bridge itself.
        refuse_unrealized(
            _Reader("Modify", self._id),
            req,
            {"ResourcePath": lambda v: True, "RequestType": lambda v: True, "Settings": lambda v: True},
            "ModifySettingRequest",
        )
        if m := SCSI_PATH.match(path):
            await self._modify_scsi(m.group(1).lower(), int(m.group(2)), kind, settings)
        elif path == PLAN9_PATH:
            await self._modify_plan9(kind, settings)
        elif m := VPMEM_PATH.match(path):
            if m.group(2):
                raise ErrNotSupported("Modify", self._id, "multi-mapped VPMem devices are not supported")
            await self._modify_vpmem(int(m.group(1)), kind, settings)
        elif m := NIC_PATH.match(path):
            await self.nics.modify(m.group(1), kind, settings)
        else:
            raise ErrNotSupported("Modify", self._id, f"ResourcePath {path!r} is not supported by qemu")

    # ---- SCSI ------------------------------------------------------------------------------------

    def _controller(self, guid: str) -> int:
        ctrl = self.system.cfg.scsi.get(guid)
        if ctrl is None:
            raise ErrElementNotFound("Modify", self._id, f"SCSI controller {guid} is not in the document")
        return ctrl.index

    async def _modify_scsi(self, guid: str, lun: int, kind: str, settings: Any) -> None:
        index = self._controller(guid)
        if kind == "Add":
            r = _Reader("Modify", self._id)
            disk = await asyncio.to_thread(parse_attachment, r, settings, "ModifySettingRequest.Settings")
            await self.add_disk(index, lun, disk)
        elif kind == "Remove":
            await self.remove_disk(index, lun)
        else:
            raise ErrNotSupported("Modify", self._id, f"RequestType {kind!r} for a SCSI attachment")

    async def add_disk(self, index: int, lun: int, disk: Disk) -> None:
        if (index, lun) in self.disks:
            raise ErrAlreadyExists("Modify", self._id, f"SCSI {index}:{lun} is already attached")
        await self.system.execute("Modify", "blockdev-add", blockdev_args(index, lun, disk))
        try:
            await self.system.execute("Modify", "device_add", scsi_device_args(index, lun))
        except HcsError:
            await self.system.execute("Modify", "blockdev-del", {"node-name": scsi_node_name(index, lun)})
            raise
        self.disks[(index, lun)] = disk
        log.info("scsi attached", extra={"id": self._id, "controller": index, "lun": lun, "path": disk.path})

    async def remove_disk(self, index: int, lun: int) -> None:
        if (index, lun) not in self.disks:
            raise ErrElementNotFound("Modify", self._id, f"nothing is attached at SCSI {index}:{lun}")
        node = scsi_node_name(index, lun)
        await self._device_del(node, f"SCSI {index}:{lun}")
        await self.system.execute("Modify", "blockdev-del", {"node-name": node})
        del self.disks[(index, lun)]
        log.info("scsi detached", extra={"id": self._id, "controller": index, "lun": lun})

    # ---- VPMem ------------------------------------------------------------------------------------

    async def _modify_vpmem(self, n: int, kind: str, settings: Any) -> None:
        cfg = self.system.cfg
        slots = min(max(cfg.vpmem_max_count, len(cfg.vpmem)), VPMEM_MAX_SLOTS)
        if kind == "Add":
            if n in self.pmem:
                raise ErrAlreadyExists("Modify", self._id, f"VPMem device {n} already exists")
            if len(self.pmem) >= slots:
                raise ErrNotSupported(
                    "Modify", self._id, f"no free VPMem slot (VirtualPMem.MaximumCount allows {slots})"
                )
            r = _Reader("Modify", self._id)
            if not isinstance(settings, dict):
                raise r.fail("ModifySettingRequest.Settings", "must be a VirtualPMemDevice object")
            refuse_unrealized(r, settings, PMEM_DEVICE_SHAPE, "ModifySettingRequest.Settings")
            path = r.file(settings, "HostPath", "ModifySettingRequest.Settings")
            dev = PMemDevice(path, bool(settings.get("ReadOnly", True)))
            await self.system.execute("Modify", "object-add", vpmem_object_args(n, dev))
            try:
                await self.system.execute("Modify", "device_add", vpmem_device_args(n))
            except HcsError:
                await self.system.execute("Modify", "object-del", {"id": vpmem_id(n)})
                raise
            self.pmem[n] = dev
        elif kind == "Remove":
            if n not in self.pmem:
                raise ErrElementNotFound("Modify", self._id, f"no VPMem device {n}")
            # QEMU 7.2: "virtio based memory devices cannot be unplugged"; say so before trying.
            raise ErrNotSupported(
                "Modify", self._id, f"VPMem device {n} cannot be removed: QEMU cannot unplug virtio-pmem"
            )
        else:
            raise ErrNotSupported("Modify", self._id, f"RequestType {kind!r} for a VPMem device")

    async def _device_del(self, dev_id: str, what: str) -> None:
        """device_del, then wait for QEMU to say the device is gone (a hot unplug may need the guest)."""
        with self.system.qmp.listener("DEVICE_DELETED") as listener:
            await self.system.execute("Modify", "device_del", {"id": dev_id})

            async def deleted() -> None:
                async for event in listener:
                    data = event.get("data")
                    if isinstance(data, dict) and data.get("device") == dev_id:
                        return

            try:
                await asyncio.wait_for(deleted(), DEVICE_DELETED_TIMEOUT)
            except TimeoutError as e:
                raise ErrTimeout(
                    "Modify", self._id, f"guest did not release {what} within {DEVICE_DELETED_TIMEOUT:.0f}s"
                ) from e

    # ---- Plan9 -----------------------------------------------------------------------------------

    async def _modify_plan9(self, kind: str, settings: Any) -> None:
        r = _Reader("Modify", self._id)
        if kind == "Add":
            share = parse_plan9_share(r, settings, "ModifySettingRequest.Settings")
            await self.add_plan9_share(share.name, share.path, share.read_only)
        elif kind == "Remove":
            if not isinstance(settings, dict) or not settings.get("Name"):
                raise r.fail("ModifySettingRequest.Settings.Name", "is required")
            await self.remove_plan9_share(str(settings["Name"]))
        else:
            raise ErrNotSupported("Modify", self._id, f"RequestType {kind!r} for a Plan9 share")

    async def add_plan9_share(self, name: str, host_path: str, read_only: bool) -> None:
        if name in self.shares:
            raise ErrAlreadyExists("Modify", self._id, f"Plan9 share {name!r} already exists")
        target = os.path.join(self.system.paths.plan9_root, name)
        try:
            # A mount can block (a busy or slow source): keep it off the event loop.
            await asyncio.to_thread(mounts.bind_mount, host_path, target, read_only)
        except OSError as e:
            raise HcsError("Modify", self._id, f"sharing {host_path}: {e}") from e
        self.shares[name] = target
        extra = {"id": self._id, "share": name, "path": host_path, "ro": read_only}
        log.info("plan9 share added", extra=extra)

    async def remove_plan9_share(self, name: str) -> None:
        target = self.shares.pop(name, None)
        if target is None:
            raise ErrElementNotFound("Modify", self._id, f"no Plan9 share named {name!r}")
        try:
            await asyncio.to_thread(_unmount_and_remove, target)
        except OSError as e:
            raise HcsError("Modify", self._id, f"removing share {name!r}: {e}") from e
        log.info("plan9 share removed", extra={"id": self._id, "share": name})

    async def release_all(self) -> None:
        """Host-side teardown after QEMU is gone: the disks went with the process, mounts did not."""
        for name in list(self.shares):
            try:
                await self.remove_plan9_share(name)
            except HcsError as e:
                log.error("plan9 share teardown failed", extra={"id": self._id, "error": str(e)})
        self.disks.clear()
        self.pmem.clear()
        self.nics.release_all()


def _unmount_and_remove(target: str) -> None:
    mounts.unmount(target)
    if os.path.isdir(target):
        os.rmdir(target)
    else:
        os.unlink(target)
