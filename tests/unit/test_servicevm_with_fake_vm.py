"""The service VM converters' host half, with a fake UVM standing in for QEMU and the guest: what
boots when, what is attached and released, and what a failure leaves behind (nothing)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import tempfile
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hcsshim.cli import lcow_snapshotter
from hcsshim.layers import tar2ext4
from hcsshim.layers.convert import HostConverter, LayerConverter
from hcsshim.servicevm import converter as svm
from hcsshim.snapshotter import daemon
from tests.unit.test_layers import sample_layer


@dataclass
class FakeMount:
    guest_path: str


@dataclass
class FakeSystem:
    exit_info: object | None = None


@dataclass
class FakeVM:
    """Attaches by host path (the "guest path" is the host file) and answers the guest script's exec
    with `behaviour`: "convert" (really converts the tar onto the output disk, as the guest does),
    "layer-error" (the guest's JSON error), "crash" (no answer) or "die" (the VM exits)."""

    id: str
    behaviour: str = "convert"
    system: FakeSystem = field(default_factory=FakeSystem)
    attached: dict[str, bool] = field(default_factory=dict)
    terminated: bool = False
    execs: int = 0

    async def add_scsi(self, host_path: str, read_only: bool = True, *, block_dev: bool = False) -> FakeMount:
        assert block_dev or host_path.endswith(".vhd"), "tar, output and scratch go in as raw disks"
        assert host_path not in self.attached
        self.attached[host_path] = read_only
        return FakeMount(host_path)

    async def remove_scsi(self, host_path: str) -> None:
        del self.attached[host_path]

    async def exec_in_uvm(
        self, args: list[str], *, timeout: float = 60.0, env: dict[str, str] | None = None
    ) -> tuple[int, bytes, bytes]:
        self.execs += 1
        assert env is not None and env["LD_LIBRARY_PATH"] == "/fake/tools/lib"
        req = json.loads(args[-1])
        assert self.attached[req["tar"]] is True and self.attached[req["out"]] is False
        assert not self.attached[req["scratch"]]
        if self.behaviour == "layer-error":
            return 1, json.dumps({"error": "tar entry '../x' escapes the layer"}).encode(), b""
        if self.behaviour == "crash":
            return 1, b"", b"Traceback: boom"
        if self.behaviour == "die":
            self.system.exit_info = object()
            raise ConnectionError("bridge closed: the VM exited")
        answer = await asyncio.to_thread(_fake_guest, req)
        return 0, json.dumps(answer).encode() + b"\n", b""

    async def terminate(self) -> None:
        self.terminated = True
        self.system.exit_info = object()


def _ext4_of(tar: bytes) -> tuple[bytes, tar2ext4.Result]:
    """The raw ext4 the guest writes for `tar` (made with the host's tools, as the guest does)."""
    key = hash(tar)
    if key not in _EXT4:
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "raw.img")
            r = tar2ext4.convert(io.BytesIO(tar), out)
            with open(out, "rb") as f:
                _EXT4[key] = (f.read(), r)
    return _EXT4[key]


_EXT4: dict[int, tuple[bytes, tar2ext4.Result]] = {}


def _fake_guest(req: dict[str, Any]) -> dict[str, Any]:
    # What guest_convert does: the ext4 straight onto the output disk. The image is made before the
    # test's loop runs (a conversion in a worker thread would compete with the loop for the GIL).
    with open(req["tar"], "rb") as f:
        data = f.read(req["tar_size"])
    image, r = _EXT4[hash(data)]
    with open(req["out"], "r+b") as dst:
        dst.write(image)
    return {"size": r.size, "entries": r.entries, "whiteouts": r.whiteouts, "opaque_dirs": r.opaque_dirs}


class FakeBoot:
    def __init__(self, behaviour: str = "convert") -> None:
        self.behaviour = behaviour
        self.vms: list[FakeVM] = []

    async def __call__(self) -> svm._Booted:
        vm = FakeVM(f"fake-{len(self.vms)}", self.behaviour)
        self.vms.append(vm)
        return svm._Booted(vm, "/fake/tools")  # type: ignore[arg-type]


