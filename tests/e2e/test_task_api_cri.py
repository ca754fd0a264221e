"""Issue 10 items 5-7 through containerd's CRI plugin with a runhcs-v1 pod (one UVM): exit and kill
semantics like containerd's runc shim, byte-exact ExecSync output, and ContainerStats containerd can
decode (the guest's cgroup v2 figures as io.containerd.cgroups.v2.Metrics)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.containerd import Containerd
from tests.support.cri import CriClient
from tests.support.oci_image import DEFAULT_NAME, build_image, build_pause_image
from tests.support.shim_checks import qemu_pids, wait_until
from tests.support.uvm import boot_files

pytestmark = [pytest.mark.e2e, pytest.mark.root]

CRI_NAMESPACE = "k8s.io"
HANDLER = "runhcs-v1"


@pytest.fixture(scope="module")
def cri(containerd: Containerd) -> Iterator[CriClient]:
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


def _create(
    cri: CriClient, pod_id: str, pod_config: Any, name: str, command: list[str], pid_mode: int
) -> str:
    pb = cri.pb
    ns = pb.NamespaceOption(network=pb.NODE, pid=pid_mode)
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=DEFAULT_NAME),
        command=command,
        log_path=f"{name}.log",
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(namespace_options=ns)
        ),
    )
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)
    cid = str(cri.call("CreateContainer", req, "CreateContainerResponse").container_id)
    cri.start_container(cid)
    return cid


def _exec_sync(cri: CriClient, cid: str, cmd: list[str]) -> Any:
    req = cri.pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=60)
    return cri.call("ExecSync", req, "ExecSyncResponse")


def _processes(cri: CriClient, cid: str) -> bytes:
    resp = _exec_sync(cri, cid, ["sh", "-c", "cat /proc/[0-9]*/cmdline 2>/dev/null; true"])
    return bytes(resp.stdout)


def test_pod_exit_kill_exec_output_and_stats(containerd: Containerd, cri: CriClient, tmp_path: Path) -> None:
    pb = cri.pb
    config = cri.sandbox_config("task-api-pod", str(tmp_path), host_network=True)
    pod_id = cri.run_pod_sandbox(config, HANDLER)
    stopped = False
    try:
        # The pod's PID namespace (CRI names it by the sandbox's pid, which must be the guest's).
        watcher = _create(cri, pod_id, config, "watcher", ["sleep", "600"], pb.POD)
        victim = _create(cri, pod_id, config, "victim", ["sh", "-c", "sleep 4242 & wait"], pb.POD)
        # A container of its own PID namespace whose init has a child: StopPodSandbox must not hang.
        _create(cri, pod_id, config, "waiter", ["sh", "-c", "sleep 1000 & wait"], pb.CONTAINER)

        hi = _exec_sync(cri, watcher, ["echo", "hi"])
        assert (bytes(hi.stdout), bytes(hi.stderr), hi.exit_code) == (b"hi\n", b"", 0)
        err = _exec_sync(cri, watcher, ["sh", "-c", "echo oops >&2; exit 3"])
        assert (bytes(err.stdout), bytes(err.stderr), err.exit_code) == (b"", b"oops\n", 3)

        assert wait_until(lambda: b"sleep\x004242\x00" in _processes(cri, watcher), 60)
        cri.stop_container(victim, timeout=2)
        status = cri.wait_exited(victim, 60)
        assert status.state == pb.CONTAINER_EXITED
        # Its init's exit took the child along (the runc shim kills all of a shared-namespace container).
        assert b"sleep\x004242\x00" not in _processes(cri, watcher)

        _exec_sync(cri, watcher, ["sh", "-c", "i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done"])
        req = pb.ContainerStatsRequest(container_id=watcher)
        stats = cri.call("ContainerStats", req, "ContainerStatsResponse").stats
        assert stats.memory.working_set_bytes.value > 0, stats
        assert stats.cpu.usage_core_nano_seconds.value > 0, stats

        # Hang guard from the issue: StopPodSandbox returns within 10 s.
        patient, cri.timeout = cri.timeout, 10.0
        try:
            cri.stop_pod_sandbox(pod_id)
        finally:
            cri.timeout = patient
        stopped = True
        assert wait_until(lambda: not qemu_pids(pod_id), 30), "the pod's QEMU outlived StopPodSandbox"
    finally:
        if not stopped:
            cri.stop_pod_sandbox(pod_id)
        cri.remove_pod_sandbox(pod_id)
    assert not qemu_pids(pod_id)
