"""The lcow differ end to end on containerd 2.1 (config version 3): the daemon started by the test
serves the snapshotter and the differ (proxy plugins of type snapshot and diff on one socket) and
reads layer blobs from the test's private containerd; unpack writes each layer's VHD straight from
its tar, and Commit adopts it. CRI with the lcow snapshotter set on one runtime handler runs a pod
whose container rootfs is those VHD layers on SCSI, in a real UVM."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
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
from hcsshim.hvsock.abi import SCSI_MOUNT_ROOT
from hcsshim.layers import vhd
from tests.support.containerd import Containerd, available, running_containerd
from tests.support.cri import CriClient
from tests.support.lcow import NAME as SNAPSHOTTER
from tests.support.lcow import LcowSnapshotter, cri_log_text, qemu_fds, running_lcow_snapshotter
from tests.support.oci_image import build_image, build_pause_image
from tests.support.shim_checks import bundle_path, mounts_under, qemu_pids, wait_until
from tests.support.uvm import boot_files

pytestmark = [pytest.mark.e2e, pytest.mark.root]

VERSION = "2.1"
HANDLER = "runhcs-v1"
IMAGE = "docker.io/library/lcow-differ:1"
BAD_IMAGE = "docker.io/library/lcow-differ-bad:1"
APPLIED = re.compile(r"applied layer (sha256:[0-9a-f]{64}) \((?:none|gzip|zstd),")
ADOPTED = "the lcow differ's VHD adopted"
CONVERTED = "converted from its directory"


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

    def log(self) -> str:
        return self.snapshotter.log.read_text(errors="replace")


def _upper_layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("top.txt", b"from the upper layer\n"), ("bin/.wh.wc", b"")):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def lcow2() -> Iterator[Lcow]:
    reason = available(VERSION)
    if reason == "needs root":
        pytest.skip(reason)
    if reason is not None:
        pytest.fail(f"containerd {VERSION}: {reason} (run scripts/setup.sh)")
    base = Path(f"/run/hcsshim-lcowd-{secrets.token_hex(3)}")
    try:
        with (
            running_lcow_snapshotter(base) as sn,
            running_containerd(
                version=VERSION,
                extra_config=sn.proxy_config(differ=True),
                handler_snapshotters={HANDLER: SNAPSHOTTER},
            ) as c,
        ):
            sn.link_containerd(c.grpc_address)
            yield Lcow(c, sn)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _debugfs(image: Path, cmd: str) -> str:
    proc = subprocess.run(["debugfs", "-R", cmd, str(image)], capture_output=True, text=True, check=True)
    return proc.stdout


def _applied_since(lcow: Lcow, mark: int) -> tuple[list[str], str]:
    text = lcow.log()[mark:]
    return APPLIED.findall(text), text


@pytest.mark.parametrize("compression", ["gzip", "zstd", ""])
def test_ctr_import_unpacks_through_the_lcow_differ_into_adopted_vhds(lcow2: Lcow, compression: str) -> None:
    """containerd 2.1's transfer service (ctr images import) with unpack_config lcow -> lcow-diff."""
    c = lcow2.containerd
    mark = len(lcow2.log())
    with tempfile.TemporaryDirectory() as d:
        tar = build_image(
            os.path.join(d, "img.tar"), IMAGE, extra_layers=[_upper_layer()], compression=compression
        )
        c.ctr("images", "import", "--snapshotter", SNAPSHOTTER, tar, timeout=180)
    layers = lcow2.layer_vhds()
    assert len(layers) == 2 and all(vhd.is_fixed_vhd(str(p)) for p in layers), lcow2.vhds()
    applied, text = _applied_since(lcow2, mark)
    assert len(applied) == 2 and text.count(f"({compression or 'none'},") == 2, text
    # Both commits took the differ's VHD; no layer went through an unpacked directory.
    assert text.count(ADOPTED) == 2 and CONVERTED not in text, text
    upper = next(p for p in layers if "top.txt" in _debugfs(p, "ls /"))
    assert _debugfs(upper, "cat /top.txt") == "from the upper layer\n"
    assert "Device major/minor number: 00:00" in _debugfs(upper, "stat /bin/wc")
    listing = c.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout
    assert listing.count("Committed") == 2, listing
    c.ctr("images", "rm", "--sync", IMAGE, timeout=120)
    assert wait_until(lambda: lcow2.layer_vhds() == [], 30), lcow2.vhds()


def test_malformed_layer_through_the_differ_fails_naming_it_and_leaves_nothing(lcow2: Lcow) -> None:
    c = lcow2.containerd
    garbage = b"this is not a tar archive\n" * 64
    with tempfile.TemporaryDirectory() as d:
        tar = build_image(os.path.join(d, "bad.tar"), BAD_IMAGE, extra_layers=[garbage], compression="gzip")
        proc = c.ctr("images", "import", "--snapshotter", SNAPSHOTTER, tar, check=False, timeout=180)
    digest = "sha256:" + hashlib.sha256(gzip.compress(garbage, mtime=0)).hexdigest()
    out = proc.stdout + proc.stderr
    log = lcow2.log()
    assert f"apply {digest} failed" in log, lcow2.snapshotter.log_tail()
    # The failure names the layer to the client too (containerd passes the differ's message on).
    assert proc.returncode != 0 and digest in out, out
    listing = c.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout.splitlines()[1:]
    assert wait_until(
        lambda: (
            not [
                line
                for line in c.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout.splitlines()[1:]
                if "Active" in line
            ]
        ),
        10,
    ), listing
    snaps = lcow2.root / "snapshots"
    assert wait_until(lambda: os.listdir(snaps) == [], 10), os.listdir(snaps)
    assert wait_until(lambda: os.listdir(lcow2.root / "tmp") == [], 10), os.listdir(lcow2.root / "tmp")
    assert os.listdir(lcow2.root / "convert") == []
    # Only whole layers remain (the good base layer, until GC), never a partial file.
    for top, dirs, files in os.walk(lcow2.root):
        dirs[:] = [x for x in dirs if not os.path.ismount(os.path.join(top, x))]
        for name in files:
            p = Path(top) / name
            if name != "metadata.db" and not name.startswith("metadata.db-"):
                assert name == "layer.vhd" and vhd.is_fixed_vhd(str(p)), p
    c.ctr("images", "rm", "--sync", BAD_IMAGE, check=False, timeout=60)
    assert wait_until(lambda: lcow2.layer_vhds() == [], 30), lcow2.vhds()


