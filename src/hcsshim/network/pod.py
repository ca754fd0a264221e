"""A pod's network: the CNI netns read once, one tap + NIC per CNI interface, the guest's namespace.

Order (as upstream configures a sandbox's network before its container exists): the netns is read
before the UVM boots, so a missing or empty namespace fails the pod without starting QEMU; after
the boot each interface gets a tap with tc redirects and a hot-added NIC, and the guest moves the
NIC into the pod's namespace (``NamespaceID``). The namespace file stays open for the pod's life:
CNI may delete the namespace's name before the shim cleans up, and the tap lives in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from hcsshim import errdefs
from hcsshim.network.errors import NetworkError
from hcsshim.network.netns import Link, PodNetns, read_netns
from hcsshim.network.portforward import Dial, PortForwardRelay
from hcsshim.network.tap import create_tap, delete_tap
from hcsshim.schema import LCOWIPConfig, LCOWNetworkAdapter, LCOWRoute

log = logging.getLogger(__name__)

DETACH_TIMEOUT = 3.0


class NicTarget(Protocol):
    """The UVM calls the pod network needs (``hcsshim.uvm.UtilityVM`` has them)."""

    async def add_network_adapter(
        self, nic_id: str, host_settings: dict[str, Any], guest_settings: dict[str, Any]
    ) -> None: ...
    async def remove_network_adapter(
        self, nic_id: str, namespace_id: str, host_settings: dict[str, Any]
    ) -> None: ...


def pod_netns_path(spec: dict[str, Any]) -> str:
    """The network namespace path CRI put in the spec ("" for a host-network pod or none)."""
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if isinstance(ns, dict) and ns.get("type") == "network":
            return str(ns.get("path") or "")
    return ""


def namespace_id_for(netns_path: str) -> str:
    """The guest's name for the pod namespace: the CNI netns file's name (``cni-<uuid>``)."""
    base = re.sub(r"[^a-z0-9_.-]", "-", os.path.basename(netns_path.rstrip("/")).lower())
    return base.strip(".") or "pod"


def guest_network_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with the host's netns path taken out: the guest joins its own namespace, named by
    ``windows.network.networkNamespace`` as hcsshim names it for LCOW."""
    path = pod_netns_path(spec)
    if not path:
        return spec
    out = copy.deepcopy(spec)
    for ns in out["linux"]["namespaces"]:
        if isinstance(ns, dict) and ns.get("type") == "network":
            ns.pop("path", None)
    windows = out.setdefault("windows", {})
    if not isinstance(windows, dict):
        windows = out["windows"] = {}
    windows.setdefault("network", {})["networkNamespace"] = namespace_id_for(path)
    return out


@dataclass
class AttachedNic:
    nic_id: str
    link: Link
    tap: str
    host_settings: dict[str, Any]
    nic_added: bool = False


def guest_adapter(namespace_id: str, nic_id: str, link: Link) -> LCOWNetworkAdapter:
    return LCOWNetworkAdapter(
        namespace_id=namespace_id,
        id=nic_id,
        mac_address=link.mac,
        ip_configs=[LCOWIPConfig(ip_address=a.ip, prefix_length=a.prefix) for a in link.addresses],
        routes=[
            LCOWRoute(next_hop=r.gateway, destination_prefix=r.destination, metric=r.metric)
            for r in link.routes
        ],
    )


class PodNetwork:
    def __init__(self, netns_path: str, fd: int, netns: PodNetns) -> None:
        self.netns_path = netns_path
        self.namespace_id = namespace_id_for(netns_path)
        self._fd: int | None = fd
        self.netns = netns
        self.nics: list[AttachedNic] = []
        self.relay: PortForwardRelay | None = None

    @property
    def fd_path(self) -> str:
        """A path to the namespace that outlives its CNI name."""
        assert self._fd is not None
        return f"/proc/{os.getpid()}/fd/{self._fd}"

    @property
    def addresses(self) -> list[str]:
        return [a.ip for link in self.netns.links for a in link.addresses]

    @classmethod
    async def open(cls, netns_path: str) -> PodNetwork:
        """Open and read the namespace; a clear NetworkError if it is missing or has nothing in it."""
        try:
            fd = await asyncio.to_thread(os.open, netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NetworkError(
                f"pod network namespace {netns_path} does not exist", errdefs.Kind.NOT_FOUND
            ) from None
        except OSError as e:
            raise NetworkError(f"pod network namespace {netns_path}: {e.strerror}") from None
        try:
            netns = await read_netns(f"/proc/{os.getpid()}/fd/{fd}", display=netns_path)
        except BaseException:
            os.close(fd)
            raise
        return cls(netns_path, fd, netns)

    async def attach(self, target: NicTarget) -> None:
        """A tap and a NIC per interface; on failure everything attached so far is undone."""
        try:
            for i, link in enumerate(self.netns.links):
                tap = f"tap{i}_hcs"
                nic_id = str(uuid.uuid4())
                host_settings = {
                    "EndpointId": nic_id,
                    "MacAddress": link.mac,
                    "Tap": {"Name": tap, "NetNsPath": self.fd_path, "Mtu": link.mtu},
                }
                await create_tap(self.fd_path, tap, link.name, link.mtu)
                nic = AttachedNic(nic_id, link, tap, host_settings)
                self.nics.append(nic)
                guest = guest_adapter(self.namespace_id, nic_id, link).to_dict()
                await target.add_network_adapter(nic_id, host_settings, guest)
                nic.nic_added = True
                log.info(
                    "pod nic attached",
                    extra={"netns": self.netns_path, "link": link.name, "tap": tap, "mac": link.mac},
                )
        except BaseException:
            await self.detach(target)
            await self.release()
            raise

    async def start_port_forward(self, dial: Dial) -> None:
        """CRI PortForward: localhost in the pod netns relayed to localhost in the guest's pod netns."""
        relay = PortForwardRelay(self.fd_path, self.namespace_id, dial)
        await relay.start()
        self.relay = relay

    async def detach(self, target: NicTarget | None) -> None:
        """Best effort, bounded in total (a pod stop must stay quick; the VM may already be gone):
        the guest and QEMU let go of each NIC."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DETACH_TIMEOUT
        for nic in reversed(self.nics):
            if not nic.nic_added or target is None:
                continue
            nic.nic_added = False
            try:
                await asyncio.wait_for(
                    target.remove_network_adapter(nic.nic_id, self.namespace_id, nic.host_settings),
                    max(deadline - loop.time(), 0.1),
                )
            except Exception as e:
                log.info(
                    "nic removal skipped", extra={"nic": nic.nic_id, "error": str(e) or type(e).__name__}
                )

    async def release(self) -> None:
        """Delete the taps and filters (after QEMU let go of them) and close the namespace."""
        if self._fd is None:
            return
        if self.relay is not None:
            try:
                await self.relay.stop()
            except NetworkError as e:
                log.warning("port-forward relay cleanup failed", extra={"error": str(e)})
            self.relay = None
        for nic in reversed(self.nics):
            try:
                await delete_tap(self.fd_path, nic.tap, nic.link.name)
            except NetworkError as e:
                log.warning("tap cleanup failed", extra={"tap": nic.tap, "error": str(e)})
        self.nics.clear()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None
