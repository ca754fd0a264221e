"""containerd-shim-lcow-v2 end to end: two pods in one UVM (real QEMU, guest agent, runc), driven the
way containerd 2.1's shim sandbox controller drives a shim.

containerd 2.1's CRI with ``sandboxer = "shim"`` cannot run these pods (host-network pods panic in
2.1, fixed in 2.3; a CNI pod still needs a pause container's pid for its containers' namespaces), so
the test does what containerd's sandbox controller and task manager do, against a private containerd
2.1 that receives the shim's events: ``containerd-shim-lcow-v2 -namespace .. -address .. -id <sandbox>
start`` in the sandbox bundle (runtime options Any on stdin), dial the address it prints (version 3),
CreateSandbox (options = CRI's PodSandboxConfig, as containerd's CRI passes them) and StartSandbox,
then Task v3 Create/Start with CRI's container annotations, StopSandbox / ShutdownSandbox and
``delete``, each sandbox on its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message

from hcsshim.api.containerd.sandbox.v1 import sandbox_pb2 as sb
from hcsshim.api.containerd.task.v2 import shim_pb2 as task
from hcsshim.api.runhcs.options import runhcs_pb2
from hcsshim.api.runhcs.stats import stats_pb2
from hcsshim.api.shimdiag import shimdiag_pb2 as diag
from hcsshim.hcs.qemu.system import state_dir_for
from hcsshim.shim.manager_v2 import UVM_GROUP
from hcsshim.ttrpc import Client, Code, TtrpcError
from tests.support.containerd import (
    VENV_BIN,
    Containerd,
    busybox_rootfs,
    running_containerd,
    start_containerd,
    stop_containerd,
)
from tests.support.cri import api as cri_api
from tests.support.shim_checks import mounts_under, qemu_pids, wait_until
from tests.support.uvm import boot_files

pytestmark = [pytest.mark.e2e, pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

M = TypeVar("M", bound=Message)
NAMESPACE = "lcowv2"
SHIM = VENV_BIN / "containerd-shim-lcow-v2"
SANDBOX = "containerd.runtime.sandbox.v1.Sandbox"
TASK_V3 = "containerd.task.v3.Task"
DIAG = "containerd.runhcs.v1.diag.ShimDiag"
RPC_TIMEOUT = 300.0
META = {"containerd-namespace-ttrpc": NAMESPACE}
PROBE = (
    'echo "host=$(hostname)"; echo "net=$(readlink /proc/self/ns/net)"; echo "cg=$(cat /proc/self/cgroup)"; '
    'for p in /proc/[0-9]*; do echo "proc=$(tr "\\0" " " < $p/cmdline)"; done; echo END; exec sleep {marker}'
)


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    if boot_files() is None:
        pytest.fail("no UVM image (run `hcsshim uvm build`)")
    if not SHIM.exists():
        pytest.fail(f"{SHIM} missing: the install is stale (run scripts/setup.sh)")
    with running_containerd(version="2.1") as c:
        yield c


class LogDrain:
    """containerd's side of a bundle's ``log`` FIFO: read it for the shim (which logs there) into a file."""

    def __init__(self, bundle: Path) -> None:
        fifo = bundle / "log"
        os.mkfifo(fifo)
        self.path = bundle.parent / f"{bundle.name}.shim.log"
        self.fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with open(self.path, "ab") as out:
            while True:
                try:
                    data = os.read(self.fd, 65536)
                except BlockingIOError:
                    time.sleep(0.05)
                    continue
                except OSError:
                    return
                if data:
                    out.write(data)
                    out.flush()
                else:
                    time.sleep(0.05)

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def shim(c: Containerd, action: str, sandbox_id: str, bundle: Path, stdin: bytes = b"") -> bytes:
    argv = [str(SHIM), "-namespace", NAMESPACE, "-address", c.grpc_address]
    argv += ["-publish-binary", c.containerd_binary, "-id", sandbox_id]
    if action == "delete":
        argv += ["-bundle", str(bundle)]
    env = dict(c.env, TTRPC_ADDRESS=c.ttrpc_address)
    proc = subprocess.run(
        [*argv, action], input=stdin, cwd=bundle, env=env, capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"{action} {sandbox_id}: {proc.stderr.decode(errors='replace')}"
    return proc.stdout


def runtime_options() -> bytes:
    options = runhcs_pb2.Options()
    return any_pb2.Any(
        type_url="containerd.runhcs.v1.Options", value=options.SerializeToString()
    ).SerializeToString()


def pod_config(hostname: str) -> any_pb2.Any:
    config = cri_api().PodSandboxConfig(hostname=hostname)
    config.metadata.name = hostname
    return any_pb2.Any(type_url="runtime.v1.PodSandboxConfig", value=config.SerializeToString())


async def call(client: Client, service: str, method: str, req: Message, resp: type[M]) -> M:
    result: M = await client.call(service, method, req, resp, timeout=RPC_TIMEOUT, metadata=META)
    return result


class Probe:
    """A container's stdout FIFO, opened for reading before Create (as containerd does)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = str(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    def read(self, timeout: float = 60.0) -> dict[str, list[str]]:
        data = b""
        deadline = time.monotonic() + timeout
        while b"END\n" not in data and time.monotonic() < deadline:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                chunk = b""
            if not chunk:
                time.sleep(0.05)
            data += chunk
        os.close(self.fd)
        assert b"END\n" in data, f"probe output incomplete: {data!r}"
        out: dict[str, list[str]] = {}
        for line in data.decode().splitlines():
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
        return out


