"""Image layers as VHDs: (1) tar -> VHD throughput of our converter (hcsshim.layers.tar2ext4: unpack
the tar, then mkfs.ext4 -d, then the VHD footer) and of the lcow differ's Apply (the blob read in
1 MiB chunks as containerd's content store streams it, digests checked, decompressed, converted and
moved into the unpack snapshot) against ``mke2fs -d`` of the same layer already unpacked (the
reference, same run, same tree); (2) ``ctr run --rm`` to the command's output with the
rootfs on SCSI VHD layers (the lcow snapshotter) against the rootfs shared over 9p (overlayfs
snapshotter), same private containerd, image and runtime; (3) the same layer tar converted on the
host (HostConverter, the reference) against inside a service VM, global (one VM kept for every
layer; warm: its boot is paid once, before the samples) and per-instance (a VM booted and torn down
for each layer), the outputs checked byte for byte. Parts 2 and 3 boot UVMs: run them under
``flock /tmp/hcsshim-qemu.lock``."""

from __future__ import annotations

import asyncio
import filecmp
import gzip
import hashlib
import io
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hcsshim.layers import blob, tar2ext4, vhd
from hcsshim.layers.convert import HostConverter, LayerConverter
from hcsshim.layers.ext4 import make_ext4
from hcsshim.servicevm.converter import GlobalServiceVMConverter, PerInstanceServiceVMConverter
from hcsshim.snapshotter.core import Snapshotter
from hcsshim.snapshotter.differ import Descriptor, Differ
from tests.support.containerd import Containerd, available, running_containerd
from tests.support.lcow import NAME as LCOW
from tests.support.lcow import running_lcow_snapshotter
from tests.support.oci_image import build_image
from tests.support.shim_checks import RUNTIME
from tests.support.uvm import boot_files

RUNS = int(os.environ.get("BENCH_LAYERS_RUNS", "3"))
FILES = int(os.environ.get("BENCH_LAYERS_FILES", "3000"))
# Smaller for the service VMs: the guest's Python and mke2fs run under TCG on this machine.
SVM_FILES = int(os.environ.get("BENCH_LAYERS_SVM_FILES", "500"))
IMAGE = "docker.io/library/busybox:layers"
MARKER = "hello-from-the-layers"


def synthetic_layer(path: str, files: int) -> int:
    """A layer tar shaped like a distro layer: many small files, some large ones, dirs, symlinks."""
    rnd = secrets.token_bytes(1 << 20)
    total = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(files):
            d = f"usr/lib/pkg{i // 100}"
            if i % 100 == 0:
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            size = (1 << 20) if i % 200 == 0 else 512 + (i * 977) % 16384
            info = tarfile.TarInfo(f"{d}/file{i}")
            info.size, info.mode = size, 0o644
            tar.addfile(info, io.BytesIO(rnd[:size]))
            total += size
            if i % 50 == 0:
                link = tarfile.TarInfo(f"{d}/link{i}")
                link.type, link.linkname = tarfile.SYMTYPE, f"file{i}"
                tar.addfile(link)
    return total


def convert_ours(tar: str, out: str) -> float:
    start = time.monotonic()
    tar2ext4.convert(tar, out, tar2ext4.Options(append_vhd_footer=True))
    return time.monotonic() - start


def commit_path(tree: str, out: str) -> float:
    """What the lcow snapshotter's Commit does with the walking differ's directory."""
    start = time.monotonic()
    make_ext4(tree, out)
    vhd.append_footer_to_path(out)
    return time.monotonic() - start


def mke2fs_reference(tree: str, out: str, size: int) -> float:
    with open(out, "wb") as f:
        f.truncate(size)
    start = time.monotonic()
    argv = ["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-O", "^has_journal", "-d", tree, out]
    subprocess.run(argv, check=True, capture_output=True)
    return time.monotonic() - start


class FileContent:
    """The differ's ContentSource over blobs in a directory (what containerd's Content/Read streams)."""

    def __init__(self, blobs: dict[str, str]) -> None:
        self.blobs = blobs

    def read(self, digest: str, namespace: str, sink: Callable[[bytes], None]) -> int:
        n = 0
        with open(self.blobs[digest], "rb") as f:
            while chunk := f.read(1 << 20):
                sink(chunk)
                n += len(chunk)
        return n

    def close(self) -> None:
        return None


