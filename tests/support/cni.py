"""A CNI bridge network for the test containerd: bridge + host-local + loopback + portmap.

Everything stays on this machine: a bridge the test names (``hcsbr<hex>``) with a /24 out of
10.88.0.0/16, no masquerading, host-local state under the containerd's own directory. ``install``
links Debian's plugins (/usr/lib/cni) into the containerd's ``cni/bin``, writes the conflist into
its ``cni/net.d`` (containerd's CRI watches that directory) and returns the network; ``remove``
deletes the config, the bridge and the IPAM state.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PLUGIN_DIR = "/usr/lib/cni"
PLUGINS = ("bridge", "host-local", "loopback", "portmap")


@dataclass(frozen=True)
class CniNetwork:
    name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    conf_path: Path
    ipam_dir: Path

    @property
    def gateway(self) -> str:
        return str(next(self.subnet.hosts()))

    def contains(self, ip: str) -> bool:
        return ipaddress.ip_address(ip) in self.subnet


def install(base: Path) -> CniNetwork:
    """``base`` is the containerd's directory (``Containerd.base``)."""
    missing = [p for p in PLUGINS if not os.path.exists(os.path.join(PLUGIN_DIR, p))]
    if missing:
        raise RuntimeError(
            f"CNI plugins {missing} are not in {PLUGIN_DIR} (apt-get install containernetworking-plugins)"
        )
    bin_dir, conf_dir = base / "cni" / "bin", base / "cni" / "net.d"
    bin_dir.mkdir(parents=True, exist_ok=True)
    conf_dir.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(PLUGIN_DIR):
        link = bin_dir / name
        if not link.exists():
            link.symlink_to(os.path.join(PLUGIN_DIR, name))
    tag = secrets.token_hex(3)
    subnet = ipaddress.ip_network(f"10.88.{100 + secrets.randbelow(150)}.0/24")
    assert isinstance(subnet, ipaddress.IPv4Network)
    ipam_dir = base / "cni" / "ipam"
    net = CniNetwork(
        f"hcsshim-test-{tag}", f"hcsbr{tag}", subnet, conf_dir / "10-hcsshim-test.conflist", ipam_dir
    )
    conf = {
        "cniVersion": "0.4.0",
        "name": net.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(subnet), "gateway": net.gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    tmp = net.conf_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(conf, indent=2))
    tmp.rename(net.conf_path)
    time.sleep(1.0)  # containerd's CRI reloads the config on the directory event
    return net


def remove(net: CniNetwork) -> None:
    net.conf_path.unlink(missing_ok=True)
    subprocess.run(["ip", "link", "del", net.bridge], capture_output=True, check=False)
    shutil.rmtree(net.ipam_dir, ignore_errors=True)


def taps_in(netns_path: str) -> list[str]:
    """Tap devices in a namespace (the shim's ``tapN_hcs``), [] if the namespace is gone."""
    if not os.path.exists(netns_path):
        return []
    out = subprocess.run(
        ["nsenter", f"--net={netns_path}", "ip", "-j", "link", "show", "type", "tun"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return [str(d.get("ifname")) for d in json.loads(out.stdout or "[]")]
    except ValueError:
        return []


def host_taps() -> list[str]:
    """Every ``*_hcs`` tap in every named namespace under /var/run/netns (leak checks)."""
    found: list[str] = []
    try:
        names = os.listdir("/var/run/netns")
    except OSError:
        return found
    for name in names:
        found += [f"{name}/{t}" for t in taps_in(f"/var/run/netns/{name}") if t.endswith("_hcs")]
    return found


def tc_filters(netns_path: str, dev: str) -> str:
    """``tc filter show dev <dev> ingress`` in a namespace ("" if there is none)."""
    out = subprocess.run(
        ["nsenter", f"--net={netns_path}", "tc", "filter", "show", "dev", dev, "ingress"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout
