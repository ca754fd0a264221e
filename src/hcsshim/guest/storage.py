"""Guest storage for ModifySettings: SCSI disks, VPMem devices, Plan9 shares, overlay rootfs."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from typing import Any

from hcsshim.gcs.protocol import GcsError, Hresult
from hcsshim.hvsock import abi

from . import log
from .syscalls import MNT_DETACH, MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT, is_mountpoint, mount, umount

LOG = log.get("storage")


def _mkdir(path: str) -> None:
    os.makedirs(path, exist_ok=True)


def _touch(path: str) -> None:
    with open(path, "a"):
        pass


def _require(settings: dict[str, Any], key: str) -> Any:
    value = settings.get(key)
    if value in (None, ""):
        raise GcsError(f"missing {key}", Hresult.E_INVALIDARG)
    return value


# Written by the UVM's /init once every kernel module is loaded (see hcsshim.image.init_script); the
# init script exports its path as HCSSHIM_MODULES_DONE. Empty: nothing to wait for (agent on a host).
MODULES_DONE = "/run/hcsshim/modules.done"
MODULES_DONE_ENV = "HCSSHIM_MODULES_DONE"
MODULES_TIMEOUT = 30.0


class ModuleGate:
    """Waits, once, for /init's background module loading to finish before a mount or device
    operation that may need a module (9p, overlay, virtio_scsi/sd_mod, nd_pmem, ext4, vsock)."""

    def __init__(self, marker: str = "", timeout: float = MODULES_TIMEOUT, poll: float = 0.02) -> None:
        self.marker = marker
        self.timeout = timeout
        self.poll = poll
        self._ready = not marker

    async def wait(self, what: str = "") -> None:
        if self._ready:
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.timeout
        while not os.path.exists(self.marker):
            if loop.time() > deadline:
                raise GcsError(
                    f"{what or 'operation'}: kernel modules not loaded after {self.timeout:g} s "
                    f"({self.marker} missing; boot with hcsshim.modules=sync to load them before the agent)",
                    Hresult.VMCOMPUTE_TIMEOUT,
                )
            await asyncio.sleep(self.poll)
        self._ready = True
        waited_ms = round((loop.time() - start) * 1000)
        LOG.info("kernel modules loaded", extra={"what": what, "waited_ms": waited_ms})


def _block_ready(dev_dir: str, dev: str, dev_root: str) -> str:
    """Why the disk cannot be used yet, or "" when it can: a hot-added disk's node appears before
    the disk has read its capacity, and opening it then fails with ENXIO."""
    name = os.path.basename(dev)
    try:
        with open(os.path.join(dev_dir, "block", name, "size"), encoding="ascii") as f:
            sectors = int(f.read().strip() or 0)
    except (OSError, ValueError) as e:
        return f"no size in sysfs ({e})"
    if sectors <= 0:
        return "size 0"
    try:
        fd = os.open(dev_root + dev, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        return f"open {dev}: {e.strerror or e}"
    os.close(fd)
    return ""


async def wait_for_scsi(
    controller: int, lun: int, timeout: float = 10.0, sysfs_root: str = "", dev_root: str = ""
) -> tuple[str, str]:
    """(sysfs device dir, /dev/sdX) once the disk at controller/LUN exists, has a size and opens."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    why = ""
    while True:
        found = abi.find_scsi_device(controller, lun, sysfs_root)
        if found is not None:
            dev_dir, dev = found
            # udev is not running in the UVM; the node may lag behind sysfs briefly.
            why = _block_ready(dev_dir, dev, dev_root) if os.path.exists(dev_root + dev) else f"no {dev}"
            if not why:
                return dev_dir, dev
        if loop.time() > deadline:
            if found is None:
                raise GcsError(
                    f"SCSI disk controller={controller} lun={lun} not found", Hresult.ERROR_NOT_FOUND
                )
            raise GcsError(
                f"SCSI disk controller={controller} lun={lun} ({found[1]}) "
                f"not ready after {timeout:g} s: {why}",
                Hresult.VMCOMPUTE_TIMEOUT,
            )
        await asyncio.sleep(0.05)


