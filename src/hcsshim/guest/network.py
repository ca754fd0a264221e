"""Network modify requests (hcsshim's LCOWNetworkAdapter): NICs into per-pod network namespaces.

A pod's namespace is created by the first adapter that names it (``NamespaceID``) and kept alive by a
bind mount under /run/hcsshim/netns, so runc joins it by path when the sandbox container is created
(its spec names the namespace in ``windows.network.networkNamespace``, as hcsshim's LCOW documents
do). The NIC is found by MAC (there is no VMBus instance ID under QEMU), moved into the namespace,
named ethN, given the adapter's addresses and routes, and brought up with the namespace's loopback.
The MTU is the device's own (the host sets it on the virtio device), less ``EncapOverhead``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any

from hcsshim.gcs.protocol import GcsError, Hresult

from . import log
from .netlink import Netlink, NetlinkError, create_netns, open_in, remove_netns

LOG = log.get("network")
NETNS_DIR = "/run/hcsshim/netns"
NIC_WAIT_TIMEOUT = 30.0
_NS_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MAC = re.compile(r"^([0-9a-f]{2}[:-]){5}[0-9a-f]{2}$")
_NO_GATEWAY = {("0.0.0.0/0", "0.0.0.0"), ("::/0", "::")}


@dataclass
class Nic:
    id: str
    mac: str
    ifname: str


@dataclass
class Namespace:
    id: str
    path: str
    nics: dict[str, Nic] = field(default_factory=dict)
    dns_servers: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)


class NetworkNamespaces:
    def __init__(self, sysfs_root: str = "", netns_dir: str = NETNS_DIR) -> None:
        self.sysfs_root = sysfs_root
        self.netns_dir = netns_dir
        self.namespaces: dict[str, Namespace] = {}
        self._lock = asyncio.Lock()

    def path_for(self, namespace_id: str) -> str:
        """The namespace runc joins for a pod; an error if no adapter created it."""
        ns = self.namespaces.get(namespace_id.lower())
        if ns is None:
            raise GcsError(
                f"network namespace {namespace_id} does not exist in the guest (no adapter was added to it)",
                Hresult.ERROR_NOT_FOUND,
            )
        return ns.path

    # ---- requests ------------------------------------------------------------------------------

    async def add_adapter(self, settings: dict[str, Any]) -> None:
        nic_id = str(settings.get("ID") or "")
        ns_id = str(settings.get("NamespaceID") or "").lower()
        mac = str(settings.get("MacAddress") or "").lower().replace("-", ":")
        if not nic_id:
            raise GcsError("LCOWNetworkAdapter.ID is required", Hresult.E_INVALIDARG)
        if not _NS_ID.match(ns_id):
            raise GcsError(f"LCOWNetworkAdapter.NamespaceID {ns_id!r} is invalid", Hresult.E_INVALIDARG)
        if not _MAC.match(mac):
            raise GcsError(f"LCOWNetworkAdapter.MacAddress {mac!r} is invalid", Hresult.E_INVALIDARG)
        for unsupported in ("VPCIAssigned", "PolicyBasedRouting", "EnableLowMetric"):
            if settings.get(unsupported):
                raise GcsError(f"LCOWNetworkAdapter.{unsupported} is not supported", Hresult.E_NOTIMPL)
        configs = _ip_configs(settings)
        if not configs:
            # hcsshim would run DHCP here; this guest only takes static configuration.
            raise GcsError("LCOWNetworkAdapter.IPConfigs is empty (DHCP is not supported)", Hresult.E_NOTIMPL)
        routes = _routes(settings)
        overhead = int(settings.get("EncapOverhead") or 0)
        async with self._lock:
            ns = self.namespaces.get(ns_id)
            if ns is not None and any(n.id.lower() == nic_id.lower() for n in ns.nics.values()):
                raise GcsError(
                    f"network adapter {nic_id} already exists", Hresult.VMCOMPUTE_SYSTEM_ALREADY_EXISTS
                )
            root_name = await self._find_by_mac(mac)
            created = ns is None
            if ns is None:
                ns = Namespace(ns_id, os.path.join(self.netns_dir, ns_id))
                await asyncio.to_thread(create_netns, ns.path)
            ifname = f"eth{len(ns.nics)}"
            try:
                await asyncio.to_thread(_configure, ns.path, root_name, ifname, configs, routes, overhead)
            except (OSError, ValueError) as e:
                if created:
                    with contextlib.suppress(OSError):
                        await asyncio.to_thread(remove_netns, ns.path)
                raise GcsError(f"network adapter {nic_id} ({mac}): {e}", Hresult.E_FAIL) from None
            ns.nics[nic_id.lower()] = Nic(nic_id, mac, ifname)
            ns.dns_servers = _split(settings.get("DNSServerList")) or ns.dns_servers
            ns.dns_search = _split(settings.get("DNSSuffix")) or ns.dns_search
            self.namespaces[ns_id] = ns
        LOG.info("network adapter added", extra={"nic": nic_id, "ns": ns_id, "ifname": ifname, "mac": mac})

    async def remove_adapter(self, settings: dict[str, Any]) -> None:
        """The interface goes with the device the host removes next; only the record is dropped here,
        and the namespace's mount when its last adapter is gone (runc's processes keep it alive)."""
        nic_id = str(settings.get("ID") or "").lower()
        ns_id = str(settings.get("NamespaceID") or "").lower()
        async with self._lock:
            ns = self.namespaces.get(ns_id)
            if ns is None or ns.nics.pop(nic_id, None) is None:
                LOG.warning("network adapter to remove not found", extra={"nic": nic_id, "ns": ns_id})
                return
            if not ns.nics:
                del self.namespaces[ns_id]
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(remove_netns, ns.path)
        LOG.info("network adapter removed", extra={"nic": nic_id, "ns": ns_id})

    async def close(self) -> None:
        for ns in list(self.namespaces.values()):
            with contextlib.suppress(OSError):
                await asyncio.to_thread(remove_netns, ns.path)
        self.namespaces.clear()

    # ---- device lookup -------------------------------------------------------------------------

    async def _find_by_mac(self, mac: str) -> str:
        """The hot-added NIC's name in the UVM's own namespace (the PCI hot-plug may still be running)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + NIC_WAIT_TIMEOUT
        while True:
            name = await asyncio.to_thread(
                _scan_mac, os.path.join(self.sysfs_root or "/", "sys/class/net"), mac
            )
            if name:
                return name
            if loop.time() > deadline:
                raise GcsError(
                    f"no network interface with MAC {mac} appeared within {NIC_WAIT_TIMEOUT:.0f}s",
                    Hresult.ERROR_NOT_FOUND,
                )
            await asyncio.sleep(0.1)


