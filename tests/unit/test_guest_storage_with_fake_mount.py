"""Guest storage handlers with the mount syscall replaced by a recorder (no devices needed)."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from hcsshim.gcs.protocol import GcsError
from hcsshim.guest import storage
from hcsshim.guest.syscalls import MS_BIND, MS_RDONLY, MS_REMOUNT
from hcsshim.hvsock import abi
from hcsshim.hvsock.abi import NULL_CONTAINER_ID

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
    monkeypatch.setattr(abi, "PLAN9_ROOT", str(root))
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


def _fake_scsi_disk(
    tmp_path: Path, controller: int, lun: int, name: str, size: str | None
) -> tuple[str, Path]:
    """A fake sysfs tree for one SCSI disk (size None: no size file yet); returns (sysfs root, dev root)."""
    sysfs, dev_root = tmp_path / "sysfs", tmp_path / "devroot"
    slot = abi.SCSI_PCI_SLOT_BASE + controller
    disk = sysfs / f"sys/bus/pci/devices/0000:00:{slot:02x}.0/virtio3/host2/target2:0:0/2:0:0:{lun}"
    (disk / "block" / name).mkdir(parents=True)
    if size is not None:
        (disk / "block" / name / "size").write_text(size + "\n")
    (dev_root / "dev").mkdir(parents=True, exist_ok=True)
    return str(sysfs), dev_root


def test_fake_sysfs_scsi_disk_waits_for_size_and_open(tmp_path: Path) -> None:
    sysfs, dev_root = _fake_scsi_disk(tmp_path, 1, 3, "sdb", "0")
    (size_file,) = Path(sysfs).glob("sys/bus/pci/devices/*/virtio*/host*/target*/*/block/sdb/size")

    async def scenario() -> tuple[str, str]:
        waiter = asyncio.ensure_future(
            storage.wait_for_scsi(1, 3, timeout=5, sysfs_root=sysfs, dev_root=str(dev_root))
        )
        await asyncio.sleep(0.12)
        assert not waiter.done()  # no /dev node yet
        (dev_root / "dev" / "sdb").write_bytes(b"")
        await asyncio.sleep(0.12)
        assert not waiter.done()  # node there, but the disk has no capacity yet
        size_file.write_text("2048\n")
        return await asyncio.wait_for(waiter, 2)

    dev_dir, dev = asyncio.run(scenario())
    assert dev == "/dev/sdb" and dev_dir.endswith("2:0:0:3")


def test_fake_sysfs_scsi_disk_not_ready_names_controller_lun_and_reason(tmp_path: Path) -> None:
    sysfs, dev_root = _fake_scsi_disk(tmp_path, 2, 5, "sdc", "0")
    (dev_root / "dev" / "sdc").write_bytes(b"")
    with pytest.raises(GcsError, match=r"controller=2 lun=5 \(/dev/sdc\) not ready after 0.1 s: size 0"):
        asyncio.run(storage.wait_for_scsi(2, 5, timeout=0.1, sysfs_root=sysfs, dev_root=str(dev_root)))
    sysfs, dev_root = _fake_scsi_disk(tmp_path / "b", 0, 1, "sdd", "8")  # sized, but open fails
    with pytest.raises(GcsError, match=r"controller=0 lun=1 \(/dev/sdd\) not ready .*: no /dev/sdd"):
        asyncio.run(storage.wait_for_scsi(0, 1, timeout=0.1, sysfs_root=sysfs, dev_root=str(dev_root)))


def test_fake_mount_scsi_retries_enxio_then_mounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs, dev_root = _fake_scsi_disk(tmp_path, 0, 2, "sde", "2048")
    (dev_root / "dev" / "sde").write_bytes(b"")
    calls: Calls = []

    def flaky_mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
        calls.append((source, target, fstype, flags, data))
        if len(calls) < 3:
            raise OSError(errno.ENXIO, "No such device or address")

    monkeypatch.setattr(storage, "mount", flaky_mount)
    target = str(tmp_path / "m")
    settings = {"Controller": 0, "Lun": 2, "MountPath": target, "ReadOnly": True, "Options": ["noload"]}
    asyncio.run(storage.add_mapped_virtual_disk(settings, sysfs_root=sysfs, dev_root=str(dev_root)))
    assert calls == [("/dev/sde", target, "ext4", MS_RDONLY, "noload")] * 3

    def always_enxio(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
        raise OSError(errno.ENXIO, "No such device or address")

    monkeypatch.setattr(storage, "mount", always_enxio)
    monkeypatch.setattr(storage, "MOUNT_RETRIES", 2)
    with pytest.raises(OSError, match=r"controller=0 lun=2 \(/dev/sde\).*after 2 attempts"):
        asyncio.run(storage.add_mapped_virtual_disk(settings, sysfs_root=sysfs, dev_root=str(dev_root)))

    def eacces(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
        calls.append((source, target, fstype, flags, data))
        raise OSError(errno.EACCES, "Permission denied")

    calls.clear()
    monkeypatch.setattr(storage, "mount", eacces)
    with pytest.raises(OSError, match="Permission denied"):
        asyncio.run(storage.add_mapped_virtual_disk(settings, sysfs_root=sysfs, dev_root=str(dev_root)))
    assert len(calls) == 1  # other errors are not retried


def test_fake_mount_combined_layers_without_scratch(mounts: Calls, tmp_path: Path) -> None:
    top, base = tmp_path / "top", tmp_path / "base"
    top.mkdir()
    base.mkdir()
    rootfs = str(tmp_path / "rootfs")
    # One layer, no scratch: overlayfs would refuse (no upper dir, one lower dir); a read-only bind.
    storage.add_combined_layers({"ContainerRootPath": rootfs, "Layers": [{"Path": str(top)}]})
    assert mounts == [
        (str(top), rootfs, "", MS_BIND, ""),
        ("", rootfs, "", MS_BIND | MS_REMOUNT | MS_RDONLY, ""),
    ]
    mounts.clear()
    # Several layers, no scratch: a read-only overlay of lower dirs only.
    storage.add_combined_layers(
        {"ContainerRootPath": rootfs, "Layers": [{"Path": str(top)}, {"Path": str(base)}], "ScratchPath": ""}
    )
    assert mounts == [("overlay", rootfs, "overlay", MS_RDONLY, f"lowerdir={top}:{base}")]


def test_fake_module_gate_waits_for_marker_and_times_out(tmp_path: Path) -> None:
    marker = tmp_path / "modules.done"

    async def scenario() -> None:
        gate = storage.ModuleGate(str(marker), timeout=5, poll=0.01)
        waiter = asyncio.ensure_future(gate.wait("mount"))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        marker.write_text("")
        await asyncio.wait_for(waiter, 1)
        marker.unlink()
        await asyncio.wait_for(gate.wait("again"), 0.1)  # remembered: no second wait
        await asyncio.wait_for(storage.ModuleGate("").wait(), 0.1)  # no marker: nothing to wait for

    asyncio.run(scenario())
    with pytest.raises(
        GcsError, match=r"SCSI disk Add: kernel modules not loaded after 0.05 s .*modules.done"
    ):
        asyncio.run(storage.ModuleGate(str(marker), timeout=0.05, poll=0.01).wait("SCSI disk Add"))


def test_fake_host_create_and_modify_wait_for_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hcsshim.guest.runtime import Host

    gate = storage.ModuleGate(str(tmp_path / "never"), timeout=0.05, poll=0.01)
    host = Host(str(tmp_path / "root"), "runc", modules=gate)
    calls: list[str] = []
    monkeypatch.setattr(storage, "add_plan9", lambda settings: calls.append("plan9"))
    request = {"ResourceType": "MappedDirectory", "RequestType": "Add", "Settings": {"MountPath": "/x"}}
    with pytest.raises(GcsError, match="MappedDirectory Add: kernel modules not loaded"):
        asyncio.run(host.modify_settings(NULL_CONTAINER_ID, request))
    spec = {"SchemaVersion": {"Major": 2, "Minor": 1}, "OciSpecification": {"process": {}}}
    with pytest.raises(GcsError, match="create container c1: kernel modules not loaded"):
        asyncio.run(host.create_container("c1", spec))
    assert calls == []
    (tmp_path / "never").write_text("")
    asyncio.run(host.modify_settings(NULL_CONTAINER_ID, request))
    assert calls == ["plan9"]