def container_bundle(work: Path, cid: str, pod: str, rootfs: Path, marker: int) -> Path:
    b = work / "tasks" / cid
    b.mkdir(parents=True)
    spec: dict[str, Any] = {
        "ociVersion": "1.1.0",
        "process": {
            "args": ["sh", "-c", PROBE.replace("{marker}", str(marker))],
            "cwd": "/",
            "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0},
        },
        "root": {"path": str(rootfs)},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
        "annotations": {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": pod},
    }
    (b / "config.json").write_text(json.dumps(spec))
    return b


async def run_container(client: Client, work: Path, cid: str, pod: str, rootfs: Path, marker: int) -> Probe:
    bundle = container_bundle(work, cid, pod, rootfs, marker)
    probe = Probe(work / f"{cid}.out")
    await call(
        client,
        TASK_V3,
        "Create",
        task.CreateTaskRequest(id=cid, bundle=str(bundle), stdout=probe.path),
        task.CreateTaskResponse,
    )
    await call(client, TASK_V3, "Start", task.StartRequest(id=cid), task.StartResponse)
    return probe


async def status(client: Client, sandbox_id: str) -> sb.SandboxStatusResponse:
    return await call(
        client,
        SANDBOX,
        "SandboxStatus",
        sb.SandboxStatusRequest(sandbox_id=sandbox_id),
        sb.SandboxStatusResponse,
    )


def test_two_pods_share_one_uvm_and_stop_alone(containerd: Containerd, tmp_path: Path) -> None:
    c = containerd
    work = Path(f"/run/hcsshim-lcowv2-{secrets.token_hex(3)}")
    work.mkdir()
    group = f"e2e{secrets.token_hex(3)}"
    pods = {"pod-a": work / "pod-a", "pod-b": work / "pod-b"}
    drains = {}
    for pod, bundle in pods.items():
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps({"annotations": {UVM_GROUP: group}}))
        drains[pod] = LogDrain(bundle)
    rootfs = busybox_rootfs(work / "rootfs")
    for applet in ("readlink", "hostname", "tr"):
        (rootfs / "bin" / applet).symlink_to("busybox")

    answers = {
        pod: json.loads(shim(c, "start", pod, bundle, runtime_options())) for pod, bundle in pods.items()
    }
    assert answers["pod-a"]["version"] == 3 and answers["pod-a"]["protocol"] == "ttrpc"
    address = answers["pod-a"]["address"]
    assert answers["pod-b"]["address"] == address, "the group's second sandbox must reuse the running shim"
    uvm_id = (pods["pod-a"] / "uvm-id").read_text().strip()
    assert (pods["pod-b"] / "uvm-id").read_text().strip() == uvm_id
    server_pid = int((pods["pod-a"] / "shim.pid").read_text())
    assert not (pods["pod-b"] / "shim.pid").exists()
    timings: dict[str, float] = {}

    async def body() -> None:
        # One connection per sandbox, as containerd's shim manager keeps them.
        ca = await Client.connect(address, timeout=10)
        cb = await Client.connect(address, timeout=10)
        try:
            t0 = time.monotonic()
            await call(
                ca,
                SANDBOX,
                "CreateSandbox",
                sb.CreateSandboxRequest(
                    sandbox_id="pod-a", bundle_path=str(pods["pod-a"]), options=pod_config("pod-a-host")
                ),
                sb.CreateSandboxResponse,
            )
            assert (await status(ca, "pod-a")).state == "SANDBOX_NOTREADY"
            await call(
                ca,
                SANDBOX,
                "StartSandbox",
                sb.StartSandboxRequest(sandbox_id="pod-a"),
                sb.StartSandboxResponse,
            )
            timings["first pod (UVM boot)"] = time.monotonic() - t0
            ready = await status(ca, "pod-a")
            assert ready.state == "SANDBOX_READY" and ready.created_at.seconds > 0
            platform = await call(
                ca, SANDBOX, "Platform", sb.PlatformRequest(sandbox_id="pod-a"), sb.PlatformResponse
            )
            assert platform.platform.os == "linux"
            t0 = time.monotonic()
            await call(
                cb,
                SANDBOX,
                "CreateSandbox",
                sb.CreateSandboxRequest(
                    sandbox_id="pod-b", bundle_path=str(pods["pod-b"]), options=pod_config("pod-b-host")
                ),
                sb.CreateSandboxResponse,
            )
            await call(
                cb,
                SANDBOX,
                "StartSandbox",
                sb.StartSandboxRequest(sandbox_id="pod-b"),
                sb.StartSandboxResponse,
            )
            timings["second pod (same UVM)"] = time.monotonic() - t0
            assert (await status(cb, "pod-b")).state == "SANDBOX_READY"
            owner = uvm_id
            assert len(qemu_pids(owner)) == 1, "two pods, one QEMU"

            with pytest.raises(TtrpcError) as err:
                await call(ca, SANDBOX, "PingSandbox", sb.PingRequest(sandbox_id="pod-a"), sb.PingResponse)
            assert err.value.code == Code.UNIMPLEMENTED and "PingSandbox" in err.value.message

            t0 = time.monotonic()
            a1 = await asyncio.to_thread((await run_container(ca, work, "a1", "pod-a", rootfs, 1111)).read)
            timings["container create+start+output"] = time.monotonic() - t0
            a2 = await asyncio.to_thread((await run_container(ca, work, "a2", "pod-a", rootfs, 1112)).read)
            b1 = await asyncio.to_thread((await run_container(cb, work, "b1", "pod-b", rootfs, 2222)).read)
            # shimdiag on the same socket: one shim process, every pod's tasks.
            pid = await call(ca, DIAG, "DiagPid", diag.PidRequest(), diag.PidResponse)
            assert pid.pid == server_pid
            listed = await call(cb, DIAG, "DiagTasks", diag.TasksRequest(), diag.TasksResponse)
            assert sorted(t.id for t in listed.tasks) == ["a1", "a2", "b1"]
            stats = await call(ca, DIAG, "DiagStats", diag.VmStatsRequest(), diag.VmStatsResponse)
            assert stats.uvm_id == uvm_id and stats.vmm_pid == qemu_pids(uvm_id)[0]
            # SandboxMetrics: the shared VM's own figures, the same QEMU for either pod.
            for client, pod_id in ((ca, "pod-a"), (cb, "pod-b")):
                metrics = await call(
                    client,
                    SANDBOX,
                    "SandboxMetrics",
                    sb.SandboxMetricsRequest(sandbox_id=pod_id),
                    sb.SandboxMetricsResponse,
                )
                vm_stats = stats_pb2.VirtualMachineStatistics.FromString(metrics.metrics.data.value)
                assert metrics.metrics.id == pod_id, metrics
                assert vm_stats.processor.total_runtime_ns > 0, vm_stats
                assert vm_stats.memory.working_set_bytes > 64 << 20, vm_stats  # QEMU's RSS
                assert vm_stats.memory.vm_memory.assigned_memory > 0, vm_stats
            # Each pod its own UTS and network namespace, shared by its containers, and its own cgroup.
            assert (
                a1["host"] == ["pod-a-host"] and a2["host"] == ["pod-a-host"] and b1["host"] == ["pod-b-host"]
            )
            assert a1["net"] == a2["net"] and a1["net"] != b1["net"], (a1["net"], a2["net"], b1["net"])
            assert "/pods/pod-a/a1" in a1["cg"][0] and "/pods/pod-b/b1" in b1["cg"][0], (a1["cg"], b1["cg"])
            # Processes: a container sees its own, never the other pod's.
            assert any("sh -c" in p for p in a1["proc"]) and any("sh -c" in p for p in b1["proc"])
            assert not any("2222" in p for p in a1["proc"] + a2["proc"]), a1["proc"]
            assert not any("1111" in p or "1112" in p for p in b1["proc"]), b1["proc"]
            assert len(qemu_pids(owner)) == 1

            # Stop pod A: its containers end, pod B goes on and still takes (and runs) containers.
            await call(
                ca, SANDBOX, "StopSandbox", sb.StopSandboxRequest(sandbox_id="pod-a"), sb.StopSandboxResponse
            )
            stopped = await status(ca, "pod-a")
            assert stopped.state == "SANDBOX_NOTREADY" and stopped.exited_at.seconds > 0
            waited = await call(
                ca, SANDBOX, "WaitSandbox", sb.WaitSandboxRequest(sandbox_id="pod-a"), sb.WaitSandboxResponse
            )
            assert waited.exit_status == 0
            assert (await status(cb, "pod-b")).state == "SANDBOX_READY"
            state_a1 = await call(ca, TASK_V3, "State", task.StateRequest(id="a1"), task.StateResponse)
            state_b1 = await call(cb, TASK_V3, "State", task.StateRequest(id="b1"), task.StateResponse)
            assert state_a1.status == 3 and state_b1.status == 2  # STOPPED, RUNNING
            b2 = await asyncio.to_thread((await run_container(cb, work, "b2", "pod-b", rootfs, 2223)).read)
            assert b2["host"] == ["pod-b-host"] and b2["net"] == b1["net"]
            for cid in ("a1", "a2"):
                await call(ca, TASK_V3, "Delete", task.DeleteRequest(id=cid), task.DeleteResponse)
            await call(
                ca,
                SANDBOX,
                "ShutdownSandbox",
                sb.ShutdownSandboxRequest(sandbox_id="pod-a"),
                sb.ShutdownSandboxResponse,
            )
        finally:
            await ca.close()
        await asyncio.to_thread(
            shim, c, "delete", "pod-a", pods["pod-a"]
        )  # containerd, once pod A's connection is closed
        try:
            assert len(qemu_pids(uvm_id)) == 1, "pod B keeps the UVM"
            assert (await status(cb, "pod-b")).state == "SANDBOX_READY"
            with pytest.raises(TtrpcError) as err:
                await status(cb, "pod-a")
            assert err.value.code == Code.NOT_FOUND
            t0 = time.monotonic()
            await call(
                cb,
                SANDBOX,
                "ShutdownSandbox",
                sb.ShutdownSandboxRequest(sandbox_id="pod-b"),
                sb.ShutdownSandboxResponse,
            )
            timings["last ShutdownSandbox"] = time.monotonic() - t0
        finally:
            await cb.close()

    try:
        asyncio.run(body())
        # Pod A's bundle (and the log FIFO the shim started on) went with pod A: the log moved to B's.
        assert wait_until(lambda: "sandbox shut down" in drains["pod-b"].tail(200), 10), drains[
            "pod-b"
        ].tail()
        shim(c, "delete", "pod-b", pods["pod-b"])
        owner = uvm_id
        assert wait_until(lambda: not os.path.exists(f"/proc/{server_pid}"), 20), "the shim did not exit"
        assert wait_until(lambda: not qemu_pids(owner), 20), "QEMU outlived the last sandbox"
        assert not os.path.exists(address.removeprefix("unix://")), "the shim's socket is left"
        assert not mounts_under(str(work)), mounts_under(str(work))
        state = state_dir_for(f"{uvm_id}@vm")
        assert not mounts_under(state) and not os.path.exists(state), state
        print("\nlcow-v2 timings:", {k: round(v, 2) for k, v in timings.items()})
    except BaseException:
        for pod, drain in drains.items():
            print(f"--- shim log ({pod}) ---\n{drain.tail()}")
        raise
    finally:
        with_pid = f"/proc/{server_pid}"
        if os.path.exists(with_pid):
            with_pid_argv = Path(with_pid, "cmdline").read_bytes()
            if b"serve" in with_pid_argv:
                os.kill(server_pid, 9)
        subprocess.run(["rm", "-rf", str(work)], check=False)


