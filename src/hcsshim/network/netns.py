"""What CNI set up in a pod's network namespace: links, addresses, routes, MTU (read with ``ip -j``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from hcsshim.network.cmd import ip_json
from hcsshim.network.errors import NetworkError


@dataclass(frozen=True, slots=True)
class Address:
    ip: str
    prefix: int
    family: int  # 4 or 6


@dataclass(frozen=True, slots=True)
class Route:
    destination: str  # CIDR; "0.0.0.0/0" / "::/0" for the default
    gateway: str  # "" for an on-link route
    metric: int
    device: str


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    index: int
    mac: str
    mtu: int
    kind: str
    addresses: tuple[Address, ...]
    routes: tuple[Route, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class PodNetns:
    path: str
    links: tuple[Link, ...]


def _addresses(entry: dict[str, object]) -> tuple[Address, ...]:
    out: list[Address] = []
    for a in entry.get("addr_info") or []:  # type: ignore[attr-defined]
        if not isinstance(a, dict) or a.get("scope") not in ("global", "universe", None):
            continue  # link-local addresses are the guest kernel's own business
        fam = {"inet": 4, "inet6": 6}.get(str(a.get("family")))
        local = str(a.get("local") or "")
        if fam and local:
            out.append(Address(local, int(a.get("prefixlen") or 0), fam))
    return tuple(out)


def _route(r: dict[str, object], family: int) -> Route | None:
    if r.get("protocol") == "kernel" or r.get("type") not in (None, "unicast"):
        return None  # the guest kernel recreates connected-subnet routes itself
    dst = str(r.get("dst") or "")
    if dst == "default":
        dst = "0.0.0.0/0" if family == 4 else "::/0"
    elif "/" not in dst:
        dst = f"{dst}/{32 if family == 4 else 128}"
    try:
        net = ipaddress.ip_network(dst, strict=False)
    except ValueError:
        return None
    if net.is_link_local or net.is_multicast:
        return None
    metric = r.get("metric")
    return Route(
        str(net),
        str(r.get("gateway") or ""),
        int(metric) if isinstance(metric, int) else 0,
        str(r.get("dev") or ""),
    )


async def read_netns(path: str, display: str = "") -> PodNetns:
    """The namespace at ``path`` (opened by nsenter); ``display`` names it in errors (the CNI path)."""
    name = display or path
    links_raw = await ip_json(path, "-d", "link", "show")
    addrs_raw = {str(a.get("ifname")): a for a in await ip_json(path, "addr", "show")}
    routes: list[Route] = []
    for fam, flag in ((4, "-4"), (6, "-6")):
        for r in await ip_json(path, flag, "route", "show", "table", "main"):
            route = _route(r, fam)
            if route is not None:
                routes.append(route)
    links: list[Link] = []
    for entry in links_raw:
        ifname = str(entry.get("ifname") or "")
        if entry.get("link_type") == "loopback" or not ifname:
            continue
        addresses = _addresses(addrs_raw.get(ifname, {}))
        if not addresses:
            continue  # tunnel base devices (gre0, sit0, ...) and the like carry no pod traffic
        info = entry.get("linkinfo")
        kind = str(info.get("info_kind") or "") if isinstance(info, dict) else ""
        mac = str(entry.get("address") or "")
        if entry.get("link_type") != "ether" or len(mac.split(":")) != 6:
            raise NetworkError(f"pod network namespace {name}: interface {ifname} is not an Ethernet device")
        links.append(
            Link(
                name=ifname,
                index=int(entry.get("ifindex") or 0),
                mac=mac,
                mtu=int(entry.get("mtu") or 1500),
                kind=kind,
                addresses=addresses,
                routes=tuple(r for r in routes if r.device == ifname),
            )
        )
    if not links:
        raise NetworkError(
            f"pod network namespace {name} has no interface with an address: the CNI plugin set nothing up"
        )
    # eth0 first: it becomes the guest's first NIC, as hcsshim orders endpoints.
    links.sort(key=lambda link: (link.name != "eth0", link.index))
    return PodNetns(path, tuple(links))