def test_cri_handler_snapshotter_runs_a_pod_from_differ_vhd_layers(lcow2: Lcow, tmp_path: Path) -> None:
    """The images are imported into containerd's default snapshotter only (overlayfs, CRI's global
    one); the runhcs-v1 handler names lcow, so CRI unpacks them into lcow when it creates the pod's
    containers (the diff service's order puts the lcow differ first)."""
    if boot_files() is None:
        raise AssertionError("no UVM image: run `hcsshim uvm build`")
    c = lcow2.containerd
    assert c.cri_ok, c.log_tail()
    mark = len(lcow2.log())
    with tempfile.TemporaryDirectory() as d:
        tar = build_image(
            os.path.join(d, "img.tar"), IMAGE, extra_layers=[_upper_layer()], compression="gzip"
        )
        for t in (tar, build_pause_image(os.path.join(d, "pause.tar"))):
            c.ctr("images", "import", t, namespace="k8s.io", timeout=180)
    assert lcow2.layer_vhds() == []
    cri = CriClient(c.grpc_address)
    config = cri.sandbox_config("lcow-differ-pod", str(tmp_path), host_network=True)
    pod_id = cri.run_pod_sandbox(config, HANDLER)
    cid = ""
    try:
        script = "cat /top.txt; test -e /bin/wc && echo WC-PRESENT || echo WC-GONE; cat /proc/self/mountinfo"
        script += "; echo MOUNTINFO-END; sleep 600"
        cid = cri.create_container(pod_id, config, "app", IMAGE, ["sh", "-c", script], "app.log")
        cri.start_container(cid)
        log = tmp_path / "app.log"
        assert wait_until(lambda: "MOUNTINFO-END" in cri_log_text(log), 180), cri_log_text(log) + c.log_tail(
            40
        )
        lines = cri_log_text(log).splitlines()
        assert lines[:2] == ["from the upper layer", "WC-GONE"], lines
        # Inside the guest the container's / is an overlay whose lower layers are SCSI disk mounts.
        (root,) = [line for line in lines if len(line.split()) > 4 and line.split()[4] == "/"]
        fstype, _, options = root.split(" - ", 1)[1].split(" ", 2)
        lowers = next(o for o in options.split(",") if o.startswith("lowerdir=")).split("=", 1)[1].split(":")
        assert fstype == "overlay" and len(lowers) == 2, root
        assert all(p.startswith(SCSI_MOUNT_ROOT + "/") for p in lowers), root
        applied, text = _applied_since(lcow2, mark)
        # The pause image's one layer is the app image's base layer (another blob, the same diff_id):
        # its chain is unpacked once and shared, so two layers were applied, each adopted at Commit.
        assert len(applied) == 2 and text.count(ADOPTED) == 2 and CONVERTED not in text, text
        (qemu,) = qemu_pids(pod_id)
        layers = lcow2.layer_vhds()
        assert len(layers) == 2, lcow2.vhds()
        # Each layer VHD is open in QEMU (a SCSI disk); no 9p share carries a rootfs.
        assert all(qemu_fds(qemu, p) > 0 for p in layers), [(qemu_fds(qemu, p), p) for p in layers]
        scratches = sorted((lcow2.root / "snapshots").glob("*/sandbox.vhd"))
        assert len(scratches) == 2 and all(qemu_fds(qemu, p) > 0 for p in scratches)
        # CRI's per-container files (hosts, resolv.conf, ...) may travel over Plan9; a rootfs never.
        plan9_root = os.path.join(state_dir_for(f"{pod_id}@vm"), "plan9")
        shares = {p: sorted(os.listdir(p)) if os.path.isdir(p) else "file" for p in mounts_under(plan9_root)}
        assert not [p for p, names in shares.items() if "bin" in names or "top.txt" in names], shares
        for task_id in (pod_id, cid):
            assert mounts_under(bundle_path(c, task_id, "k8s.io")) == []
    finally:
        if cid:
            cri.stop_container(cid, timeout=2)
            cri.remove_container(cid)
        cri.stop_pod_sandbox(pod_id)
        cri.remove_pod_sandbox(pod_id)
        cri.close()
    assert wait_until(lambda: not qemu_pids(pod_id), 30), "the pod's QEMU outlived the pod"
    names = c.ctr("images", "ls", "-q", namespace="k8s.io").stdout.split()
    c.ctr("images", "rm", "--sync", *names, namespace="k8s.io", timeout=120)
    assert wait_until(lambda: lcow2.layer_vhds() == [], 30), lcow2.vhds()
