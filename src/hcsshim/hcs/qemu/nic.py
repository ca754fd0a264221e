"""Network adapters: virtio-net NICs hot-added over QMP with a tap backend.

The qemu backend's NetworkAdapter endpoint is a tap device that already exists in some network
namespace (on Windows the EndpointId names an HCN endpoint; here the caller names the tap and the
namespace it lives in, so this backend knows nothing of CNI). Settings::

    {"EndpointId": "...", "MacAddress": "0a:58:...",
     "Tap": {"Name": "tap0_hcs", "NetNsPath": "/proc/<pid>/fd/<n>", "Mtu": 1500}}

The tap is opened from a thread that has joined that namespace (a tun file is bound to the
namespace it was opened in), handed to QEMU with ``getfd`` and used as ``netdev_add tap fd=``;
no vhost (this host has no vhost-net). The tap must be a vnet_hdr tap: QEMU probes the header
from the fd. NICs sit at fixed PCI slots so the placement never collides with SCSI (0x10+).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import re
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hcsshim.hcs.errors import ErrAlreadyExists, ErrElementNotFound, ErrInvalidData, ErrNotSupported, HcsError
from hcsshim.hcs.qemu.config import Shape, _Reader, refuse_unrealized

if TYPE_CHECKING:
    from hcsshim.hcs.qemu.devices import DeviceSet

log = logging.getLogger(__name__)

NIC_PATH = re.compile(r"^VirtualMachine/Devices/NetworkAdapters/([^/]+)$")
NIC_PCI_SLOT_BASE = 0x18
NIC_MAX = 8
_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True, slots=True)
class Nic:
    id: str
    mac: str
    slot: int
    tap: str
    netns: str

    @property
    def device_id(self) -> str:
        return f"nic{self.slot:02x}"

    @property
    def netdev_id(self) -> str:
        return f"netdev-nic{self.slot:02x}"


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _open_tap_in(netns_path: str, name: str) -> int:
    """Open /dev/net/tun inside ``netns_path`` and attach to tap ``name`` there.

    Runs in a thread of its own: setns changes only the calling thread, and a thread that failed to
    switch back must never run anything else."""
    result: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
                try:
                    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
                finally:
                    _setns(own)
            finally:
                os.close(target)
            try:
                ifr = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
                fcntl.ioctl(fd, TUNSETIFF, ifr)
            except OSError:
                os.close(fd)
                raise
            result.append(fd)
        except BaseException as e:
            errors.append(e)
        finally:
            os.close(own)

    t = threading.Thread(target=work, name=f"tap-open-{name}", daemon=True)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return result[0]


def _named(value: object) -> bool:
    return True


# EndpointId is the adapter's name on the host side (HNS's endpoint); the resource path names ours.
_NIC_SHAPE: Shape = {
    "EndpointId": _named,
    "MacAddress": _named,
    "IovSettings": _named,  # refused above when set
    "Tap": {"Name": _named, "NetNsPath": _named, "Mtu": _named},
}


def parse_nic_settings(system_id: str, nic_id: str, settings: Any) -> tuple[str, str, str, int]:
    """(mac, tap name, netns path, mtu) from the Add settings, with the field named on error."""

    def bad(field: str, why: str) -> ErrInvalidData:
        return ErrInvalidData("Modify", system_id, f"NetworkAdapter {nic_id}: {field} {why}")

    if not isinstance(settings, dict):
        raise bad("Settings", "must be a NetworkAdapter object")
    if settings.get("IovSettings"):
        raise ErrNotSupported("Modify", system_id, "NetworkAdapter.IovSettings is not supported by qemu")
    refuse_unrealized(_Reader("Modify", system_id), settings, _NIC_SHAPE, "NetworkAdapter")
    mac = str(settings.get("MacAddress") or "")
    if not _MAC.match(mac):
        raise bad("MacAddress", f"{mac!r} is not a MAC address")
    tap = settings.get("Tap")
    if not isinstance(tap, dict):
        raise bad("Tap", "is required by the qemu backend (the tap device and its network namespace)")
    name = str(tap.get("Name") or "")
    netns = str(tap.get("NetNsPath") or "")
    if not name or len(name) > 15:
        raise bad("Tap.Name", f"{name!r} must be an interface name of 1-15 bytes")
    if not netns.startswith("/"):
        raise bad("Tap.NetNsPath", f"{netns!r} must be an absolute path")
    mtu = tap.get("Mtu") or 0
    if not isinstance(mtu, int) or not (0 <= mtu <= 65535):
        raise bad("Tap.Mtu", f"{mtu!r} must be 0..65535")
    return mac.lower().replace("-", ":"), name, netns, mtu


class NicSet:
    """The NICs of one VM."""

    def __init__(self, devices: DeviceSet) -> None:
        self.devices = devices
        self.nics: dict[str, Nic] = {}

    @property
    def _system(self) -> Any:
        return self.devices.system

    def _free_slot(self) -> int:
        used = {n.slot for n in self.nics.values()}
        for i in range(NIC_MAX):
            if NIC_PCI_SLOT_BASE + i not in used:
                return NIC_PCI_SLOT_BASE + i
        raise ErrNotSupported("Modify", self._system.id, f"at most {NIC_MAX} network adapters per VM")

    async def modify(self, nic_id: str, kind: str, settings: Any) -> None:
        if kind == "Add":
            await self.add(nic_id, settings)
        elif kind == "Remove":
            await self.remove(nic_id)
        else:
            raise ErrNotSupported("Modify", self._system.id, f"RequestType {kind!r} for a network adapter")

    async def add(self, nic_id: str, settings: Any) -> None:
        system = self._system
        if nic_id in self.nics:
            raise ErrAlreadyExists("Modify", system.id, f"network adapter {nic_id} already exists")
        mac, tap, netns, mtu = parse_nic_settings(system.id, nic_id, settings)
        nic = Nic(nic_id, mac, self._free_slot(), tap, netns)
        try:
            fd = await asyncio.to_thread(_open_tap_in, netns, tap)
        except OSError as e:
            raise HcsError("Modify", system.id, f"opening tap {tap} in {netns}: {e}") from e
        fdname = f"tapfd-{nic.device_id}"
        try:
            system.qmp.send_fd_scm(fd)
            await system.execute("Modify", "getfd", {"fdname": fdname})
        finally:
            os.close(fd)  # QEMU holds its own copy now (or none, and the add fails below)
        try:
            await system.execute(
                "Modify", "netdev_add", {"type": "tap", "id": nic.netdev_id, "fd": fdname, "vhost": False}
            )
        except HcsError:
            with contextlib.suppress(HcsError):
                await system.execute("Modify", "closefd", {"fdname": fdname})
            raise
        device: dict[str, Any] = {
            "driver": "virtio-net-pci",
            "id": nic.device_id,
            "netdev": nic.netdev_id,
            "mac": mac,
            "bus": "pci.0",
            "addr": f"0x{nic.slot:02x}",
            "romfile": "",
        }
        if mtu:
            # VIRTIO_NET_F_MTU: the guest driver takes the CNI interface's MTU from the device.
            device["host_mtu"] = mtu
        try:
            await system.execute("Modify", "device_add", device)
        except HcsError:
            with contextlib.suppress(HcsError):
                await system.execute("Modify", "netdev_del", {"id": nic.netdev_id})
            raise
        self.nics[nic_id] = nic
        log.info(
            "nic attached", extra={"id": system.id, "nic": nic_id, "tap": tap, "mac": mac, "slot": nic.slot}
        )

    async def remove(self, nic_id: str) -> None:
        system = self._system
        nic = self.nics.get(nic_id)
        if nic is None:
            raise ErrElementNotFound("Modify", system.id, f"no network adapter {nic_id}")
        await self.devices._device_del(nic.device_id, f"network adapter {nic_id}")
        await system.execute("Modify", "netdev_del", {"id": nic.netdev_id})
        del self.nics[nic_id]
        log.info("nic detached", extra={"id": system.id, "nic": nic_id})

    def release_all(self) -> None:
        self.nics.clear()
