"""Pods with a real network through CRI and containerd-shim-runhcs-v1: CNI's bridge network reaches
the containers in the pod's UVM (tap + tc redirect + hot-added virtio-net NIC).

All traffic stays on this machine: the bridge network the test configures (tests/support/cni.py).
"""

from __future__ import annotations

import glob
import http.server
import os
import socket
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import cni
from tests.support.containerd import Containerd
from tests.support.cri import CriClient
from tests.support.oci_image import DEFAULT_NAME, build_image, build_pause_image
from tests.support.shim_checks import qemu_pids, wait_until
from tests.support.uvm import boot_files

pytestmark = [pytest.mark.e2e, pytest.mark.root]

CRI_NAMESPACE = "k8s.io"
HANDLER = "runhcs-v1"
HTTP_PORT = 8080
DNS_SERVER = "10.88.255.53"  # written into resolv.conf only; never queried
DNS_SEARCH = "pods.hcsshim.test"


@pytest.fixture(scope="module")
def net(containerd: Containerd) -> Iterator[cni.CniNetwork]:
    network = cni.install(containerd.base)
    yield network
    cni.remove(network)


@pytest.fixture(scope="module")
def cri(containerd: Containerd, net: cni.CniNetwork) -> Iterator[CriClient]:
    if boot_files() is None:
        pytest.fail("no UVM image (run `hcsshim uvm build`)")
    if not containerd.cri_ok:
        pytest.fail("containerd's CRI plugin did not initialise")
    with tempfile.TemporaryDirectory() as d:
        for tar in (build_image(os.path.join(d, "bb.tar")), build_pause_image(os.path.join(d, "pause.tar"))):
            containerd.ctr("images", "import", tar, namespace=CRI_NAMESPACE, timeout=120)
    client = CriClient(containerd.grpc_address)
    yield client
    client.close()


