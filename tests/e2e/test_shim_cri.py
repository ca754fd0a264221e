"""containerd-shim-runhcs-v1 through containerd's CRI plugin: a pod's containers share the pod's UVM.
Every test runs against containerd 1.6 and 2.1."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hcsshim.shim.local import state_dir
from tests.support.containerd import Containerd
from tests.support.cri import CriClient
from tests.support.oci_image import DEFAULT_NAME, build_image, build_pause_image
from tests.support.procs import argvs
from tests.support.shim_checks import bundle_path, mounts_under, qemu_pids, shim_socket, wait_until
from tests.support.uvm import boot_files

pytestmark = [pytest.mark.e2e, pytest.mark.root]

CRI_NAMESPACE = "k8s.io"
HANDLER = "runhcs-v1"


@pytest.fixture(scope="module")
def containerd(containerd_matrix: Containerd) -> Containerd:
    return containerd_matrix


@pytest.fixture(scope="module")
def cri(containerd: Containerd) -> Iterator[CriClient]:
    if boot_files() is None:
        pytest.skip("no UVM image (run `hcsshim uvm build`)")
    if not containerd.cri_ok:
        pytest.skip("containerd's CRI plugin did not initialise")
    with tempfile.TemporaryDirectory() as d:
        for tar in (build_image(os.path.join(d, "bb.tar")), build_pause_image(os.path.join(d, "pause.tar"))):
            containerd.ctr("images", "import", tar, namespace=CRI_NAMESPACE, timeout=120)
    client = CriClient(containerd.grpc_address)
    yield client
    client.close()


def _log_text(path: str) -> str:
    # CRI log lines: "<time> stdout F <text>".
    try:
        with open(path, errors="replace") as f:
            return "\n".join(line.split(" ", 3)[-1] for line in f.read().splitlines())
    except OSError:
        return ""


def test_two_containers_of_a_pod_share_one_uvm(
    containerd: Containerd, cri: CriClient, tmp_path: Path
) -> None:
    logs = str(tmp_path)
    config = cri.sandbox_config("shim-pod", logs, host_network=True)
    pod_id = cri.run_pod_sandbox(config, HANDLER)
    containers: list[str] = []
    try:
        assert len(qemu_pids(pod_id)) == 1
        for name in ("first", "second"):
            cid = cri.create_container(
                pod_id,
                config,
                name,
                DEFAULT_NAME,
                ["sh", "-c", f"echo {name} says hello; uname -r; sleep 600"],
                f"{name}.log",
            )
            containers.append(cid)
            cri.start_container(cid)
        for name in ("first", "second"):
            path = os.path.join(logs, f"{name}.log")
            assert wait_until(lambda p=path, n=name: f"{n} says hello" in _log_text(p), 60), _log_text(path)
        # One QEMU for the whole pod, none of the containers got a UVM of its own.
        assert len(qemu_pids(pod_id)) == 1
        assert all(not qemu_pids(cid) for cid in containers)
        kernel = _log_text(os.path.join(logs, "first.log")).splitlines()[1]
        assert kernel != os.uname().release
    finally:
        for cid in containers:
            cri.stop_container(cid, timeout=2)
            cri.remove_container(cid)
        cri.stop_pod_sandbox(pod_id)
        cri.remove_pod_sandbox(pod_id)
    assert wait_until(lambda: not qemu_pids(pod_id), 30), "the pod's QEMU outlived the pod"
    for task_id in (pod_id, *containers):
        bundle = bundle_path(containerd, task_id, CRI_NAMESPACE)
        assert wait_until(lambda b=bundle: not mounts_under(b), 20), mounts_under(bundle)
    assert wait_until(lambda: not os.path.exists(shim_socket(containerd, pod_id, CRI_NAMESPACE)), 10)


def _agents(pod_id: str) -> list[int]:
    needle = state_dir(pod_id).encode()
    return [pid for pid, argv in argvs() if b"hcsshim.guest" in argv and any(needle in a for a in argv)]


def test_process_v2_pod_containers_share_one_agent(
    containerd: Containerd, cri: CriClient, tmp_path: Path
) -> None:
    logs = str(tmp_path)
    config = cri.sandbox_config("proc-pod", logs, host_network=True)
    pod_id = cri.run_pod_sandbox(config, "process-v2")
    containers: list[str] = []
    try:
        for name in ("one", "two"):
            cid = cri.create_container(
                pod_id,
                config,
                name,
                DEFAULT_NAME,
                ["sh", "-c", f"echo {name} on the host; sleep 600"],
                f"{name}.log",
            )
            containers.append(cid)
            cri.start_container(cid)
        for name in ("one", "two"):
            path = os.path.join(logs, f"{name}.log")
            assert wait_until(lambda p=path, n=name: f"{n} on the host" in _log_text(p), 30), _log_text(path)
        assert len(_agents(pod_id)) == 1
    finally:
        for cid in containers:
            cri.stop_container(cid, timeout=2)
            cri.remove_container(cid)
        cri.stop_pod_sandbox(pod_id)
        cri.remove_pod_sandbox(pod_id)
    assert wait_until(lambda: not _agents(pod_id), 30)
    assert wait_until(lambda: not os.path.exists(state_dir(pod_id)), 10)
