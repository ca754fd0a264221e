"""The lcow snapshotter end to end: the daemon started by the test, a private containerd 1.6 with it
as a proxy plugin, an image unpacked into ext4 VHD layers, and containers of it in real UVMs with
their rootfs on SCSI disks."""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hcsshim.hcs.qemu.system import state_dir_for
from hcsshim.layers import vhd
from tests.support.containerd import Containerd, running_containerd
from tests.support.cri import CriClient
from tests.support.lcow import NAME as SNAPSHOTTER
from tests.support.lcow import LcowSnapshotter, cri_log_text, qemu_fds, restart, running_lcow_snapshotter
from tests.support.oci_image import build_image, build_pause_image
from tests.support.shim_checks import RUNTIME, bundle_path, mounts_under, qemu_pids, wait_until
from tests.support.uvm import boot_files

pytestmark = [pytest.mark.e2e, pytest.mark.root]

UVM_TIMEOUT = 300.0
IMAGE = "docker.io/library/lcow-two-layers:1"
BAD_IMAGE = "docker.io/library/lcow-bad-layer:1"


@dataclass
class Lcow:
    containerd: Containerd
    snapshotter: LcowSnapshotter

    @property
    def root(self) -> Path:
        return self.snapshotter.root

    def vhds(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*.vhd*"))

    def layer_vhds(self) -> list[Path]:
        return sorted((self.root / "layers").glob("*/layer.vhd"))


def _upper_layer() -> bytes:
    """A file of its own, and a whiteout of busybox's /bin/wc from the base layer."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("top.txt", b"from the upper layer\n"), ("bin/.wh.wc", b"")):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def lcow() -> Iterator[Lcow]:
    if boot_files() is None:
        raise AssertionError("no UVM image: run `hcsshim uvm build`")
    base = Path(f"/run/hcsshim-lcow-{secrets.token_hex(3)}")
    try:
        with (
            running_lcow_snapshotter(base) as sn,
            running_containerd(extra_config=sn.proxy_config(), cri_snapshotter=SNAPSHOTTER) as c,
        ):
            yield Lcow(c, sn)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _debugfs(image: Path, cmd: str) -> str:
    proc = subprocess.run(["debugfs", "-R", cmd, str(image)], capture_output=True, text=True, check=True)
    return proc.stdout


def test_two_layer_image_runs_from_vhd_layers_and_gc_removes_them(lcow: Lcow) -> None:
    c = lcow.containerd
    with tempfile.TemporaryDirectory() as d:
        tar = build_image(os.path.join(d, "img.tar"), IMAGE, extra_layers=[_upper_layer()])
        c.ctr("images", "import", "--snapshotter", SNAPSHOTTER, tar, timeout=180)
    layers = lcow.layer_vhds()
    assert len(layers) == 2 and all(vhd.is_fixed_vhd(str(p)) for p in layers), lcow.vhds()
    # The upper layer's whiteout is an overlay whiteout (0:0 character device) inside its VHD.
    upper = next(p for p in layers if "top.txt" in _debugfs(p, "ls /"))
    assert "Device major/minor number: 00:00" in _debugfs(upper, "stat /bin/wc")
    # State survives a restart of the daemon (containerd's proxy reconnects by itself).
    restart(lcow.snapshotter)
    # containerd redials a proxy plugin with gRPC's backoff: calls fail Unavailable until it has.
    assert wait_until(
        lambda: c.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls", check=False).returncode == 0, 30
    )
    listing = c.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout
    assert listing.count("Committed") == 2, listing

    task = "lcow-run"
    c.ctr(
        "run",
        "-d",
        "--snapshotter",
        SNAPSHOTTER,
        "--runtime",
        RUNTIME,
        IMAGE,
        task,
        "sleep",
        "600",
        timeout=UVM_TIMEOUT,
    )
    try:
        script = "cat /top.txt; test -e /bin/wc && echo WC-PRESENT || echo WC-GONE; echo mine > /written.txt"
        proc = c.ctr("task", "exec", "--exec-id", "e1", task, "sh", "-c", script, timeout=UVM_TIMEOUT)
        assert proc.stdout.splitlines() == ["from the upper layer", "WC-GONE"], proc.stdout + proc.stderr
        # Nothing of the rootfs on the host: no mount in the bundle, no Plan9 share exported by QEMU.
        assert qemu_pids(task), "the task's UVM is not running"
        assert mounts_under(bundle_path(c, task)) == []
        plan9_root = os.path.join(state_dir_for(f"{task}@vm"), "plan9")
        assert mounts_under(plan9_root) == [], mounts_under(plan9_root)
    finally:
        c.ctr("task", "kill", "-s", "SIGKILL", task, check=False)
        wait_until(lambda: "STOPPED" in c.ctr("task", "ls", check=False).stdout, 60)
        c.ctr("task", "delete", task, check=False, timeout=60)
    assert wait_until(lambda: not qemu_pids(task), 30), "QEMU still running"
    # The container's write is in its scratch VHD (the guest's overlay upper dir) and in no layer.
    scratches = sorted((lcow.root / "snapshots").glob("*/sandbox.vhd"))
    assert len(scratches) == 1, lcow.vhds()
    assert _debugfs(scratches[0], f"cat /scratch/{task}/upper/written.txt") == "mine\n"
    for p in layers:
        assert "written.txt" not in _debugfs(p, "ls /")

    c.ctr("containers", "delete", task, timeout=60)
    c.ctr("images", "rm", "--sync", IMAGE, timeout=120)
    assert wait_until(lambda: lcow.vhds() == [], 30), lcow.vhds()
    assert c.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout.splitlines()[1:] == []
    assert mounts_under(str(lcow.root)) == []


def test_malformed_layer_fails_the_unpack_naming_it_and_leaves_nothing(lcow: Lcow) -> None:
    c = lcow.containerd
    garbage = b"this is not a tar archive\n" * 64
    digest = "sha256:" + hashlib.sha256(garbage).hexdigest()
    with tempfile.TemporaryDirectory() as d:
        tar = build_image(os.path.join(d, "bad.tar"), BAD_IMAGE, extra_layers=[garbage])
        proc = c.ctr("images", "import", "--snapshotter", SNAPSHOTTER, tar, check=False, timeout=180)
    assert proc.returncode != 0
    assert digest in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    # No active (half-unpacked) snapshot, no unpack directory, no conversion in progress.
    listing = c.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout.splitlines()[1:]
    assert not [line for line in listing if "Active" in line], listing
    # containerd removes the failed unpack's snapshot while ctr reports the error: wait for it.
    assert wait_until(lambda: os.listdir(lcow.root / "snapshots") == [], 10)
    assert wait_until(lambda: os.listdir(lcow.root / "tmp") == [], 10), os.listdir(lcow.root / "tmp")
    # Only whole layers remain (the good base layer, until GC), never a partial file. A layer's
    # read-only host mount (its `mnt`) shows the layer's own files: it is not walked into.
    for top, dirs, files in os.walk(lcow.root):
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(top, d))]
        for name in files:
            p = Path(top) / name
            if name != "metadata.db" and not name.startswith("metadata.db-"):
                assert name == "layer.vhd" and vhd.is_fixed_vhd(str(p)), p
    c.ctr("images", "rm", "--sync", BAD_IMAGE, check=False, timeout=60)


def test_cri_pod_containers_share_each_layer_attachment(lcow: Lcow, tmp_path: Path) -> None:
    """containerd 1.6's CRI with the global snapshotter set to lcow (CRI temp-mounts every container's
    snapshot on the host to read /etc/passwd and /etc/group: the host form of the mounts is used)."""
    c = lcow.containerd
    assert c.cri_ok, c.log_tail()
    with tempfile.TemporaryDirectory() as d:
        tar = build_image(os.path.join(d, "img.tar"), IMAGE, extra_layers=[_upper_layer()])
        for t in (tar, build_pause_image(os.path.join(d, "pause.tar"))):
            c.ctr("images", "import", "--snapshotter", SNAPSHOTTER, t, namespace="k8s.io", timeout=180)
    cri = CriClient(c.grpc_address)
    config = cri.sandbox_config("lcow-pod", str(tmp_path), host_network=True)
    pod_id = cri.run_pod_sandbox(config, "runhcs-v1")
    containers: list[str] = []
    try:
        for name in ("first", "second"):
            script = f"cat /top.txt; echo {name} > /mine; cat /mine; sleep 600"
            cid = cri.create_container(pod_id, config, name, IMAGE, ["sh", "-c", script], f"{name}.log")
            containers.append(cid)
            cri.start_container(cid)
        for name in ("first", "second"):
            log = tmp_path / f"{name}.log"
            want = f"from the upper layer\n{name}"
            assert wait_until(lambda p=log, w=want: w in cri_log_text(p), 120), cri_log_text(log)
        (qemu,) = qemu_pids(pod_id)
        scratches = sorted((lcow.root / "snapshots").glob("*/sandbox.vhd"))
        assert len(scratches) == 3  # the pause container's and the two containers'
        per_attachment = qemu_fds(qemu, scratches[0])
        assert per_attachment > 0 and all(qemu_fds(qemu, p) == per_attachment for p in scratches)
        # The base layer serves all three containers, the upper layer two: each is attached once.
        layers = lcow.layer_vhds()
        assert len(layers) == 2
        assert [qemu_fds(qemu, p) for p in layers] == [per_attachment, per_attachment]
        for task_id in (pod_id, *containers):
            assert mounts_under(bundle_path(c, task_id, "k8s.io")) == []
    finally:
        for cid in containers:
            cri.stop_container(cid, timeout=2)
            cri.remove_container(cid)
        cri.stop_pod_sandbox(pod_id)
        cri.remove_pod_sandbox(pod_id)
        cri.close()
    assert wait_until(lambda: not qemu_pids(pod_id), 30), "the pod's QEMU outlived the pod"
    # CRI may have added references of its own (image ID, repo digest): remove every name.
    names = c.ctr("images", "ls", "-q", namespace="k8s.io").stdout.split()
    c.ctr("images", "rm", "--sync", *names, namespace="k8s.io", timeout=120)
    left = c.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls", namespace="k8s.io").stdout
    assert wait_until(lambda: lcow.layer_vhds() == [], 30), (
        f"{lcow.vhds()}\nimages were {names}\nk8s.io snapshots:\n{left}\n{lcow.snapshotter.log_tail(30)}"
    )