def log_text(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return "\n".join(line.split(" ", 3)[-1] for line in f.read().splitlines())
    except OSError:
        return ""


def sandbox_config(cri: CriClient, name: str, logs: str, host_port: int = 0) -> Any:
    pb = cri.pb
    config = cri.sandbox_config(name, logs, host_network=False)
    config.dns_config.CopyFrom(pb.DNSConfig(servers=[DNS_SERVER], searches=[DNS_SEARCH], options=["ndots:2"]))
    if host_port:
        config.port_mappings.append(pb.PortMapping(container_port=HTTP_PORT, host_port=host_port))
    return config


@dataclass
class RunningPod:
    id: str
    config: Any
    logs: str
    ip: str
    netns: str
    containers: list[str]


def pod_ip(cri: CriClient, pod_id: str) -> str:
    req = cri.pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    return str(cri.call("PodSandboxStatus", req, "PodSandboxStatusResponse").status.network.ip)


def pod_netns(pod_id: str) -> str:
    """The CNI netns of a pod's sandbox, from the shim's QEMU-less view: /proc of the shim is not
    needed, CRI names it in the sandbox bundle's config.json."""
    import json

    for path in glob.glob(
        f"/run/hcsshim-test-*/state/io.containerd.runtime.v2.task/{CRI_NAMESPACE}/{pod_id}/config.json"
    ):
        with open(path) as f:
            spec = json.load(f)
        for ns in spec.get("linux", {}).get("namespaces", []):
            if ns.get("type") == "network":
                return str(ns.get("path") or "")
    return ""


def start_pod(
    cri: CriClient, name: str, logs: str, commands: dict[str, list[str]], host_port: int = 0
) -> RunningPod:
    config = sandbox_config(cri, name, logs, host_port)
    pod_id = cri.run_pod_sandbox(config, HANDLER)
    pod = RunningPod(pod_id, config, logs, pod_ip(cri, pod_id), pod_netns(pod_id), [])
    try:
        for cname, cmd in commands.items():
            cid = cri.create_container(pod_id, config, cname, DEFAULT_NAME, cmd, f"{name}-{cname}.log")
            pod.containers.append(cid)
            cri.start_container(cid)
    except BaseException:
        stop_pod(cri, pod)  # CNI's DEL (bridge veth, portmap rules) runs only through StopPodSandbox
        raise
    return pod


def stop_pod(cri: CriClient, pod: RunningPod) -> None:
    for cid in pod.containers:
        cri.stop_container(cid, timeout=2)
        cri.remove_container(cid)
    cri.stop_pod_sandbox(pod.id)
    cri.remove_pod_sandbox(pod.id)


HTTPD = [
    "sh",
    "-c",
    "mkdir -p /www && echo page-from-$(hostname) > /www/index.html && "
    f"exec busybox httpd -f -p {HTTP_PORT} -h /www",
]


def fetch(ip: str, port: int) -> str:
    """A shell command fetching http://ip:port/ (busybox nc: the static busybox's wget crashes)."""
    return f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 20 {ip} {port}"


class _Gateway(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"gateway-says-hi\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def gateway_server(net: cni.CniNetwork, pod_a: RunningPod) -> Iterator[int]:
    """An HTTP server on the bridge's gateway address (exists once a pod is up)."""
    server = http.server.HTTPServer((net.gateway, 0), _Gateway)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


HOST_PORT = 30000 + int.from_bytes(os.urandom(2), "little") % 20000


@pytest.fixture(scope="module")
def pod_a(cri: CriClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPod]:
    logs = str(tmp_path_factory.mktemp("pod-a"))
    pod = start_pod(cri, "net-pod-a", logs, {"httpd": HTTPD}, host_port=HOST_PORT)
    # Held open so the namespace outlives CNI's teardown: what the shim leaves in it stays visible.
    held = os.open(pod.netns, os.O_RDONLY)
    try:
        assert cni.taps_in(pod.netns) == ["tap0_hcs"]
        assert "mirred" in cni.tc_filters(pod.netns, "eth0")
        yield pod
    finally:
        stop_pod(cri, pod)
        try:
            assert wait_until(lambda: not qemu_pids(pod.id), 30), "the pod's QEMU outlived the pod"
            assert cni.taps_in(f"/proc/{os.getpid()}/fd/{held}") == [], "taps left in the pod's netns"
        finally:
            os.close(held)


def http_get(ip: str, port: int, timeout: float = 30.0) -> str:
    deadline_ok = wait_until(lambda: _can_connect(ip, port), timeout)
    assert deadline_ok, f"nothing listens on {ip}:{port}"
    with urllib.request.urlopen(f"http://{ip}:{port}/", timeout=10) as r:
        return str(r.read().decode())


def _can_connect(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=2):
            return True
    except OSError:
        return False


def test_pod_gets_an_address_from_the_bridge(pod_a: RunningPod, net: cni.CniNetwork) -> None:
    assert pod_a.ip and net.contains(pod_a.ip), (pod_a.ip, net.subnet)
    assert len(qemu_pids(pod_a.id)) == 1


def test_httpd_in_the_pod_is_reachable_from_the_host(pod_a: RunningPod) -> None:
    assert http_get(pod_a.ip, HTTP_PORT).strip() == "page-from-net-pod-a"


def test_pod_reaches_the_bridge_gateway(
    cri: CriClient, pod_a: RunningPod, gateway_server: int, net: cni.CniNetwork
) -> None:
    name = "gw"
    cmd = [
        "sh",
        "-c",
        f"{fetch(net.gateway, gateway_server)} && echo fetched-ok; sleep 600",
    ]
    cid = cri.create_container(pod_a.id, pod_a.config, name, DEFAULT_NAME, cmd, f"net-pod-a-{name}.log")
    pod_a.containers.append(cid)
    cri.start_container(cid)
    path = os.path.join(pod_a.logs, f"net-pod-a-{name}.log")
    assert wait_until(lambda: "fetched-ok" in log_text(path), 60), log_text(path)
    assert "gateway-says-hi" in log_text(path)


def _sandbox_file(pod_id: str, name: str) -> str:
    found = glob.glob(f"/run/hcsshim-test-*/root/io.containerd.grpc.v1.cri/sandboxes/{pod_id}/{name}")
    assert found, f"CRI wrote no {name} for {pod_id}"
    return Path(found[0]).read_text()


def test_container_sees_cri_resolv_conf_hosts_and_hostname(cri: CriClient, pod_a: RunningPod) -> None:
    name = "files"
    cmd = [
        "sh",
        "-c",
        'for f in resolv.conf hosts hostname; do echo "== $f"; cat /etc/$f; done; echo files-done; sleep 600',
    ]
    cid = cri.create_container(pod_a.id, pod_a.config, name, DEFAULT_NAME, cmd, f"net-pod-a-{name}.log")
    pod_a.containers.append(cid)
    cri.start_container(cid)
    path = os.path.join(pod_a.logs, f"net-pod-a-{name}.log")
    assert wait_until(lambda: "files-done" in log_text(path), 60), log_text(path)
    text = log_text(path)
    seen: dict[str, str] = {}
    for block in text.split("== ")[1:]:
        fname, _, body = block.partition("\n")
        seen[fname] = body.replace("files-done", "").strip()
    for fname in ("resolv.conf", "hosts", "hostname"):
        assert seen[fname] == _sandbox_file(pod_a.id, fname).strip(), fname
    assert f"nameserver {DNS_SERVER}" in seen["resolv.conf"]
    assert DNS_SEARCH in seen["resolv.conf"]
    assert seen["hostname"] == "net-pod-a"


def test_two_pods_reach_each_other_by_ip(cri: CriClient, pod_a: RunningPod, tmp_path: Path) -> None:
    cmd = [
        "sh",
        "-c",
        f"{fetch(pod_a.ip, HTTP_PORT)} && echo fetched-ok; sleep 600",
    ]
    pod_b = start_pod(cri, "net-pod-b", str(tmp_path), {"client": cmd})
    try:
        assert pod_b.ip != pod_a.ip
        assert len(qemu_pids(pod_b.id)) == 1
        path = os.path.join(str(tmp_path), "net-pod-b-client.log")
        assert wait_until(lambda: "fetched-ok" in log_text(path), 90), log_text(path)
        assert "page-from-net-pod-a" in log_text(path)
        # And back: pod B's address reaches pod A's UVM too (the host reaches B's VM over the bridge).
    finally:
        stop_pod(cri, pod_b)
    assert wait_until(lambda: not qemu_pids(pod_b.id), 30)
    assert not cni.taps_in(pod_b.netns)


def test_host_port_mapping_reaches_the_container(pod_a: RunningPod, net: cni.CniNetwork) -> None:
    # portmap DNATs locally generated traffic to a local address: the bridge's gateway is one.
    assert http_get(net.gateway, HOST_PORT).strip() == "page-from-net-pod-a"


def test_cri_port_forward_returns_the_httpd_page(cri: CriClient, pod_a: RunningPod) -> None:
    from tests.support.portforward import forward_once

    assert http_get(pod_a.ip, HTTP_PORT)  # the server is up
    req = cri.pb.PortForwardRequest(pod_sandbox_id=pod_a.id, port=[HTTP_PORT])
    url = cri.call("PortForward", req, "PortForwardResponse").url
    data, errors = forward_once(url, b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
    assert errors == b"", errors.decode(errors="replace")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), data[:200]
    assert body.strip() == b"page-from-net-pod-a"


def test_port_forward_to_a_port_nothing_listens_on_fails(cri: CriClient, pod_a: RunningPod) -> None:
    from tests.support.portforward import forward_once

    req = cri.pb.PortForwardRequest(pod_sandbox_id=pod_a.id, port=[HTTP_PORT + 1])
    url = cri.call("PortForward", req, "PortForwardResponse").url
    data, _ = forward_once(url, b"GET / HTTP/1.0\r\n\r\n", timeout=30)
    # The guest finds nothing on localhost:PORT in the pod: the connection ends without a byte.
    assert data == b""