T = TypeVar("T")
C = TypeVar("C", svm.GlobalServiceVMConverter, svm.PerInstanceServiceVMConverter)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run with worker threads started before the loop runs: starting a thread waits for
    it to be scheduled, which on a loaded machine holds the loop past the slow-callback watch."""
    pool = ThreadPoolExecutor(max_workers=4)
    list(pool.map(time.sleep, [0.02] * 4))  # four threads up and idle
    loop = asyncio.new_event_loop()
    loop.set_default_executor(pool)
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
        pool.shutdown(wait=True)


def _converter(kind: type[C], boot: FakeBoot) -> C:
    c = kind()
    c._boot = boot  # type: ignore[method-assign]
    return c


@pytest.fixture
def layer_tar(tmp_path: Path) -> Path:
    p = tmp_path / "layer.tar"
    p.write_bytes(sample_layer())
    _ext4_of(p.read_bytes())
    return p


def _host_bytes(tar: Path, tmp_path: Path) -> bytes:
    # HostConverter's own call (tar2ext4.convert with the VHD footer), here without a loop.
    out = tmp_path / "host.vhd"
    tar2ext4.convert(str(tar), str(out), tar2ext4.Options(append_vhd_footer=True))
    return out.read_bytes()


def test_global_converter_with_fake_vm_boots_once_for_two_layers_and_matches_the_host(
    tmp_path: Path, layer_tar: Path
) -> None:
    boot = FakeBoot()
    c = _converter(svm.GlobalServiceVMConverter, boot)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    async def go() -> None:
        await c.convert(str(layer_tar), str(out_dir / "a.vhd"), layer="sha256:a")
        await c.convert(str(layer_tar), str(out_dir / "b.vhd"), layer="sha256:b")
        assert len(boot.vms) == 1 and boot.vms[0].execs == 2 and not boot.vms[0].terminated
        assert boot.vms[0].attached == {}  # every disk released after each conversion
        await c.close()
        assert boot.vms[0].terminated
        with pytest.raises(svm.ServiceVMError, match="sha256:c"):
            await c.convert(str(layer_tar), str(out_dir / "c.vhd"), layer="sha256:c")

    _run(go())
    host = _host_bytes(layer_tar, tmp_path)
    assert (out_dir / "a.vhd").read_bytes() == host == (out_dir / "b.vhd").read_bytes()
    assert sorted(os.listdir(out_dir)) == ["a.vhd", "b.vhd"]


def test_global_converter_with_fake_vm_replaces_a_dead_vm(tmp_path: Path, layer_tar: Path) -> None:
    boot = FakeBoot()
    c = _converter(svm.GlobalServiceVMConverter, boot)

    async def go() -> None:
        await c.convert(str(layer_tar), str(tmp_path / "a.vhd"), layer="a")
        boot.vms[0].system.exit_info = object()  # it died between two conversions
        await c.convert(str(layer_tar), str(tmp_path / "b.vhd"), layer="b")
        assert len(boot.vms) == 2 and boot.vms[1].execs == 1
        # Dying in the middle of one: that layer fails, naming it; the next gets a new VM.
        boot.behaviour = "die"
        boot.vms[1].behaviour = "die"
        with pytest.raises(svm.ServiceVMError, match="layer c"):
            await c.convert(str(layer_tar), str(tmp_path / "c.vhd"), layer="c")
        assert boot.vms[1].terminated
        await c.close()

    _run(go())
    assert not (tmp_path / "c.vhd").exists()
    assert not [n for n in os.listdir(tmp_path) if n.endswith((".part", ".scratch"))]


def test_per_instance_converter_with_fake_vm_boots_and_terminates_one_vm_per_layer(
    tmp_path: Path, layer_tar: Path
) -> None:
    boot = FakeBoot()
    c = _converter(svm.PerInstanceServiceVMConverter, boot)

    async def go() -> None:
        for name in ("a", "b"):
            await c.convert(str(layer_tar), str(tmp_path / f"{name}.vhd"), layer=name)
        await c.close()

    _run(go())
    assert len(boot.vms) == 2 and all(vm.terminated and vm.execs == 1 for vm in boot.vms)
    assert (tmp_path / "a.vhd").read_bytes() == _host_bytes(layer_tar, tmp_path)


@pytest.mark.parametrize("behaviour", ["layer-error", "crash", "die"])
def test_per_instance_converter_with_fake_vm_failure_names_the_layer_and_leaves_nothing(
    tmp_path: Path, layer_tar: Path, behaviour: str
) -> None:
    boot = FakeBoot(behaviour)
    c = _converter(svm.PerInstanceServiceVMConverter, boot)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    error: type[Exception] = tar2ext4.LayerError if behaviour == "layer-error" else svm.ServiceVMError
    with pytest.raises(error, match="sha256:bad"):
        _run(c.convert(str(layer_tar), str(out_dir / "bad.vhd"), layer="sha256:bad"))
    assert os.listdir(out_dir) == []  # no partial VHD, no scratch
    assert boot.vms[0].terminated and boot.vms[0].attached == {}


def test_snapshotter_daemon_builds_the_converter_convert_in_names_with_fake_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[LayerConverter | None] = []

    async def fake_run(
        root: str, address: str, scratch: int, containerd: str, converter: daemon.ConverterFactory
    ) -> None:
        seen.append(converter(str(tmp_path / "convert")))

    monkeypatch.setattr(daemon, "run", fake_run)
    assert set(lcow_snapshotter.CONVERTERS) == {"host", "global-vm", "per-instance-vm"}
    for name, kind in (
        ("host", HostConverter),
        ("global-vm", svm.GlobalServiceVMConverter),
        ("per-instance-vm", svm.PerInstanceServiceVMConverter),
    ):
        assert lcow_snapshotter.main(["--root", str(tmp_path), "--convert-in", name]) == 0
        assert type(seen[-1]) is kind
    assert lcow_snapshotter.main(["--root", str(tmp_path)]) == 0
    assert type(seen[-1]) is HostConverter  # host is the default
    with pytest.raises(SystemExit):
        daemon.main(["--convert-in", "global-vm"])  # the snapshotter alone offers only the host
