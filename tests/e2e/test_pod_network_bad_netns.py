"""A pod network namespace that is missing, empty, or cannot take the shim's tap fails the task with an
error naming it, and leaves no QEMU, tap or tc filter behind (containerd-shim-runhcs-v1 through ctr:
the same shim path as a CRI sandbox, with the netns given explicitly)."""

from __future__ import annotations

import secrets
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from tests.support import cni
from tests.support.containerd import Containerd
from tests.support.shim_checks import RUNTIME, import_busybox, qemu_pids, wait_until
from tests.support.uvm import boot_files

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def image(containerd: Containerd) -> Iterator[str]:
    if boot_files() is None:
        pytest.fail("no UVM image: run `hcsshim uvm build` (make image)")
    with tempfile.TemporaryDirectory() as d:
        yield import_busybox(containerd, d)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"hcs-bad-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _run(c: Containerd, image: str, task_id: str, netns_path: str) -> str:
    proc = c.ctr(
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--with-ns",
        f"network:{netns_path}",
        image,
        task_id,
        "true",
        check=False,
        timeout=300,
    )
    assert proc.returncode != 0, "the task ran although its network namespace is unusable"
    return proc.stdout + proc.stderr


def _ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True)


def test_missing_netns_fails_with_its_path(containerd: Containerd, image: str) -> None:
    path = f"/var/run/netns/hcs-missing-{secrets.token_hex(3)}"
    err = _run(containerd, image, "net-missing", path)
    assert f"pod network namespace {path} does not exist" in err, err
    assert wait_until(lambda: not qemu_pids("net-missing"), 20)


def test_netns_without_interfaces_fails_and_starts_no_vm(
    containerd: Containerd, image: str, netns: str
) -> None:
    path = f"/var/run/netns/{netns}"
    err = _run(containerd, image, "net-empty", path)
    assert f"pod network namespace {path} has no interface with an address" in err, err
    assert wait_until(lambda: not qemu_pids("net-empty"), 20)
    assert cni.taps_in(path) == []


def test_tap_failure_after_boot_leaves_no_vm_tap_or_filter(
    containerd: Containerd, image: str, netns: str
) -> None:
    path = f"/var/run/netns/{netns}"
    _ip(netns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    _ip(netns, "addr", "add", "10.88.254.2/24", "dev", "eth0")
    _ip(netns, "link", "set", "eth0", "up")
    # Something else already owns the shim's tap name: the tap cannot be created.
    _ip(netns, "link", "add", "tap0_hcs", "type", "veth", "peer", "name", "peer1")
    err = _run(containerd, image, "net-taken", path)
    assert "tap0_hcs" in err, err
    assert wait_until(lambda: not qemu_pids("net-taken"), 30), "QEMU left behind"
    qdiscs = subprocess.run(
        ["tc", "-n", netns, "qdisc", "show", "dev", "eth0"], capture_output=True, text=True
    )
    assert "ingress" not in qdiscs.stdout, qdiscs.stdout
    links = subprocess.run(["ip", "-n", netns, "-br", "link"], capture_output=True, text=True).stdout
    assert "tap0_hcs" in links, "the shim deleted a device it did not create"
    assert cni.taps_in(path) == []