def differ_apply(root: str, blob_path: str, media_type: str, run: int) -> float:
    """One Apply into a fresh unpack snapshot (Prepare before the clock, Commit after it)."""
    digest = "sha256:" + _sha256_file(blob_path)
    sn = Snapshotter(root, scratch_size_gb=1, host_mounts=False)
    try:
        differ = Differ(sn, FileContent({digest: blob_path}))
        key = f"bench/{run}/extract-{run} {media_type}"
        mounts = sn.prepare(key, "", {})
        desc = Descriptor(media_type, digest, os.path.getsize(blob_path))
        start = time.monotonic()
        asyncio.run(differ.apply(desc, mounts, namespace="bench"))
        took = time.monotonic() - start
        sn.remove(key)
    finally:
        sn.close()
    return took


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def conversion() -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        tar = os.path.join(d, "layer.tar")
        payload = synthetic_layer(tar, FILES)
        mib = os.path.getsize(tar) / (1 << 20)
        tree = os.path.join(d, "tree")
        os.mkdir(tree)
        tar2ext4.unpack(tar, tree)
        gz = tar + ".gz"
        with open(tar, "rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        gz_mib = os.path.getsize(gz) / (1 << 20)
        sn_root = os.path.join(d, "sn")
        ours, ref, commit, apply_tar, apply_gz = [], [], [], [], []
        for i in range(RUNS):
            apply_tar.append(differ_apply(sn_root, tar, blob.MEDIA_TYPE_TAR, 2 * i))
            apply_gz.append(differ_apply(sn_root, gz, blob.MEDIA_TYPE_TAR + "+gzip", 2 * i + 1))
            out = os.path.join(d, f"ours{i}.vhd")
            ours.append(convert_ours(tar, out))
            size = os.path.getsize(out)
            os.unlink(out)
            ref_out = os.path.join(d, f"ref{i}.img")
            ref.append(mke2fs_reference(tree, ref_out, size))
            os.unlink(ref_out)
            commit.append(commit_path(tree, ref_out))
            os.unlink(ref_out)
    o, r, m = statistics.median(ours), statistics.median(ref), statistics.median(commit)
    print(f"layer tar: {mib:.1f} MiB, {FILES} files, {payload / (1 << 20):.1f} MiB of data; median of {RUNS}")
    print(f"{'tar -> VHD':44} {'ours':>10} {'mke2fs -d':>10} {'ratio':>8}")
    print(f"{'seconds':44} {o:>10.2f} {r:>10.2f} {o / r:>8.2f}")
    print(f"{'MiB/s of tar':44} {mib / o:>10.1f} {mib / r:>10.1f} {r / o:>8.2f}")
    label = "snapshotter Commit, directory -> VHD (s)"
    print(f"{label:44} {m:>10.2f} {r:>10.2f} {m / r:>8.2f}")
    at, ag = statistics.median(apply_tar), statistics.median(apply_gz)
    print(f"{'lcow differ Apply, tar blob -> VHD (s)':44} {at:>10.2f} {r:>10.2f} {at / r:>8.2f}")
    label = f"lcow differ Apply, tar.gz {gz_mib:.0f} MiB -> VHD (s)"
    print(f"{label:44} {ag:>10.2f} {r:>10.2f} {ag / r:>8.2f}")
    print("(mke2fs -d reads the tree already unpacked; tar -> VHD and Apply include unpacking the tar)")


def to_output(c: Containerd, snapshotter: str) -> float:
    cid = f"bench-{uuid.uuid4().hex[:8]}"
    argv = c.ctr_argv("run", "--rm", "--snapshotter", snapshotter, "--runtime", RUNTIME, IMAGE, cid)
    start = time.monotonic()
    proc = subprocess.Popen(
        [*argv, "echo", MARKER], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=c.env
    )
    assert proc.stdout is not None
    first = 0.0
    out = []
    for raw in proc.stdout:
        out.append(raw.decode(errors="replace"))
        if MARKER.encode() in raw and not first:
            first = time.monotonic() - start
    code = proc.wait(timeout=600)
    if code != 0 or not first:
        raise RuntimeError(
            f"ctr run --snapshotter {snapshotter} failed ({code}): {''.join(out)}\n{c.log_tail()}"
        )
    return first


def container_start() -> None:
    reason = available()
    if reason is not None:
        print(f"container start: skipped ({reason})")
        return
    if boot_files() is None:
        print("container start: no UVM image; run `hcsshim uvm build` first")
        return
    base = Path(f"/run/hcsshim-lcow-bench-{secrets.token_hex(3)}")
    try:
        with (
            running_lcow_snapshotter(base) as sn,
            running_containerd(extra_config=sn.proxy_config()) as c,
            tempfile.TemporaryDirectory() as work,
        ):
            tar = build_image(os.path.join(work, "img.tar"), IMAGE)
            c.ctr("images", "import", tar, timeout=180)
            c.ctr("images", "import", "--snapshotter", LCOW, tar, timeout=180)
            vhd = [to_output(c, LCOW) for _ in range(RUNS)]
            ninep = [to_output(c, "overlayfs") for _ in range(RUNS)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    v, n = statistics.median(vhd), statistics.median(ninep)
    print(f"ctr run --rm busybox echo, runhcs-v1, containerd 1.6; median of {RUNS}")
    print(f"{'start to output (s)':44} {'VHD':>10} {'9p':>10} {'ratio':>8}")
    print(f"{'rootfs: lcow VHD layers vs overlay over 9p':44} {v:>10.2f} {n:>10.2f} {v / n:>8.2f}")
    print(f"samples VHD: {[round(x, 2) for x in vhd]} 9p: {[round(x, 2) for x in ninep]}")


async def _timed(c: LayerConverter, tar: str, out: str, n: int) -> list[float]:
    samples = []
    for i in range(n):
        start = time.monotonic()
        await c.convert(tar, f"{out}{i}.vhd", layer=f"bench-{i}")
        samples.append(time.monotonic() - start)
    return samples


async def _service_vm_samples(d: str, tar: str) -> tuple[dict[str, list[float]], float, int]:
    host = HostConverter()
    per = PerInstanceServiceVMConverter()
    glob = GlobalServiceVMConverter()
    try:
        samples = {"host": await _timed(host, tar, os.path.join(d, "host"), RUNS)}
        start = time.monotonic()
        await glob.convert(tar, os.path.join(d, "warm.vhd"), layer="bench-warm")  # boots the VM
        first = time.monotonic() - start
        samples["global-vm"] = await _timed(glob, tar, os.path.join(d, "global"), RUNS)
        phases = {"host side": glob.last_host_seconds, "guest side": glob.last_guest_seconds}
        print(f"global-vm, last conversion's phases (s): {phases}")
        samples["per-instance-vm"] = await _timed(per, tar, os.path.join(d, "per"), RUNS)
    finally:
        await glob.close()
        await per.close()
    return samples, first, glob.boots


def service_vms() -> None:
    if boot_files() is None:
        print("service VMs: no UVM image; run `hcsshim uvm build` first")
        return
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        tar = os.path.join(d, "layer.tar")
        synthetic_layer(tar, SVM_FILES)
        mib = os.path.getsize(tar) / (1 << 20)
        samples, first, boots = asyncio.run(_service_vm_samples(d, tar))
        outs = [os.path.join(d, f"{p}{i}.vhd") for p in ("host", "global", "per") for i in range(RUNS)]
        same = all(filecmp.cmp(outs[0], o, shallow=False) for o in outs[1:])
    med = {k: statistics.median(v) for k, v in samples.items()}
    h = med["host"]
    print(f"layer tar -> VHD, {mib:.1f} MiB, {SVM_FILES} files; median of {RUNS}; reference: the host")
    print(f"{'where the tar is parsed (s)':44} {'there':>10} {'host':>10} {'ratio':>8}")
    for name in ("host", "global-vm", "per-instance-vm"):
        print(f"{name:44} {med[name]:>10.2f} {h:>10.2f} {med[name] / h:>8.2f}")
    print(f"global-vm first layer, boot included (s)     {first:>10.2f} {h:>10.2f} {first / h:>8.2f}")
    print(f"global VM boots: {boots}; outputs byte-identical across all three: {'yes' if same else 'NO'}")
    print(f"samples: { {k: [round(x, 2) for x in v] for k, v in samples.items()} }")


def main() -> int:
    conversion()
    container_start()
    service_vms()
    return 0


if __name__ == "__main__":
    sys.exit(main())
