"""Service VMs end to end: a layer tar parsed inside a real UVM (QEMU + the guest agent), for both
lifetimes, byte for byte what the host converter writes; what each leaves behind (nothing); a
malformed tar failing with the layer's name."""

from __future__ import annotations

import asyncio
import gzip
import io
import lzma
import os
import signal
import subprocess
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hcsshim.hcs.qemu.system import state_dir_for
from hcsshim.layers import tar2ext4
from hcsshim.layers.convert import HostConverter
from hcsshim.servicevm import converter as svm
from tests.support.uvm import boot_files, have_root_and_qemu

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.root,
    pytest.mark.skipif(not have_root_and_qemu(), reason="needs root and qemu-system-x86_64"),
    pytest.mark.skipif(boot_files() is None, reason="needs the UVM image (hcsshim uvm build)"),
    pytest.mark.timeout(600),
]

MTIME = 1_700_000_000


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, **kw: object) -> None:
    ti = tarfile.TarInfo(name)
    ti.mtime = MTIME
    for k, v in kw.items():
        setattr(ti, k, v)
    if data is not None:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def upper_layer(path: Path, salt: str = "") -> Path:
    """A layer as an image's second one looks: files, a directory, symlinks, a hard link, a device
    node, xattrs, a whiteout of a lower file and an opaque directory."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "etc/", type=tarfile.DIRTYPE, mode=0o755)
        for i in range(40):
            _add(tf, f"etc/conf{i:02d}", f"{salt}value {i}\n".encode() * (i + 1), mode=0o644, uid=i, gid=i)
        _add(tf, "etc/hosts-link", type=tarfile.SYMTYPE, linkname="conf01")
        _add(tf, "etc/.wh.removed")
        _add(tf, "bin/", type=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "bin/tool", b"#!/bin/sh\necho tool\n" + salt.encode(), mode=0o4755)
        _add(tf, "bin/tool-again", type=tarfile.LNKTYPE, linkname="bin/tool")
        _add(tf, "bin/sh", type=tarfile.SYMTYPE, linkname="/bin/tool")
        _add(tf, "dev/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        _add(tf, "var/cache/.wh..wh..opq")
        _add(tf, "var/cache/new", b"fresh\n", pax_headers={"SCHILY.xattr.user.origin": "upper"})
        _add(tf, "usr/share/big", os.urandom(0) + b"x" * 300_000, mode=0o600)
    return path


def _our_qemus() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f"-{os.getpid()}-" in line and "svm" in line]


def _recording(c: svm.GlobalServiceVMConverter | svm.PerInstanceServiceVMConverter) -> list[str]:
    """The ids of the service VMs `c` boots."""
    ids: list[str] = []
    real: Callable[[], Awaitable[svm._Booted]] = c._boot

    async def boot() -> svm._Booted:
        booted = await real()
        ids.append(booted.vm.id)
        return booted

    c._boot = boot  # type: ignore[method-assign]
    return ids


@pytest.fixture(scope="module")
def tools_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("svm-tools"))


def _host(tar: Path, out: Path) -> bytes:
    asyncio.run(HostConverter().convert(str(tar), str(out), layer="host"))
    return out.read_bytes()


def _left_behind(ids: list[str], out_dir: Path) -> list[str]:
    left = [d for d in (state_dir_for(f"{i}@vm") for i in ids) if os.path.exists(d)]
    left += [n for n in os.listdir(out_dir) if n.endswith((".part", ".scratch"))]
    return left + _our_qemus()


def test_per_instance_service_vm_converts_byte_for_byte_and_leaves_no_qemu(
    tmp_path: Path, tools_dir: str
) -> None:
    tar = upper_layer(tmp_path / "layer.tar")
    host = _host(tar, tmp_path / "host.vhd")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    c = svm.PerInstanceServiceVMConverter(tools_dir=tools_dir)
    ids = _recording(c)

    async def go() -> tar2ext4.Result:
        try:
            return await c.convert(str(tar), str(out_dir / "layer.vhd"), layer="sha256:upper")
        finally:
            await c.close()

    result = asyncio.run(go())
    assert (out_dir / "layer.vhd").read_bytes() == host
    assert (result.whiteouts, result.opaque_dirs) == (1, 1)
    assert len(ids) == 1 and c.boots == 1
    assert _left_behind(ids, out_dir) == []


def test_global_service_vm_serves_four_layers_with_one_qemu_byte_for_byte(
    tmp_path: Path, tools_dir: str
) -> None:
    tars = [upper_layer(tmp_path / f"layer{i}.tar", salt=str(i)) for i in range(2)]
    hosts = [_host(t, tmp_path / f"host{i}.vhd") for i, t in enumerate(tars)]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    c = svm.GlobalServiceVMConverter(tools_dir=tools_dir)
    ids = _recording(c)
    during: list[list[str]] = []

    async def go() -> None:
        try:
            for i, tar in enumerate(tars):
                await c.convert(str(tar), str(out_dir / f"layer{i}.vhd"), layer=f"sha256:layer{i}")
                during.append(_our_qemus())
            # A compressed tar (its size no multiple of a sector) through the same VM.
            await c.convert(str(gz), str(out_dir / "gz.vhd"), layer="sha256:gz")
            # xz: the guest's Python loads _lzma and liblzma from the tools disk.
            await c.convert(str(xz), str(out_dir / "xz.vhd"), layer="sha256:xz")
            during.append(_our_qemus())
        finally:
            await c.close()

    gz = tmp_path / "layer0.tar.gz"
    gz.write_bytes(gzip.compress(tars[0].read_bytes(), mtime=0))
    assert gz.stat().st_size % 512
    xz = tmp_path / "layer0.tar.xz"
    xz.write_bytes(lzma.compress(tars[0].read_bytes()))
    asyncio.run(go())
    for i, host in enumerate(hosts):
        assert (out_dir / f"layer{i}.vhd").read_bytes() == host
    assert (out_dir / "gz.vhd").read_bytes() == hosts[0] == (out_dir / "xz.vhd").read_bytes()
    assert hosts[0] != hosts[1]
    assert len(ids) == 1 and c.boots == 1
    assert len(during[0]) == 1 and during[0] == during[1] == during[2]  # one QEMU, the same one, for all
    assert _left_behind(ids, out_dir) == []


def _dangling_link_tar(path: Path) -> Path:
    with tarfile.open(path, "w") as tf:
        _add(tf, "ok", b"fine\n")
        _add(tf, "link", type=tarfile.LNKTYPE, linkname="missing")
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(b"this is not a tar archive\n" * 100)
    return path


def _truncated_tar(path: Path) -> Path:
    good = upper_layer(path.with_suffix(".full"))
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])
    return path


@pytest.mark.parametrize("kind", ["per-instance", "global"])
def test_malformed_tar_in_a_service_vm_names_the_layer_and_leaves_nothing(
    tmp_path: Path, tools_dir: str, kind: str
) -> None:
    bad = [
        _dangling_link_tar(tmp_path / "dangling.tar"),
        _truncated_tar(tmp_path / "truncated.tar"),
        _garbage(tmp_path / "garbage.tar"),
    ]
    good = upper_layer(tmp_path / "good.tar")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    c: svm.GlobalServiceVMConverter | svm.PerInstanceServiceVMConverter = (
        svm.PerInstanceServiceVMConverter(tools_dir=tools_dir)
        if kind == "per-instance"
        else svm.GlobalServiceVMConverter(tools_dir=tools_dir)
    )
    ids = _recording(c)
    errors: list[str] = []

    async def go() -> None:
        try:
            for tar in bad:
                with pytest.raises(tar2ext4.LayerError) as e:
                    await c.convert(str(tar), str(out_dir / "bad.vhd"), layer=f"sha256:{tar.stem}")
                errors.append(str(e.value))
                assert not (out_dir / "bad.vhd").exists()
                if kind == "per-instance":
                    assert _our_qemus() == []
            # The global VM survives a bad layer and converts the next one.
            await c.convert(str(good), str(out_dir / "good.vhd"), layer="sha256:good")
        finally:
            await c.close()

    asyncio.run(go())
    assert "sha256:dangling" in errors[0] and "no such file in the layer" in errors[0]
    assert "sha256:truncated" in errors[1]
    assert "sha256:garbage" in errors[2]
    assert (out_dir / "good.vhd").read_bytes() == _host(good, tmp_path / "host.vhd")
    assert len(ids) == (4 if kind == "per-instance" else 1)
    assert sorted(os.listdir(out_dir)) == ["good.vhd"]
    assert _left_behind(ids, out_dir) == []


def test_global_service_vm_killed_between_layers_is_replaced(tmp_path: Path, tools_dir: str) -> None:
    tar = upper_layer(tmp_path / "layer.tar")
    host = _host(tar, tmp_path / "host.vhd")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    c = svm.GlobalServiceVMConverter(tools_dir=tools_dir)
    ids = _recording(c)

    async def go() -> None:
        try:
            await c.convert(str(tar), str(out_dir / "a.vhd"), layer="sha256:a")
            (line,) = _our_qemus()
            os.kill(int(line.split()[0]), signal.SIGKILL)  # the QEMU this test started
            assert c.vm is not None
            await asyncio.wait_for(c.vm.wait(), 30)
            await c.convert(str(tar), str(out_dir / "b.vhd"), layer="sha256:b")
            assert len(_our_qemus()) == 1
        finally:
            await c.close()

    asyncio.run(go())
    assert c.boots == 2 and len(ids) == 2 and ids[0] != ids[1]
    assert (out_dir / "a.vhd").read_bytes() == host == (out_dir / "b.vhd").read_bytes()
    assert _left_behind(ids, out_dir) == []