# ---- through containerd 2.1's CRI with sandboxer = "shim" ------------------------------------------

CRI_NAMESPACE = "k8s.io"
CRI_HANDLER = "lcow-v2-shim"
CRI_GROUP = "cri-e2e"
CRI_CONFIG = f"""
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{CRI_HANDLER}]
  runtime_type = "io.containerd.lcow.v2"
  sandboxer = "shim"
  pod_annotations = ["io.hcsshim.*"]
"""
LIST_PROCS = "for p in /proc/[0-9]*; do echo \"proc=$(tr '\\0' ' ' < $p/cmdline)\"; done"


@pytest.fixture(scope="module")
def cri_containerd() -> Iterator[Containerd]:
    """containerd 2.1 with an io.containerd.lcow.v2 handler on the shim sandboxer, a CNI network, and
    HCSSHIM_LCOW_V2_UVM_GROUP in its environment (its shims inherit it): containerd 2.1's CRI hands
    `start` neither the pod's annotations nor handler options a non-runc shim can use."""
    from tests.support import cni

    if boot_files() is None:
        pytest.fail("no UVM image (run `hcsshim uvm build`)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HCSSHIM_LCOW_V2_UVM_GROUP", CRI_GROUP)
        c = start_containerd(version="2.1", extra_config=CRI_CONFIG)
    try:
        if not c.cri_ok:
            pytest.fail("containerd's CRI plugin did not initialise")
        net = cni.install(c.base)
        try:
            yield c
        finally:
            cni.remove(net)
    finally:
        stop_containerd(c)


