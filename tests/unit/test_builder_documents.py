"""Builder details beyond parity: kernel command lines, boot modes, container and WCOW documents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hcsshim import annotations as an
from hcsshim.builder import (
    BootFiles,
    BuilderError,
    HostInfo,
    RuntimeOptions,
    build_lcow_container_document,
    build_lcow_uvm_v1,
    build_lcow_uvm_v2,
    build_wcow_hyperv_container_document,
    build_wcow_process_container_document,
)
from hcsshim.builder.kernel_args import KernelArgsInput, go_quote, kernel_args_v1, kernel_args_v2
from hcsshim.schema import Layer

HOST = HostInfo(logical_processor_count=4)
OPTS = RuntimeOptions(sandbox_platform="linux/amd64")


def test_v2_default_kernel_command_line_matches_upstream_example() -> None:
    doc, sandbox = build_lcow_uvm_v2(owner="o", boot_files=BootFiles("/boot"), host=HOST)
    direct = doc.to_dict()["VirtualMachine"]["Chipset"]["LinuxKernelDirect"]
    assert direct == {
        "KernelFilePath": "/boot/kernel",
        "KernelCmdLine": "root=/dev/sda ro rootwait init=/init initcall_blacklist=virtio_vsock_init "
        "8250_core.nr_uarts=0 panic=-1 quiet pci=off nr_cpus=2 brd.rd_nr=0 pmtmr=0 -- -e 1 "
        "/bin/vsockexec -e 109 /bin/gcs -v4 -log-format json -loglevel info",
    }
    assert sandbox.architecture == "amd64" and not sandbox.fully_physically_backed


def test_initrd_kernel_direct_sets_initrd_path() -> None:
    boot = BootFiles("/boot", frozenset({"kernel", "initrd.img"}))
    doc, _ = build_lcow_uvm_v2(owner="o", boot_files=boot, host=HOST)
    direct = doc.to_dict()["VirtualMachine"]["Chipset"]["LinuxKernelDirect"]
    assert direct["InitRdPath"] == "/boot/initrd.img"
    assert direct["KernelCmdLine"].startswith("initcall_blacklist=virtio_vsock_init ")
    assert "Attachments" not in json.dumps(doc.to_dict()["VirtualMachine"]["Devices"]["Scsi"])


def test_uefi_boot_entry() -> None:
    boot = BootFiles("/boot", frozenset({"kernel", "initrd.img"}))
    doc, _ = build_lcow_uvm_v2(
        owner="o", annotations={an.KERNEL_DIRECT_BOOT: "false"}, boot_files=boot, host=HOST
    )
    uefi = doc.to_dict()["VirtualMachine"]["Chipset"]["Uefi"]["BootThis"]
    assert (
        uefi["DevicePath"] == "\\kernel"
        and uefi["DeviceType"] == "VmbFs"
        and uefi["VmbFsRootPath"] == "/boot"
    )
    assert uefi["OptionalData"].startswith("initrd=/initrd.img initcall_blacklist")


def test_windows_boot_root_keeps_backslashes() -> None:
    boot = BootFiles("C:\\ContainerPlat\\LinuxBootFiles", frozenset({"kernel", "rootfs.vhd"}))
    doc, _ = build_lcow_uvm_v2(owner="o", boot_files=boot, host=HOST)
    assert doc.to_dict()["VirtualMachine"]["Chipset"]["LinuxKernelDirect"]["KernelFilePath"] == (
        "C:\\ContainerPlat\\LinuxBootFiles\\kernel"
    )


def test_boot_root_from_annotation_must_match_listing() -> None:
    with pytest.raises(BuilderError, match="listed"):
        build_lcow_uvm_v2(
            owner="o", annotations={an.BOOT_FILES_ROOT_PATH: "/other"}, boot_files=BootFiles("/boot")
        )


def test_kernel_args_variants() -> None:
    k = KernelArgsInput(rootfs_file="initrd.img", kernel_direct=True, processor_count=2, console=True)
    assert kernel_args_v1(k) == (
        " initcall_blacklist=virtio_vsock_init 8250_core.nr_uarts=1 8250_core.skip_txen_test=1 "
        'console=ttyS0,115200 pci=off nr_cpus=2 brd.rd_nr=0 pmtmr=0 -- -e 1 sh -c "/bin/vsockexec -e 109 '
        '/bin/gcs -v4 -log-format json -loglevel info & exec sh"'
    )
    assert kernel_args_v2(k) == (
        "initcall_blacklist=virtio_vsock_init 8250_core.nr_uarts=1 8250_core.skip_txen_test=1 "
        'console=ttyS0,115200 pci=off nr_cpus=2 brd.rd_nr=0 pmtmr=0 -- -e 1 sh -c"/bin/vsockexec -e 109 '
        '/bin/gcs -v4 -log-format json -loglevel info& exec sh"'
    )
    arm = KernelArgsInput(rootfs_file="initrd.img", kernel_direct=False, processor_count=1, arm64=True)
    assert kernel_args_v1(arm).startswith("initrd=/initrd.img initcall_blacklist=virtio_vsock_init panic=-1")
    verity = KernelArgsInput(
        rootfs_file="rootfs.vhd",
        kernel_direct=True,
        processor_count=1,
        dm_verity_mode=True,
        dm_verity_create_args='a "b"',
    )
    assert kernel_args_v2(verity).startswith('root=/dev/dm-0 dm-mod.create="a \\"b\\"" init=/init ')
    assert go_quote("x\ty") == '"x\\ty"'


def test_confidential_document() -> None:
    policy = "eyJhbGxvd19hbGwiOnRydWV9"
    doc, sandbox = build_lcow_uvm_v2(
        owner="o",
        annotations={an.LCOW_SECURITY_POLICY: policy},
        boot_files=BootFiles("/boot"),
        bundle_path="/b",
        host=HOST,
    )
    vm = doc.to_dict()["VirtualMachine"]
    assert doc.to_dict()["SchemaVersion"] == {"Major": 2, "Minor": 5}
    assert vm["Chipset"] == {
        "Uefi": {
            "ApplySecureBootTemplate": "Apply",
            "SecureBootTemplateId": "1734c6e8-3154-4dda-ba5f-a874cc483422",
        }
    }
    assert vm["SecuritySettings"]["Isolation"]["IsolationType"] == "SecureNestedPaging"
    assert vm["GuestState"] == {
        "GuestStateFilePath": "/b/kernel.vmgs",
        "GuestStateFileType": "FileMode",
        "ForceTransientState": True,
    }
    table = vm["Devices"]["HvSocket"]["HvSocketConfig"]["ServiceTable"]
    assert "40000000-facb-11e6-bd58-64006a7986d3" in table and "00000001-facb-11e6-bd58-64006a7986d3" in table
    assert sandbox.files_to_copy == [
        ("/boot/kernel.vmgs", "/b/kernel.vmgs"),
        ("/boot/rootfs.vhd", "/b/rootfs.vhd"),
    ]
    assert sandbox.enable_scratch_encryption and sandbox.fully_physically_backed
    assert (
        sandbox.confidential_config is not None
        and sandbox.confidential_config.security_policy_enforcer == "rego"
    )


def test_bad_annotation_error_names_key_and_value() -> None:
    with pytest.raises(an.AnnotationError) as info:
        build_lcow_uvm_v1(
            owner="o",
            spec={"linux": {}, "annotations": {an.PROCESSOR_COUNT: "two"}},
            options=OPTS,
            boot_files=BootFiles("/boot"),
        )
    assert info.value.key == an.PROCESSOR_COUNT and info.value.value == "two"


def test_shim_call_shapes() -> None:
    # The call shapes hcsshim.shim.host and hcsshim.uvm.document use.
    doc, _ = build_lcow_uvm_v2(owner="pod", annotations={}, boot_files_root="/var/cache/hcsshim/uvm")
    assert doc.owner == "pod"
    doc1, _ = build_lcow_uvm_v1(
        owner="pod", spec={"linux": {}}, annotations={}, options=RuntimeOptions(), boot_files=BootFiles("/r")
    )
    assert doc1.virtual_machine is not None
    cdoc = build_lcow_container_document("c1", {"root": {"path": "/run/gcs/c/c1/rootfs"}, "linux": {}})
    assert cdoc.to_dict()["OciSpecification"]["root"]["path"] == "/run/gcs/c/c1/rootfs"


def test_lcow_container_document_sanitizes() -> None:
    spec: dict[str, Any] = {
        "ociVersion": "1.1.0",
        "root": {"path": "rootfs"},
        "hooks": {"prestart": [{"path": "/x"}]},
        "annotations": {an.LCOW_PRIVILEGED: "true"},
        "linux": {
            "cgroupsPath": "/k8s/x",
            "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"},
            "resources": {"pids": {"limit": 5}, "cpu": {"shares": 10}, "memory": {"limit": 100}},
        },
        "windows": {
            "hyperv": {},
            "network": {"networkNamespace": "ns", "endpointList": ["e"]},
            "devices": [],
        },
    }
    doc = build_lcow_container_document(
        "c1", spec, pod_id="p1", scratch_dir="/run/mounts/scsi/0_1_0/scratch/p1/c1"
    )
    d = doc.to_dict()
    assert d["OciBundlePath"] == "/run/gcs/pods/p1/c1"
    assert d["ScratchDirPath"] == "/run/mounts/scsi/0_1_0/scratch/p1/c1"
    s = d["OciSpecification"]
    assert "hooks" not in s and "seccomp" not in s["linux"] and "cgroupsPath" not in s["linux"]
    assert s["linux"]["resources"] == {
        "cpu": {"shares": 10, "period": 100000, "quota": -1},
        "memory": {"limit": 100},
    }
    assert s["windows"] == {"network": {"networkNamespace": "ns"}}
    assert s["root"]["path"] == "/run/gcs/pods/p1/c1/rootfs"
    assert spec["linux"]["cgroupsPath"] == "/k8s/x"  # the input is not modified


def test_wcow_process_container_document() -> None:
    spec = {
        "hostname": "win",
        "root": {"path": "\\\\?\\Volume{abc}\\"},
        "mounts": [
            {"source": "C:\\data", "destination": "C:\\data", "options": ["ro"]},
            {"source": "\\\\.\\pipe\\docker_engine", "destination": "\\\\.\\pipe\\docker_engine"},
        ],
        "annotations": {an.CONTAINER_MEMORY_SIZE_IN_MB: "512"},
        "windows": {
            "resources": {"cpu": {"count": 64}, "storage": {"iops": 100}},
            "network": {"networkNamespace": "ns1", "DNSSearchList": ["a.local", "b.local"]},
        },
    }
    layers = [Layer(id="1", path="C:\\layers\\1")]
    doc = build_wcow_process_container_document("c", spec, owner="containerd", layers=layers, host=HOST)
    assert doc.to_json() == (
        '{"Owner":"containerd","SchemaVersion":{"Major":2,"Minor":1},"Container":{"GuestOs":{"HostName":"win"},'
        '"Storage":{"Layers":[{"Id":"1","Path":"C:\\\\layers\\\\1"}],"Path":"\\\\\\\\?\\\\Volume{abc}\\\\",'
        '"QoS":{"IopsMaximum":100}},'
        '"MappedDirectories":[{"HostPath":"C:\\\\data","ContainerPath":"C:\\\\data","ReadOnly":true}],'
        '"MappedPipes":[{"ContainerPipeName":"docker_engine","HostPath":"\\\\\\\\.\\\\pipe\\\\docker_engine"}],'
        '"Memory":{"SizeInMB":512},"Processor":{"Count":4},'
        '"Networking":{"DnsSearchList":"a.local,b.local","Namespace":"ns1"}},'
        '"ShouldTerminateOnLastHandleClosed":true}'
    )


def test_wcow_hyperv_container_document_and_cpu_rules() -> None:
    spec = {"windows": {"resources": {"cpu": {"maximum": 5000}}}}
    hosted = build_wcow_hyperv_container_document(
        "c", spec, uvm_processor_count=2, scale_cpu_limits_to_sandbox=True, host=HOST
    )
    assert hosted.to_json() == (
        '{"SchemaVersion":{"Major":2,"Minor":1},"Container":{"Storage":{},"Processor":{"Maximum":10000}}}'
    )
    with pytest.raises(BuilderError, match="mutually exclusive"):
        build_wcow_process_container_document(
            "c", {"windows": {"resources": {"cpu": {"count": 1, "shares": 2}}}}, owner="o"
        )
    with pytest.raises(BuilderError, match="Windows section"):
        build_wcow_process_container_document("c", {}, owner="o")
