"""Guest storage handlers with the mount syscall replaced by a recorder (no devices needed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hcsshim.gcs import devices
from hcsshim.gcs.protocol import GcsError
from hcsshim.guest import storage
from hcsshim.guest.syscalls import MS_RDONLY

Calls = list[tuple[str, str, str, int, str]]


@pytest.fixture
def mounts(monkeypatch: pytest.MonkeyPatch) -> Calls:
    calls: Calls = []
    mounted: set[str] = set()

    def fake_mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
        calls.append((source, target, fstype, flags, data))
        mounted.add(target)

    monkeypatch.setattr(storage, "mount", fake_mount)
    monkeypatch.setattr(storage, "is_mountpoint", lambda path: path in mounted)
    return calls


def test_fake_mount_plan9_tag_mounted_once_then_shares_bound(
    mounts: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "plan9-root"
    monkeypatch.setattr(devices, "PLAN9_ROOT", str(root))
    (root / "3").mkdir(parents=True)
    (root / "4").mkdir()
    storage.add_plan9({"MountPath": str(tmp_path / "m3"), "ShareName": "3", "ReadOnly": True, "Port": 564})
    storage.add_plan9({"MountPath": str(tmp_path / "m4"), "ShareName": "4"})
    tags = [c for c in mounts if c[2] == "9p"]
    assert tags == [("hcsshim-plan9", str(root), "9p", 0, "trans=virtio,version=9p2000.L,msize=262144")]
    binds = [(c[0], c[1]) for c in mounts if c[2] == ""]
    assert (str(root / "3"), str(tmp_path / "m3")) in binds and (
        str(root / "4"),
        str(tmp_path / "m4"),
    ) in binds
    assert any(c[1] == str(tmp_path / "m3") and c[3] & MS_RDONLY for c in mounts)  # ro remount
    with pytest.raises(GcsError, match="not present"):
        storage.add_plan9({"MountPath": str(tmp_path / "m9"), "ShareName": "9"})
    with pytest.raises(GcsError, match="invalid Plan9 share"):
        storage.add_plan9({"MountPath": str(tmp_path / "mx"), "ShareName": "../etc"})


def test_fake_mount_vpmem_and_overlay_arguments(mounts: Calls, tmp_path: Path) -> None:
    storage.add_vpmem({"DeviceNumber": 2, "MountPath": str(tmp_path / "pmem2")})
    assert mounts[-1] == ("/dev/pmem2", str(tmp_path / "pmem2"), "ext4", MS_RDONLY, "noload")
    top, base = tmp_path / "top", tmp_path / "base"
    top.mkdir()
    base.mkdir()
    settings = {
        "ContainerRootPath": str(tmp_path / "rootfs"),
        "Layers": [{"Path": str(top)}, {"Path": str(base)}],
        "ScratchPath": str(tmp_path / "scratch"),
    }
    storage.add_combined_layers(settings)
    src, target, fstype, flags, data = mounts[-1]
    assert (src, target, fstype, flags) == ("overlay", str(tmp_path / "rootfs"), "overlay", 0)
    assert data == f"lowerdir={top}:{base},upperdir={tmp_path}/scratch/upper,workdir={tmp_path}/scratch/work"
    with pytest.raises(GcsError, match="does not exist"):
        storage.add_combined_layers({**settings, "Layers": [{"Path": str(tmp_path / "missing")}]})
    with pytest.raises(GcsError, match="missing MountPath"):
        storage.add_vpmem({"DeviceNumber": 1})


def test_fake_sysfs_scsi_disk_never_appearing_times_out_cleanly(tmp_path: Path) -> None:
    with pytest.raises(GcsError, match="controller=0 lun=9 not found"):
        asyncio.run(storage.wait_for_scsi(0, 9, timeout=0.1, sysfs_root=str(tmp_path)))