MOUNT_RETRIES = 5


async def mount_retrying(
    source: str, target: str, fstype: str, flags: int, data: str, what: str, delay: float = 0.1
) -> None:
    """mount(2), retried a few times on ENXIO (a disk that answered open but is still settling)."""
    for attempt in range(MOUNT_RETRIES):
        try:
            # A disk that is still settling can hold mount(2) for a while: keep it off the loop.
            await asyncio.to_thread(mount, source, target, fstype, flags, data)
            return
        except OSError as e:
            if e.errno != errno.ENXIO or attempt == MOUNT_RETRIES - 1:
                if e.errno == errno.ENXIO:
                    raise OSError(e.errno, f"{what}: {e.strerror} after {MOUNT_RETRIES} attempts") from None
                raise
            LOG.info("mount got ENXIO, retrying", extra={"what": what, "attempt": attempt + 1})
            await asyncio.sleep(delay * (attempt + 1))


async def add_mapped_virtual_disk(
    settings: dict[str, Any], sysfs_root: str = "", dev_root: str = "", timeout: float = 10.0
) -> None:
    target = _require(settings, "MountPath")
    controller = int(settings.get("Controller") or 0)
    lun = int(settings.get("Lun") or 0)
    _, dev = await wait_for_scsi(controller, lun, timeout=timeout, sysfs_root=sysfs_root, dev_root=dev_root)
    partition = int(settings.get("Partition") or 0)
    if partition:
        dev = f"{dev}{partition}"
    what = f"SCSI disk controller={controller} lun={lun} ({dev})"
    read_only = bool(settings.get("ReadOnly"))
    if settings.get("BlockDev"):
        await asyncio.to_thread(_touch, target)
        await mount_retrying(dev, target, "", MS_BIND, "", what)
        return
    await asyncio.to_thread(_mkdir, target)
    fstype = settings.get("Filesystem") or "ext4"
    options = [o for o in settings.get("Options") or [] if o]
    await mount_retrying(dev, target, fstype, MS_RDONLY if read_only else 0, ",".join(options), what)
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
    found = abi.find_scsi_device(controller, lun, sysfs_root)
    if found is None:
        return
    with open(os.path.join(found[0], "delete"), "w", encoding="ascii") as f:
        f.write("1")


def add_vpmem(settings: dict[str, Any]) -> None:
    target = _require(settings, "MountPath")
    dev = abi.vpmem_device(int(settings.get("DeviceNumber") or 0))
    if settings.get("MappingInfo"):
        raise GcsError("multi-mapped VPMem devices are not supported", Hresult.E_NOTIMPL)
    _mkdir(target)
    mount(dev, target, "ext4", MS_RDONLY, "noload")


def add_plan9(settings: dict[str, Any]) -> None:
    target = _require(settings, "MountPath")
    share = _require(settings, "ShareName")
    if "/" in share or share in (".", ".."):
        raise GcsError(f"invalid Plan9 share name {share!r}", Hresult.E_INVALIDARG)
    if not is_mountpoint(abi.PLAN9_ROOT):
        _mkdir(abi.PLAN9_ROOT)
        mount(abi.PLAN9_MOUNT_TAG, abi.PLAN9_ROOT, "9p", 0, "trans=virtio,version=9p2000.L,msize=262144")
    source = abi.plan9_source_path(share)
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
    if not scratch and len(layers) == 1:
        # overlayfs needs an upper dir or two lower dirs: one layer alone is a read-only bind.
        mount(layers[0], target, "", MS_BIND)
        mount("", target, "", MS_BIND | MS_REMOUNT | MS_RDONLY)
        LOG.info("bound single read-only layer", extra={"target": target, "layer": layers[0]})
        return
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