def _scan_mac(net_dir: str, mac: str) -> str:
    try:
        names = os.listdir(net_dir)
    except OSError:
        return ""
    for name in names:
        try:
            with open(os.path.join(net_dir, name, "address"), encoding="ascii") as f:
                if f.read().strip().lower() == mac:
                    return name
        except OSError:
            continue
    return ""


def _split(raw: Any) -> list[str]:
    return [s.strip().lower() for s in str(raw or "").split(",") if s.strip()]


def _ip_configs(settings: dict[str, Any]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for i, c in enumerate(settings.get("IPConfigs") or []):
        if not isinstance(c, dict):
            raise GcsError(f"LCOWNetworkAdapter.IPConfigs[{i}] must be an object", Hresult.E_INVALIDARG)
        ip, prefix = str(c.get("IPAddress") or ""), int(c.get("PrefixLength") or 0)
        try:
            ipaddress.ip_interface(f"{ip}/{prefix}")
        except ValueError:
            raise GcsError(
                f"LCOWNetworkAdapter.IPConfigs[{i}] {ip}/{prefix} is invalid", Hresult.E_INVALIDARG
            ) from None
        out.append((ip, prefix))
    return out


def _routes(settings: dict[str, Any]) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    for i, r in enumerate(settings.get("Routes") or []):
        if not isinstance(r, dict):
            raise GcsError(f"LCOWNetworkAdapter.Routes[{i}] must be an object", Hresult.E_INVALIDARG)
        dst = str(r.get("DestinationPrefix") or "")
        hop = str(r.get("NextHop") or "")
        if (dst, hop) in _NO_GATEWAY:
            continue
        try:
            ipaddress.ip_network(dst, strict=False)
            if hop:
                ipaddress.ip_address(hop)
        except ValueError:
            raise GcsError(
                f"LCOWNetworkAdapter.Routes[{i}] {dst} via {hop!r} is invalid", Hresult.E_INVALIDARG
            ) from None
        out.append((dst, hop, int(r.get("Metric") or 0)))
    # On-link routes first: a gateway must be reachable before a route through it is added.
    out.sort(key=lambda r: bool(r[1]))
    return out


def _configure(
    ns_path: str,
    root_name: str,
    ifname: str,
    configs: list[tuple[str, int]],
    routes: list[tuple[str, str, int]],
    overhead: int,
) -> None:
    """Blocking: move the NIC into the namespace and configure it there."""
    root = Netlink.open()
    try:
        index = root.link_index(root_name)
        root.set_link(index, up=False, what=f"bring {root_name} down")
        fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            root.set_link(index, netns_fd=fd, what=f"move {root_name} into {ns_path}")
        finally:
            os.close(fd)
    finally:
        root.close()
    nl = open_in(ns_path)
    try:
        index = nl.link_index(root_name)
        mtu = nl.link_mtu(index) - overhead if overhead else 0
        nl.set_link(index, name=ifname if ifname != root_name else "", mtu=max(mtu, 0), what=f"name {ifname}")
        nl.set_link(index, up=True, what=f"bring {ifname} up")
        nl.set_link(nl.link_index("lo"), up=True, what="bring lo up")
        for ip, prefix in configs:
            nl.add_address(index, ip, prefix)
        for dst, hop, metric in routes:
            try:
                nl.add_route(index, dst, hop, metric)
            except NetlinkError as e:
                if e.errno != errno.ENETUNREACH or not hop:
                    raise
                # The gateway is outside the NIC's subnets: make it on-link first (as hcsshim does).
                bits = 32 if ipaddress.ip_address(hop).version == 4 else 128
                nl.add_route(index, f"{hop}/{bits}")
                nl.add_route(index, dst, hop, metric)
    finally:
        nl.close()
