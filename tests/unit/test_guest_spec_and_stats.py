"""Pure parts of the guest agent: spec adjustments, cgroup stats parsing, device addressing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hcsshim.gcs.protocol import GcsError
from hcsshim.guest import spec, stats
from hcsshim.guest.syscalls import split_options
from hcsshim.hvsock import abi


def _spec(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "process": {"args": ["sh"]},
        "root": {"path": "rootfs"},
        "hostname": "h",
        "windows": {"x": 1},
        "mounts": [{"destination": "/dev/shm", "type": "tmpfs", "source": "shm"}],
        "annotations": annotations or {},
    }


def test_container_kind_from_cri_annotations() -> None:
    assert spec.container_kind(_spec(), "c") == ("standalone", "")
    sb = {spec.CONTAINER_TYPE: "sandbox", spec.SANDBOX_ID: "p"}
    assert spec.container_kind(_spec(sb), "p") == ("sandbox", "p")
    assert spec.container_kind(_spec({spec.CONTAINER_TYPE: "container", spec.SANDBOX_ID: "p"}), "c") == (
        "container",
        "p",
    )
    with pytest.raises(GcsError):
        spec.container_kind(_spec({spec.CONTAINER_TYPE: "container"}), "c")
    with pytest.raises(GcsError):
        spec.container_kind(_spec({spec.CONTAINER_TYPE: "bogus"}), "c")


def test_sandbox_spec_gets_pod_files_shm_and_cgroup(tmp_path: Path) -> None:
    out = spec.adjust(_spec(), "p", "sandbox", str(tmp_path), shm_dir="/x/shm", cgroup_parent="/t")
    assert "windows" not in out
    mounts = {m["destination"]: m for m in out["mounts"]}
    assert mounts["/dev/shm"]["source"] == "/x/shm"
    assert mounts["/etc/hosts"]["source"] == str(tmp_path / "hosts")
    assert (tmp_path / "hostname").read_text() == "h\n"
    assert "127.0.0.1 h" in (tmp_path / "hosts").read_text()
    assert {n["type"] for n in out["linux"]["namespaces"]} >= {"network", "ipc", "uts"}
    assert out["linux"]["cgroupsPath"] == "/t/pods/p/p"


def test_workload_joins_sandbox_namespaces(tmp_path: Path) -> None:
    pod = spec.PodInfo("p", str(tmp_path), 4242, "h")
    out = spec.adjust(_spec(), "c", "container", "", pod=pod, shm_dir=str(tmp_path / "shm"))
    ns = {n["type"]: n.get("path") for n in out["linux"]["namespaces"]}
    assert ns == {"network": "/proc/4242/ns/net", "ipc": "/proc/4242/ns/ipc", "uts": "/proc/4242/ns/uts"}
    assert "hostname" not in out
    assert out["linux"]["cgroupsPath"] == "/pods/p/c"


def test_spec_without_process_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(GcsError, match="no process"):
        spec.adjust({"root": {"path": "r"}}, "c", "standalone", str(tmp_path))


def test_cgroup_v2_and_v1_metrics_with_fake_cgroupfs(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    d = v2 / "pods" / "c"
    d.mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory pids\n")
    (d / "memory.current").write_text("4096\n")
    (d / "memory.max").write_text("max\n")
    (d / "memory.stat").write_text("anon 100\nfile 200\n")
    (d / "cpu.stat").write_text("usage_usec 5\nuser_usec 3\nsystem_usec 2\n")
    (d / "pids.current").write_text("2\n")
    m = stats.metrics("/pods/c", str(v2))
    assert m["memory"]["usage"]["usage"] == 4096 and m["memory"]["rss"] == 100
    assert m["cpu"]["usage"] == {"total": 5000, "user": 3000, "kernel": 2000}
    assert m["pids"]["current"] == 2

    v1 = tmp_path / "v1"
    (v1 / "memory" / "c").mkdir(parents=True)
    (v1 / "cpuacct" / "c").mkdir(parents=True)
    (v1 / "memory" / "c" / "memory.usage_in_bytes").write_text("8192\n")
    (v1 / "cpuacct" / "c" / "cpuacct.usage").write_text("77\n")
    m1 = stats.metrics("/c", str(v1))
    assert m1["memory"]["usage"]["usage"] == 8192 and m1["cpu"]["usage"]["total"] == 77


def test_device_addressing() -> None:
    assert abi.scsi_pci_address(2) == "00:12.0"
    assert abi.scsi_sysfs_glob(0, 3) == "/sys/bus/pci/devices/0000:00:10.0/virtio*/host*/target*/*:0:0:3"
    assert abi.plan9_share_path("4") == "/run/mounts/plan9/4"
    assert abi.vpmem_device(1) == "/dev/pmem1"
    with pytest.raises(ValueError):
        abi.scsi_pci_address(4)


def test_find_scsi_device_with_fake_sysfs(tmp_path: Path) -> None:
    dev = tmp_path / "sys/bus/pci/devices/0000:00:11.0/virtio3/host0/target0:0:0/0:0:0:5/block/sdc"
    dev.mkdir(parents=True)
    found = abi.find_scsi_device(1, 5, str(tmp_path))
    assert found is not None and found[1] == "/dev/sdc"
    assert abi.find_scsi_device(1, 6, str(tmp_path)) is None


def test_mount_option_split() -> None:
    assert split_options(["ro", "nosuid", "noload", "", "rw", "x=1"]) == (0x2, "noload,x=1")


def test_mount_tool_arguments_for_images_without_ctypes() -> None:
    from hcsshim.guest.syscalls import MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT, _mount_args

    assert _mount_args("/dev/sdb", "/m", "ext4", MS_RDONLY, "noload") == [
        "-t",
        "ext4",
        "-o",
        "ro,noload",
        "/dev/sdb",
        "/m",
    ]
    assert _mount_args("/a", "/b", "", MS_BIND | MS_REC, "") == ["-o", "rbind", "/a", "/b"]
    assert _mount_args("", "/b", "", MS_BIND | MS_REMOUNT | MS_RDONLY, "") == [
        "-o",
        "ro,bind,remount",
        "none",
        "/b",
    ]
