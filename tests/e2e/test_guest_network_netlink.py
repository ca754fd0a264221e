"""The guest's network modify handling, for real on this host (no VM): a veth end stands in for the
hot-added NIC. The handler finds it by MAC, moves it into a new pod namespace, names it eth0, adds the
addresses and routes (one gateway outside the subnet: made on-link first, as hcsshim does), brings up
lo; Remove drops the namespace's mount. Bad requests name the field."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hcsshim.gcs.protocol import GcsError
from hcsshim.guest.network import NetworkNamespaces

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture
def veth() -> Iterator[tuple[str, str]]:
    tag = secrets.token_hex(3)
    a, b = f"hcsg{tag}a", f"hcsg{tag}b"
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    mac = Path(f"/sys/class/net/{a}/address").read_text().strip()
    try:
        yield a, mac
    finally:
        subprocess.run(["ip", "link", "del", b], check=False, capture_output=True)


def _ip(path: str, *args: str) -> Any:
    out = subprocess.run(
        ["nsenter", f"--net={path}", "ip", "-j", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout or "[]")


def test_adapter_moves_into_the_pod_namespace_configured(veth: tuple[str, str], tmp_path: Path) -> None:
    name, mac = veth
    nets = NetworkNamespaces(netns_dir=str(tmp_path / "netns"))
    settings = {
        "NamespaceID": "Pod-1",
        "ID": "nic-1",
        "MacAddress": mac.upper(),
        "IPConfigs": [{"IPAddress": "10.88.253.2", "PrefixLength": 24}],
        "Routes": [
            {"NextHop": "10.88.253.1", "DestinationPrefix": "0.0.0.0/0"},
            {"NextHop": "10.99.0.1", "DestinationPrefix": "192.168.99.0/24", "Metric": 7},
        ],
    }

    async def scenario() -> tuple[str, list[Any], list[Any], list[Any]]:
        await nets.add_adapter(settings)
        path = nets.path_for("pod-1")
        links = await asyncio.to_thread(_ip, path, "addr", "show")
        routes = await asyncio.to_thread(_ip, path, "-4", "route", "show")
        await nets.remove_adapter({"NamespaceID": "pod-1", "ID": "nic-1"})
        return path, links, routes, []

    path, links, routes, _ = asyncio.run(scenario())
    assert not os.path.exists(f"/sys/class/net/{name}"), "the NIC is still in the UVM's namespace"
    by_name = {link["ifname"]: link for link in links}
    assert "lo" in by_name and "UP" in by_name["lo"]["flags"]
    eth0 = by_name["eth0"]
    assert eth0["address"] == mac and "UP" in eth0["flags"]
    assert {"10.88.253.2/24"} <= {f"{a['local']}/{a['prefixlen']}" for a in eth0["addr_info"]}
    got = {(r["dst"], r.get("gateway", ""), r.get("metric", 0)) for r in routes}
    assert ("default", "10.88.253.1", 0) in got
    assert ("192.168.99.0/24", "10.99.0.1", 7) in got
    assert ("10.99.0.1", "", 0) in got  # the off-subnet gateway made on-link
    assert not os.path.exists(path), "the namespace's mount outlived its last adapter"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"IPConfigs": []}, "IPConfigs"),
        ({"VPCIAssigned": True}, "VPCIAssigned"),
        ({"MacAddress": "zz"}, "MacAddress"),
        ({"NamespaceID": "../x"}, "NamespaceID"),
        ({"Routes": [{"DestinationPrefix": "bad", "NextHop": ""}]}, "Routes"),
    ],
)
def test_bad_adapter_requests_name_the_field(change: dict[str, Any], field: str, tmp_path: Path) -> None:
    nets = NetworkNamespaces(netns_dir=str(tmp_path))
    settings = {
        "NamespaceID": "pod",
        "ID": "nic",
        "MacAddress": "0a:58:00:00:00:01",
        "IPConfigs": [{"IPAddress": "10.0.0.2", "PrefixLength": 24}],
        **change,
    }
    with pytest.raises(GcsError, match=field):
        asyncio.run(nets.add_adapter(settings))
    assert os.listdir(tmp_path) == []


def test_unknown_namespace_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GcsError, match="network namespace nope does not exist in the guest"):
        NetworkNamespaces(netns_dir=str(tmp_path)).path_for("nope")
