"""Guest storage for ModifySettings: SCSI disks, VPMem devices, Plan9 shares, overlay rootfs."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from hcsshim.gcs import devices
from hcsshim.gcs.protocol import GcsError, Hresult

from . import log
from .syscalls import MNT_DETACH, MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT, is_mountpoint, mount, umount

LOG = log.get("storage")


def _mkdir(path: str) -> None:
    os.makedirs(path, exist_ok=True)


def _require(settings: dict[str, Any], key: str) -> Any:
    value = settings.get(key)
    if value in (None, ""):
        raise GcsError(f"missing {key}", Hresult.E_INVALIDARG)
    return value


async def wait_for_scsi(
    controller: int, lun: int, timeout: float = 10.0, sysfs_root: str = ""
) -> tuple[str, str]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = devices.find_scsi_device(controller, lun, sysfs_root)
        if found is not None:
            dev_dir, dev = found
            # udev is not running in the UVM; the node may lag behind sysfs briefly.
            if os.path.exists(dev):
                return dev_dir, dev
        if asyncio.get_running_loop().time() > deadline:
            raise GcsError(f"SCSI disk controller={controller} lun={lun} not found", Hresult.ERROR_NOT_FOUND)
        await asyncio.sleep(0.05)


async def add_mapped_virtual_disk(settings: dict[str, Any], sysfs_root: str = "") -> None:
    target = _require(settings, "MountPath")
    controller = int(settings.get("Controller") or 0)
    lun = int(settings.get("Lun") or 0)
    _, dev = await wait_for_scsi(controller, lun, sysfs_root=sysfs_root)
    partition = int(settings.get("Partition") or 0)
    if partition:
        dev = f"{dev}{partition}"
    read_only = bool(settings.get("ReadOnly"))
    if settings.get("BlockDev"):
        with open(target, "a"):
            pass
        mount(dev, target, "", MS_BIND)
        return
    _mkdir(target)
    fstype = settings.get("Filesystem") or "ext4"
    options = [o for o in settings.get("Options") or [] if o]
    mount(dev, target, fstype, MS_RDONLY if read_only else 0, ",".join(options))
    LOG.info("mounted scsi disk", extra={"device": dev, "target": target, "ro": read_only})


def remove_mount(settings: dict[str, Any], key: str = "MountPath") -> None:
    target = _require(settings, key)
    if is_mountpoint(target):
        umount(target)
    with contextlib.suppress(OSError):
        os.rmdir(target)


def eject_scsi(settings: dict[str, Any], sysfs_root: str = "") -> None:
    controller = int(settings.get("Controller") or 0)
    lun = int(settings.get("Lun") or 0)
    found = devices.find_scsi_device(controller, lun, sysfs_root)
    if found is None:
        return
    with open(os.path.join(found[0], "delete"), "w", encoding="ascii") as f:
        f.write("1")


def add_vpmem(settings: dict[str, Any]) -> None:
    target = _require(settings, "MountPath")
    dev = devices.vpmem_device(int(settings.get("DeviceNumber") or 0))
    if settings.get("MappingInfo"):
        raise GcsError("multi-mapped VPMem devices are not supported", Hresult.E_NOTIMPL)
    _mkdir(target)
    mount(dev, target, "ext4", MS_RDONLY, "noload")


def add_plan9(settings: dict[str, Any]) -> None:
    target = _require(settings, "MountPath")
    share = _require(settings, "ShareName")
    if "/" in share or share in (".", ".."):
        raise GcsError(f"invalid Plan9 share name {share!r}", Hresult.E_INVALIDARG)
    if not is_mountpoint(devices.PLAN9_ROOT):
        _mkdir(devices.PLAN9_ROOT)
        mount(
            devices.PLAN9_MOUNT_TAG, devices.PLAN9_ROOT, "9p", 0, "trans=virtio,version=9p2000.L,msize=262144"
        )
    source = devices.plan9_source_path(share)
    if not os.path.exists(source):
        raise GcsError(f"Plan9 share {share} not present at {source}", Hresult.ERROR_NOT_FOUND)
    if os.path.isdir(source):
        _mkdir(target)
    else:
        _mkdir(os.path.dirname(target))
        with open(target, "a"):
            pass
    mount(source, target, "", MS_BIND | MS_REC)
    if settings.get("ReadOnly"):
        mount("", target, "", MS_BIND | MS_REMOUNT | MS_RDONLY)


def add_combined_layers(settings: dict[str, Any]) -> None:
    """Overlay read-only layers (first = top-most, as upstream's lowerdir order) plus scratch."""
    target = _require(settings, "ContainerRootPath")
    layers = [str(layer.get("Path") or "") for layer in settings.get("Layers") or []]
    if not layers or not all(layers):
        raise GcsError("CombinedLayers needs at least one layer path", Hresult.E_INVALIDARG)
    for layer in layers:
        if not os.path.isdir(layer):
            raise GcsError(f"layer {layer} does not exist", Hresult.ERROR_NOT_FOUND)
    _mkdir(target)
    scratch = settings.get("ScratchPath") or ""
    if scratch:
        upper, work = os.path.join(scratch, "upper"), os.path.join(scratch, "work")
        _mkdir(upper)
        _mkdir(work)
        data = f"lowerdir={':'.join(layers)},upperdir={upper},workdir={work}"
        flags = 0
    else:
        data = f"lowerdir={':'.join(layers)}"
        flags = MS_RDONLY
    mount("overlay", target, "overlay", flags, data)
    LOG.info("mounted overlay", extra={"target": target, "layers": len(layers), "scratch": scratch})


def remove_combined_layers(settings: dict[str, Any]) -> None:
    target = _require(settings, "ContainerRootPath")
    if is_mountpoint(target):
        try:
            umount(target)
        except OSError:
            umount(target, MNT_DETACH)


def mount_tmpfs(target: str, size_kb: int) -> None:
    _mkdir(target)
    mount("shm", target, "tmpfs", 0x2 | 0x4 | 0x8, f"mode=1777,size={size_kb}k")
