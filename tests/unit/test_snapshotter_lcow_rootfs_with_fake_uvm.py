"""The shim's lcow-layer rootfs against a real UtilityVM over a fake compute system and bridge: layers
attached read-only once per UVM (shared by the containers of one image), a scratch disk each, the
guest's CombinedLayers, and the release order."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hcsshim.layers import lcow_mount
from hcsshim.shim.lcow_rootfs import LcowRootfs, layers_of
from hcsshim.shim.rootfs import MountSpec
from hcsshim.ttrpc import TtrpcError
from tests.unit.test_uvm_devices_with_fake_system import make_uvm


def snapshot(tmp_path: Path, name: str, parents: list[Path]) -> list[MountSpec]:
    d = tmp_path / name
    d.mkdir()
    (d / "sandbox.vhd").write_bytes(b"")
    host_view = MountSpec("overlay", "overlay", ("ro", "lowerdir=/x"))
    lcow = MountSpec(lcow_mount.TYPE, str(d), tuple(lcow_mount.options(True, [str(p) for p in parents])))
    return [host_view, lcow]


def layers(tmp_path: Path) -> list[Path]:
    out = []
    for n in ("top", "base"):
        (tmp_path / n).mkdir()
        (tmp_path / n / "layer.vhd").write_bytes(b"")
        out.append(tmp_path / n)
    return out


def host_ops(calls: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    return [c[1] for c in calls if c[0] == "host"]


def guest_combined(calls: list[tuple[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(c[1][0], c[1][2]) for c in calls if c[0] == "guest" and c[1][1] == "CombinedLayers"]


def test_two_containers_of_one_image_share_each_layer_attachment_with_fake_uvm(tmp_path: Path) -> None:
    parents = layers(tmp_path)

    async def run() -> None:
        vm, _, _, calls = make_uvm()
        a, b = LcowRootfs(vm, "ca"), LcowRootfs(vm, "cb")
        la = layers_of(snapshot(tmp_path, "sa", parents))
        lb = layers_of(snapshot(tmp_path, "sb", parents))
        assert la is not None and lb is not None
        root_a = await a.attach(la)
        root_b = await b.attach(lb)
        assert (root_a, root_b) == ("/run/gcs/c/ca/rootfs", "/run/gcs/c/cb/rootfs")
        adds = [op for op in host_ops(calls) if op[0] == "Add"]
        assert len(adds) == 4  # two layers once, two scratch disks
        assert vm.scsi.by_path[str(parents[0] / "layer.vhd")].refs == 2
        (_, sa), (_, sb) = guest_combined(calls)
        assert sa["Layers"] == sb["Layers"] and len(sa["Layers"]) == 2
        top = vm.scsi.by_path[str(parents[0] / "layer.vhd")].guest_path
        assert sa["Layers"][0] == {"Path": top}  # nearest parent first, as overlay's lowerdir
        assert sa["ScratchPath"].endswith("/scratch/ca") and sb["ScratchPath"].endswith("/scratch/cb")
        assert sa["ScratchPath"].rsplit("/scratch/", 1)[0] != sb["ScratchPath"].rsplit("/scratch/", 1)[0]
        calls.clear()
        await a.release()
        assert guest_combined(calls)[0] == ("Remove", {"ContainerID": "ca", "ContainerRootPath": root_a})
        assert len([op for op in host_ops(calls) if op[0] == "Remove"]) == 1  # only a's scratch
        assert vm.scsi.by_path[str(parents[1] / "layer.vhd")].refs == 1
        await b.release()
        assert vm.scsi.by_path == {}

    asyncio.run(run())


def test_a_failed_combine_detaches_everything_with_fake_uvm(tmp_path: Path) -> None:
    parents = layers(tmp_path)

    async def run() -> None:
        vm, _, bridge, calls = make_uvm()
        spec = layers_of(snapshot(tmp_path, "s", parents))
        assert spec is not None
        real = bridge.modify_settings

        async def failing(request: dict[str, Any], container_id: str = "") -> None:
            if request["ResourceType"] == "CombinedLayers":
                raise RuntimeError("overlay mount failed (fake)")
            await real(request, container_id)

        bridge.modify_settings = failing  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="overlay"):
            await LcowRootfs(vm, "c").attach(spec)
        assert vm.scsi.by_path == {}
        ops = host_ops(calls)
        assert [o[0] for o in ops].count("Add") == [o[0] for o in ops].count("Remove") == 3

    asyncio.run(run())


def test_other_snapshotters_mounts_are_not_lcow_and_bad_lcow_mounts_are_invalid_with_fake_uvm(
    tmp_path: Path,
) -> None:
    assert layers_of([MountSpec("overlay", "overlay", ("lowerdir=/a",))]) is None
    bad = [MountSpec(lcow_mount.TYPE, str(tmp_path), ("rw", "parentLayerPaths=[]"))]
    with pytest.raises(TtrpcError, match="no scratch disk"):
        layers_of(bad)