def _exec(cri: Any, cid: str, script: str) -> dict[str, list[str]]:
    resp = cri.call(
        "ExecSync",
        cri.pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=60),
        "ExecSyncResponse",
    )
    assert resp.exit_code == 0, resp.stderr
    out: dict[str, list[str]] = {}
    for line in resp.stdout.decode().splitlines():
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def test_cri_pods_on_the_shim_sandboxer_share_one_uvm(cri_containerd: Containerd, tmp_path: Path) -> None:
    import tempfile

    from tests.support.cri import CriClient
    from tests.support.oci_image import DEFAULT_NAME, build_image
    from tests.support.procs import argvs

    c = cri_containerd
    with tempfile.TemporaryDirectory() as d:
        c.ctr(
            "images", "import", build_image(os.path.join(d, "bb.tar")), namespace=CRI_NAMESPACE, timeout=120
        )
    cri = CriClient(c.grpc_address)
    pods: dict[str, tuple[str, Any, str]] = {}
    timings: dict[str, float] = {}
    try:
        for name, marker in (("cri-a", 3331), ("cri-b", 4441)):
            config = cri.sandbox_config(name, str(tmp_path), host_network=False)
            t0 = time.monotonic()
            pod_id = cri.run_pod_sandbox(config, CRI_HANDLER)
            timings[f"RunPodSandbox {name}"] = time.monotonic() - t0
            cid = cri.create_container(
                pod_id, config, "w", DEFAULT_NAME, ["sleep", str(marker)], f"{name}.log"
            )
            cri.start_container(cid)
            pods[name] = (pod_id, config, cid)
        qemus = [
            pid
            for pid, argv in argvs()
            if argv and b"qemu-system" in argv[0] and f"group-{CRI_GROUP}-".encode() in b" ".join(argv)
        ]
        assert len(qemus) == 1, f"two CRI pods, one QEMU: {qemus}"
        views = {
            name: _exec(
                cri, cid, f'echo "host=$(hostname)"; echo "cg=$(cat /proc/self/cgroup)"; {LIST_PROCS}'
            )
            for name, (_, _, cid) in pods.items()
        }
        for name, (pod_id, _, cid) in pods.items():
            assert views[name]["host"] == [name]
            assert f"/pods/{pod_id}/{cid}" in views[name]["cg"][0], views[name]["cg"]
        # CRI's default (POD) PID namespace is the pod's: its sandbox container is pid 1 there.
        for name in pods:
            assert any("sleep 2147483647" in p for p in views[name]["proc"]), views[name]["proc"]
        assert any("sleep 3331" in p for p in views["cri-a"]["proc"]), views["cri-a"]["proc"]
        assert not any("sleep 4441" in p for p in views["cri-a"]["proc"]), views["cri-a"]["proc"]
        assert not any("sleep 3331" in p for p in views["cri-b"]["proc"]), views["cri-b"]["proc"]
        # Each pod has its CNI address inside the one UVM.
        ips = {}
        for name, (pod_id, _, _) in pods.items():
            req = cri.pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
            status = cri.call("PodSandboxStatus", req, "PodSandboxStatusResponse").status
            assert status.state == 0  # SANDBOX_READY
            ips[name] = str(status.network.ip)
        assert ips["cri-a"] and ips["cri-a"] != ips["cri-b"], ips

        t0 = time.monotonic()
        cri.stop_pod_sandbox(pods["cri-a"][0])
        cri.remove_pod_sandbox(pods["cri-a"][0])
        timings["stop+remove cri-a"] = time.monotonic() - t0
        still = _exec(cri, pods["cri-b"][2], 'echo "host=$(hostname)"')
        assert still["host"] == ["cri-b"], "pod B answers after pod A is gone"
        assert [pid for pid in qemus if os.path.exists(f"/proc/{pid}")] == qemus, "pod B keeps the UVM"
        cri.stop_pod_sandbox(pods["cri-b"][0])
        cri.remove_pod_sandbox(pods["cri-b"][0])
        pods.clear()
        assert wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in qemus), 20), "QEMU left"
        assert wait_until(
            lambda: not [a for _, a in argvs() if a and b"containerd-shim-lcow-v2" in b" ".join(a)], 20
        ), "shim left"
        assert not mounts_under(str(c.base / "state")), mounts_under(str(c.base / "state"))
        print("\nlcow-v2 CRI timings:", {k: round(v, 2) for k, v in timings.items()})
    finally:
        for pod_id, _, _ in pods.values():
            with contextlib.suppress(Exception):
                cri.stop_pod_sandbox(pod_id)
                cri.remove_pod_sandbox(pod_id)
        cri.close()
