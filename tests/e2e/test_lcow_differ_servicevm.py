"""The lcow differ with its layer tars parsed in service VMs, end to end on containerd 2.1: the
daemon started with ``--convert-in global-vm`` or ``per-instance-vm``, ``ctr images import`` unpacks
through it, and each layer's VHD is byte for byte what the host converter makes of the same tar. The
per-instance VMs are gone after the import; the global VM is one QEMU that lives until the daemon
stops."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import secrets
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from hcsshim.layers.convert import HostConverter
from tests.support.containerd import available, running_containerd
from tests.support.lcow import NAME as SNAPSHOTTER
from tests.support.lcow import running_lcow_snapshotter
from tests.support.oci_image import build_image
from tests.support.shim_checks import wait_until
from tests.support.uvm import boot_files, have_root_and_qemu

pytestmark = [pytest.mark.e2e, pytest.mark.root, pytest.mark.timeout(600)]

VERSION = "2.1"
IMAGE = "docker.io/library/lcow-differ-svm:1"
UPPER = [("etc/greeting", b"from a service VM\n"), ("bin/.wh.wc", b"")]


def _upper_layer() -> bytes:
    with tempfile.TemporaryFile() as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in UPPER:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
        f.seek(0)
        return f.read()


def _layer_tars(image_tar: str, out: Path) -> list[Path]:
    """The image's (uncompressed) layer blobs, in order."""
    with tarfile.open(image_tar) as t:

        def blob(digest: str) -> bytes:
            f = t.extractfile("blobs/" + digest.replace(":", "/"))
            assert f is not None, digest
            return f.read()

        index = json.loads(blob_file(t, "index.json"))
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        paths = []
        for i, layer in enumerate(manifest["layers"]):
            p = out / f"layer{i}.tar"
            p.write_bytes(blob(layer["digest"]))
            paths.append(p)
    return paths


def blob_file(t: tarfile.TarFile, name: str) -> bytes:
    f = t.extractfile(name)
    assert f is not None, name
    return f.read()


def _service_vm_qemus() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "svm" in line]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("convert_in", ["global-vm", "per-instance-vm"])
def test_import_through_service_vm_converters_matches_the_host_byte_for_byte(convert_in: str) -> None:
    assert have_root_and_qemu(), "the e2e group needs root and qemu-system-x86_64 (make test sets them up)"
    assert boot_files() is not None, "the e2e group needs the UVM image (make test builds it)"
    reason = available(VERSION)
    assert reason is None, f"containerd {VERSION}: {reason} (run scripts/setup.sh)"
    assert _service_vm_qemus() == [], "a service VM is already running"
    base = Path(f"/run/hcsshim-lcowsvm-{secrets.token_hex(3)}")
    work = Path(tempfile.mkdtemp(prefix="lcow-svm-"))
    try:
        image_tar = build_image(str(work / "img.tar"), IMAGE, extra_layers=[_upper_layer()])
        expected = set()
        for i, tar in enumerate(_layer_tars(image_tar, work)):
            out = work / f"host{i}.vhd"
            asyncio.run(HostConverter().convert(str(tar), str(out), layer=f"host {i}"))
            expected.add(_sha(out))
        with (
            running_lcow_snapshotter(base, convert_in=convert_in) as sn,
            running_containerd(version=VERSION, extra_config=sn.proxy_config(differ=True)) as c,
        ):
            sn.link_containerd(c.grpc_address)
            c.ctr("images", "import", "--snapshotter", SNAPSHOTTER, image_tar, timeout=300)
            log = sn.log.read_text(errors="replace")
            assert log.count(f"by the {convert_in} converter") == 2, log[-3000:]
            layers = sorted((sn.root / "layers").glob("*/layer.vhd"))
            assert {_sha(p) for p in layers} == expected, [str(p) for p in layers]
            running = _service_vm_qemus()
            if convert_in == "global-vm":
                assert len(running) == 1, running  # both layers went through one VM, still up
            else:
                assert running == [], running  # each per-instance VM went with its layer
            c.ctr("images", "rm", "--sync", IMAGE, timeout=120)
        assert wait_until(lambda: _service_vm_qemus() == [], 30), _service_vm_qemus()
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
