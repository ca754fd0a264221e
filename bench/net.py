"""Pod-to-pod networking: TCP throughput and round-trip time between two pods on one CNI bridge,
through the UVMs' NICs (containerd-shim-runhcs-v1: tap + tc redirect + virtio-net, TCG here) against
two runc pods on the same bridge (the reference), measured in the same run, with the ratios; and the
same download through CRI PortForward (for the UVM pod: the netns relay and the channel mux).

Throughput: the client pod fetches a file from busybox httpd in the server pod with busybox nc; the
duration is the difference of the CRI log timestamps of the lines around the transfer. RTT: busybox
ping's average over PINGS echoes. All traffic stays on the bridge network this script creates.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import _qemu

from tests.support import cni
from tests.support.containerd import Containerd, available, running_containerd
from tests.support.cri import CriClient
from tests.support.oci_image import DEFAULT_NAME, build_image, build_pause_image
from tests.support.portforward import forward_once
from tests.support.uvm import boot_files

SIZE_MB = {
    "runc": int(os.environ.get("BENCH_NET_RUNC_MB", "256")),
    "runhcs-v1": int(os.environ.get("BENCH_NET_MB", "16")),
}
PINGS = int(os.environ.get("BENCH_NET_PINGS", "20"))
PORT = 8080
GET = "printf 'GET /big HTTP/1.0\\r\\n\\r\\n'"
HEAD = "printf 'HEAD / HTTP/1.0\\r\\n\\r\\n'"
NS = "k8s.io"


def _pod(cri: CriClient, handler: str, name: str, logs: str) -> str:
    config = cri.sandbox_config(name, logs, host_network=False)
    return cri.run_pod_sandbox(config, handler)


def _ip(cri: CriClient, pod_id: str) -> str:
    req = cri.pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    return str(cri.call("PodSandboxStatus", req, "PodSandboxStatusResponse").status.network.ip)


def _container(cri: CriClient, pod_id: str, name: str, logs: str, cmd: list[str]) -> str:
    config = cri.sandbox_config(name.split("-")[0], logs, host_network=False)
    cid = cri.create_container(pod_id, config, name, DEFAULT_NAME, cmd, f"{name}.log")
    cri.start_container(cid)
    return cid


def _log_lines(path: str) -> list[tuple[datetime.datetime, str]]:
    out = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                stamp, _, rest = line.partition(" ")
                text = rest.split(" ", 2)[-1].rstrip("\n")
                # Go's RFC3339Nano: trim to microseconds for fromisoformat.
                m = re.match(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)", stamp)
                if not m:
                    continue
                frac = (m.group(2) or ".0")[:7]
                tz = m.group(3).replace("Z", "+00:00")
                out.append((datetime.datetime.fromisoformat(m.group(1) + frac + tz), text))
    except OSError:
        pass
    return out


def _wait_for(path: str, marker: str, timeout: float) -> list[tuple[datetime.datetime, str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = _log_lines(path)
        if any(marker in t for _, t in lines):
            return lines
        time.sleep(0.2)
    raise RuntimeError(f"{marker!r} never appeared in {path}: {_log_lines(path)[-5:]}")


def _port_forward_mbps(cri: CriClient, pod_id: str, expect: int) -> float:
    """The same download through CRI PortForward (containerd's streaming server, then for a UVM pod
    the relay and the channel mux): Mbit/s as the WebSocket client receives it."""
    req = cri.pb.PortForwardRequest(pod_sandbox_id=pod_id, port=[PORT])
    url = cri.call("PortForward", req, "PortForwardResponse").url
    start = time.monotonic()
    data, errors = forward_once(url, b"GET /big HTTP/1.0\r\n\r\n", timeout=600, expect=expect)
    seconds = time.monotonic() - start
    if len(data) < expect:
        raise RuntimeError(f"port-forward got {len(data)} of {expect} bytes: {errors!r}")
    return len(data) * 8 / seconds / 1e6


def measure(cri: CriClient, handler: str, logs: str) -> dict[str, Any]:
    size = SIZE_MB[handler]
    tag = handler.replace("-", "")
    server = _pod(cri, handler, f"srv{tag}", logs)
    client = _pod(cri, handler, f"cli{tag}", logs)
    cids: list[tuple[str, str]] = []
    try:
        cids.append(
            (
                server,
                _container(
                    cri,
                    server,
                    f"srv{tag}-httpd",
                    logs,
                    [
                        "sh",
                        "-c",
                        "mkdir -p /www && "
                        f"dd if=/dev/zero of=/www/big bs=1048576 count={size} 2>/dev/null && "
                        f"echo ready && exec busybox httpd -f -p {PORT} -h /www",
                    ],
                ),
            )
        )
        _wait_for(os.path.join(logs, f"srv{tag}-httpd.log"), "ready", 300)
        ip = _ip(cri, server)
        script = (
            f"until {HEAD} | busybox nc -w 5 {ip} {PORT} >/dev/null; do sleep 0.5; done; "
            f"echo start; n=$({GET} | busybox nc -w 30 {ip} {PORT} | wc -c); echo end $n; "
            f"busybox ping -c {PINGS} -i 0.2 {ip} | tail -1; echo done; sleep 600"
        )
        cids.append((client, _container(cri, client, f"cli{tag}-bench", logs, ["sh", "-c", script])))
        lines = _wait_for(os.path.join(logs, f"cli{tag}-bench.log"), "done", 900)
        stamps = {t.split()[0]: (ts, t) for ts, t in lines if t.split()}
        seconds = (stamps["end"][0] - stamps["start"][0]).total_seconds()
        got = int(stamps["end"][1].split()[1])
        rtt_line = next((t for _, t in lines if "round-trip" in t), "")
        m = re.search(r"= [\d.]+/([\d.]+)/", rtt_line)
        if got < size * 1048576 or not m:
            raise RuntimeError(f"{handler}: transfer of {got} bytes / ping {rtt_line!r}")
        return {
            "pf": _port_forward_mbps(cri, server, got),
            "mbps": got * 8 / seconds / 1e6,
            "rtt_ms": float(m.group(1)),
            "seconds": seconds,
            "bytes": got,
        }
    finally:
        for _pod_id, cid in cids:
            cri.stop_container(cid, timeout=1)
            cri.remove_container(cid)
        for pod in (client, server):
            cri.stop_pod_sandbox(pod)
            cri.remove_pod_sandbox(pod)


def main() -> int:
    reason = available()
    if reason is not None:
        print(f"net bench needs a private containerd: {reason}")
        return 1
    if boot_files() is None:
        print("no UVM image: run `hcsshim uvm build`")
        return 1
    print(_qemu.describe(_qemu.chosen()))
    with running_containerd() as c, tempfile.TemporaryDirectory() as d:
        net = cni.install(c.base)
        try:
            return _run(c, d)
        finally:
            cni.remove(net)


def _run(c: Containerd, d: str) -> int:
    for tar in (build_image(os.path.join(d, "bb.tar")), build_pause_image(os.path.join(d, "pause.tar"))):
        c.ctr("images", "import", tar, namespace=NS, timeout=120)
    cri = CriClient(c.grpc_address)
    results: dict[str, dict[str, Any]] = {}
    try:
        for handler in ("runc", "runhcs-v1"):
            logs = os.path.join(d, handler)
            os.makedirs(logs)
            results[handler] = measure(cri, handler, logs)
    finally:
        cri.close()
    ref, uvm = results["runc"], results["runhcs-v1"]
    print(f"{'pod-to-pod':<22}{'runc pods':>14}{'UVM pods':>14}{'UVM/runc':>10}")
    rows = (("TCP throughput Mbit/s", "mbps"), ("RTT ms (ping avg)", "rtt_ms"), ("PortForward Mbit/s", "pf"))
    for label, key in rows:
        print(f"{label:<22}{ref[key]:>14.3f}{uvm[key]:>14.3f}{uvm[key] / ref[key]:>10.3f}")
    for name, r in (("runc", ref), ("UVM", uvm)):
        print(f"({name}: {r['bytes']} bytes in {r['seconds']:.3f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
