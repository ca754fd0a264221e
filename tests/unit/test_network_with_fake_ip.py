"""hcsshim.network with a fake ``ip -j``: what is read from a CNI netns, the guest request built from
it, and the spec the guest gets (never the host's netns path)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hcsshim.network import NetworkError, guest_network_spec, namespace_id_for, netns, pod_netns_path
from hcsshim.network.pod import guest_adapter

LINKS: list[dict[str, Any]] = [
    {"ifindex": 1, "ifname": "lo", "link_type": "loopback", "address": "00:00:00:00:00:00", "mtu": 65536},
    {"ifindex": 2, "ifname": "sit0", "link_type": "sit", "mtu": 1480},
    {
        "ifindex": 3,
        "ifname": "eth0",
        "link_type": "ether",
        "address": "0a:58:0a:58:00:05",
        "mtu": 1450,
        "linkinfo": {"info_kind": "veth"},
    },
]
ADDRS: list[dict[str, Any]] = [
    {
        "ifname": "lo",
        "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"}],
    },
    {
        "ifname": "eth0",
        "addr_info": [
            {"family": "inet", "local": "10.88.0.5", "prefixlen": 16, "scope": "global"},
            {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"},
        ],
    },
]
ROUTES4: list[dict[str, Any]] = [
    {"dst": "default", "gateway": "10.88.0.1", "dev": "eth0"},
    {"dst": "10.88.0.0/16", "dev": "eth0", "protocol": "kernel", "scope": "link", "prefsrc": "10.88.0.5"},
    {"dst": "192.168.7.0/24", "gateway": "10.88.0.9", "dev": "eth0", "metric": 20},
]


def _fake(links: list[dict[str, Any]], addrs: list[dict[str, Any]], routes: list[dict[str, Any]]) -> Any:
    async def ip_json(path: str, *args: str) -> list[dict[str, Any]]:
        if "link" in args:
            return links
        if "addr" in args:
            return addrs
        return routes if "-4" in args else []

    return ip_json


def test_read_netns_with_fake_ip_keeps_addressed_ethernet_links(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "ip_json", _fake(LINKS, ADDRS, ROUTES4))
    ns = asyncio.run(netns.read_netns("/proc/1/fd/7", display="/var/run/netns/cni-1"))
    assert [link.name for link in ns.links] == ["eth0"]
    eth0 = ns.links[0]
    assert (eth0.mac, eth0.mtu, eth0.kind) == ("0a:58:0a:58:00:05", 1450, "veth")
    assert [(a.ip, a.prefix, a.family) for a in eth0.addresses] == [("10.88.0.5", 16, 4)]
    # The kernel's connected route is left to the guest kernel.
    assert [(r.destination, r.gateway, r.metric) for r in eth0.routes] == [
        ("0.0.0.0/0", "10.88.0.1", 0),
        ("192.168.7.0/24", "10.88.0.9", 20),
    ]


def test_read_netns_with_fake_ip_refuses_an_empty_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "ip_json", _fake(LINKS[:1], ADDRS[:1], []))
    with pytest.raises(NetworkError, match=r"/var/run/netns/cni-1 has no interface with an address"):
        asyncio.run(netns.read_netns("/proc/1/fd/7", display="/var/run/netns/cni-1"))


def test_guest_adapter_uses_hcsshim_field_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "ip_json", _fake(LINKS, ADDRS, ROUTES4))
    link = asyncio.run(netns.read_netns("/x")).links[0]
    doc = guest_adapter("cni-1", "nic-1", link).to_dict()
    assert doc == {
        "NamespaceID": "cni-1",
        "ID": "nic-1",
        "MacAddress": "0a:58:0a:58:00:05",
        "IPConfigs": [{"IPAddress": "10.88.0.5", "PrefixLength": 16}],
        "Routes": [
            {"NextHop": "10.88.0.1", "DestinationPrefix": "0.0.0.0/0"},
            {"NextHop": "10.88.0.9", "DestinationPrefix": "192.168.7.0/24", "Metric": 20},
        ],
    }


def test_guest_spec_names_the_guest_namespace_not_the_host_path() -> None:
    spec: dict[str, Any] = {
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-AB12"}]},
        "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
    }
    assert pod_netns_path(spec) == "/var/run/netns/cni-AB12"
    out = guest_network_spec(spec)
    assert {"type": "network"} in out["linux"]["namespaces"]
    assert "/var/run/netns" not in str(out)
    assert (
        out["windows"]["network"]["networkNamespace"]
        == namespace_id_for("/var/run/netns/cni-AB12")
        == "cni-ab12"
    )
    assert spec["linux"]["namespaces"][1]["path"] == "/var/run/netns/cni-AB12"  # input untouched
    host_network = {"linux": {"namespaces": [{"type": "pid"}]}}
    assert guest_network_spec(host_network) is host_network


def test_guest_spec_adjust_joins_the_guest_pod_namespace(tmp_path: Path) -> None:
    from hcsshim.guest import spec as gspec

    oci: dict[str, Any] = {
        "process": {"args": ["sh"]},
        "root": {"path": "/r"},
        "linux": {"namespaces": [{"type": "network"}, {"type": "pid"}]},
        "windows": {"network": {"networkNamespace": "CNI-AB"}},
    }
    assert gspec.network_namespace_id(oci) == "cni-ab"
    out = gspec.adjust(oci, "c1", "sandbox", str(tmp_path), netns_path="/run/hcsshim/netns/cni-ab")
    nets = [n for n in out["linux"]["namespaces"] if n["type"] == "network"]
    assert nets == [{"type": "network", "path": "/run/hcsshim/netns/cni-ab"}]
    # A host path that slipped through is never handed to runc: a fresh namespace instead.
    oci["linux"]["namespaces"] = [{"type": "network", "path": "/var/run/netns/cni-ab"}]
    out = gspec.adjust(oci, "c1", "sandbox", str(tmp_path))
    assert [n for n in out["linux"]["namespaces"] if n["type"] == "network"] == [{"type": "network"}]
