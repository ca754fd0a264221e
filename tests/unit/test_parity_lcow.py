"""V1 (runhcs-v1) vs V2 (lcow-v2) LCOW document parity, after hcsshim's test/parity/vm.

Every case goes through both pipelines with the same annotations and runtime options; the two
ComputeSystem documents must be identical except for the fields a case lists in ``differs``, each
with the reason upstream's pipelines differ there (and the test checks those fields really differ,
so the allow-list cannot go stale).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from hcsshim import annotations as an
from hcsshim.builder import (
    BootFiles,
    BuilderError,
    HostInfo,
    RuntimeOptions,
    build_lcow_uvm_v1,
    build_lcow_uvm_v2,
)
from hcsshim.hvsock.abi import SCSI_CONTROLLER_GUIDS

BOOT = "/var/cache/hcsshim/uvm"
ALL_BOOT_FILES = frozenset({"kernel", "vmlinux", "initrd.img", "rootfs.vhd"})
HOST = HostInfo(logical_processor_count=16)
LOG_SERVICE = "0000006d-facb-11e6-bd58-64006a7986d3"
CMDLINE_UEFI = "VirtualMachine.Chipset.Uefi.BootThis.OptionalData"
CMDLINE_DIRECT = "VirtualMachine.Chipset.LinuxKernelDirect.KernelCmdLine"

P = "io.microsoft.virtualmachine.computetopology.processor."
M = "io.microsoft.virtualmachine.computetopology.memory."
QOS_IOPS = an.STORAGE_QOS_IOPS_MAXIMUM
QOS_BW = an.STORAGE_QOS_BANDWIDTH_MAXIMUM


@dataclass
class Case:
    name: str
    annotations: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)
    files: frozenset[str] = ALL_BOOT_FILES
    differs: dict[str, str] = field(default_factory=dict)
    devices: list[dict[str, str]] = field(default_factory=list)
    arch: str = "amd64"


def _grp(name: str, **extra: str) -> dict[str, str]:
    return {an.CPU_GROUP_ID: f"{name}-group", QOS_IOPS: "1000", QOS_BW: "100000", **extra}


# TestLCOWDocumentParity.
DOCUMENT_CASES = [
    Case(
        "CPU + memory + QoS + MMIO + CPUGroup",
        {
            P + "count": "2",
            P + "limit": "50000",
            P + "weight": "500",
            an.CPU_GROUP_ID: "test-cpu-group-id-123",
            M + "sizeinmb": "2048",
            M + "allowovercommit": "true",
            M + "enablecolddiscardhint": "true",
            M + "lowmmiogapinmb": "256",
            M + "highmmiobaseinmb": "1024",
            M + "highmmiogapinmb": "512",
            QOS_IOPS: "5000",
            QOS_BW: "1000000",
        },
    ),
    Case(
        "memory + MMIO + QoS (overcommit off)",
        {
            M + "sizeinmb": "4096",
            M + "allowovercommit": "false",
            M + "lowmmiogapinmb": "256",
            M + "highmmiobaseinmb": "1024",
            M + "highmmiogapinmb": "512",
            an.CPU_GROUP_ID: "test-cpu-group-id-456",
            QOS_IOPS: "3000",
            QOS_BW: "500000",
        },
    ),
    Case(
        "shim options CPU/memory + annotation QoS",
        {an.CPU_GROUP_ID: "test-cpu-group-id-789", QOS_IOPS: "5000", QOS_BW: "1000000"},
        {"vm_processor_count": 2, "vm_memory_size_in_mb": 2048},
    ),
]

# TestLCOWDocumentParityPermutations: all 26.
PERMUTATIONS = [
    Case("CPU: count only", _grp("count", **{P + "count": "2"})),
    Case("CPU: limit only", _grp("limit", **{P + "limit": "50000"})),
    Case("CPU: weight only", _grp("weight", **{P + "weight": "500"})),
    Case(
        "memory: overcommit disabled", _grp("oc", **{M + "sizeinmb": "2048", M + "allowovercommit": "false"})
    ),
    Case(
        "memory: cold discard hint",
        _grp("cd", **{M + "sizeinmb": "1024", M + "enablecolddiscardhint": "true"}),
    ),
    Case(
        "memory: deferred commit enabled",
        _grp(
            "dc",
            **{M + "allowovercommit": "true", M + "enabledeferredcommit": "true", M + "sizeinmb": "2048"},
        ),
    ),
    Case("memory: non-aligned size normalization", _grp("norm", **{M + "sizeinmb": "1000"})),
    Case(
        "boot: kernel direct + VHD rootfs",
        _grp("kd", **{an.KERNEL_DIRECT_BOOT: "true", an.PREFERRED_ROOTFS_TYPE: "vhd"}),
    ),
    Case("boot: UEFI", _grp("uefi", **{an.KERNEL_DIRECT_BOOT: "false"})),
    Case(
        "boot: UEFI + VHD rootfs",
        _grp("uefivhd", **{an.KERNEL_DIRECT_BOOT: "false", an.PREFERRED_ROOTFS_TYPE: "vhd"}),
    ),
    Case(
        "feature: scratch encryption + disable writable shares",
        _grp("enc", **{an.LCOW_ENCRYPTED_SCRATCH_DISK: "true", an.DISABLE_WRITABLE_FILE_SHARES: "true"}),
    ),
    Case(
        "feature: writable overlay dirs (VHD)",
        _grp(
            "wo",
            **{
                an.PREFERRED_ROOTFS_TYPE: "vhd",
                an.KERNEL_DIRECT_BOOT: "true",
                an.WRITABLE_OVERLAY_DIRS: "true",
            },
        ),
    ),
    Case("feature: policy-based routing", _grp("pbr", **{an.NETWORKING_POLICY_BASED_ROUTING: "true"})),
    Case(
        "HvSocket: extra vsock ports (non-SNP: ignored)", _grp("vsock", **{an.EXTRA_VSOCK_PORTS: "1234,5678"})
    ),
    Case(
        "kernel args: VPCI + boot options",
        _grp("kargs", **{an.VPCI_ENABLED: "true", an.KERNEL_BOOT_OPTIONS: "loglevel=7 debug"}),
    ),
    Case(
        "kernel args: time sync + dump + overlay",
        _grp(
            "ts",
            **{
                an.KERNEL_DIRECT_BOOT: "true",
                an.PREFERRED_ROOTFS_TYPE: "vhd",
                an.DISABLE_LCOW_TIME_SYNC_SERVICE: "true",
                an.CONTAINER_PROCESS_DUMP_LOCATION: "/tmp/dumps",
                an.WRITABLE_OVERLAY_DIRS: "true",
            },
        ),
    ),
    Case("kernel args: dump directory path", _grp("dump", **{an.DUMP_DIRECTORY_PATH: "C:\\dumps"})),
    Case(
        "cross: physically backed + scratch encryption",
        {
            an.CPU_GROUP_ID: "pb-group",
            an.FULLY_PHYSICALLY_BACKED: "true",
            an.LCOW_ENCRYPTED_SCRATCH_DISK: "true",
            M + "sizeinmb": "4096",
            QOS_IOPS: "5000",
            QOS_BW: "1000000",
        },
    ),
    Case(
        "cross: phys backed forces overcommit off",
        _grp(
            "pb2",
            **{an.FULLY_PHYSICALLY_BACKED: "true", M + "allowovercommit": "true", M + "sizeinmb": "2048"},
        ),
    ),
    Case(
        "cross: everything + VHD boot",
        {
            P + "count": "2",
            P + "limit": "80000",
            P + "weight": "300",
            an.CPU_GROUP_ID: "full-combo-group",
            M + "sizeinmb": "4096",
            M + "allowovercommit": "true",
            M + "enablecolddiscardhint": "true",
            M + "lowmmiogapinmb": "512",
            M + "highmmiobaseinmb": "2048",
            M + "highmmiogapinmb": "1024",
            QOS_IOPS: "10000",
            QOS_BW: "2000000",
            an.KERNEL_DIRECT_BOOT: "true",
            an.PREFERRED_ROOTFS_TYPE: "vhd",
        },
    ),
    Case(
        "override: annotation CPU over shim option",
        _grp("cpuov", **{P + "count": "2"}),
        {"vm_processor_count": 1},
    ),
    Case(
        "override: annotation memory over shim option",
        _grp("memov", **{M + "sizeinmb": "4096"}),
        {"vm_memory_size_in_mb": 1024},
    ),
    Case("shim: only shim defaults", _grp("shim"), {"vm_processor_count": 4, "vm_memory_size_in_mb": 4096}),
    Case(
        "shim: default container annotations merged",
        _grp("dca"),
        {"default_container_annotations": {P + "count": "2", M + "sizeinmb": "2048"}},
    ),
    Case(
        "regression: no CPUGroupID",
        {P + "count": "2", M + "sizeinmb": "2048", QOS_IOPS: "1000", QOS_BW: "100000"},
    ),
    Case(
        "regression: no StorageQoS",
        {P + "count": "2", M + "sizeinmb": "2048", an.CPU_GROUP_ID: "no-qos-group"},
    ),
]

# Beyond upstream's table: the inputs its tests never select (reference §3.7).
EXTRA = [
    Case(
        "initrd rootfs, kernel direct (no rootfs.vhd)",
        {},
        files=frozenset({"kernel", "initrd.img"}),
        differs={CMDLINE_DIRECT: "V1 concatenates strings: the empty rootfs argument leaves a leading space"},
    ),
    Case("initrd rootfs, UEFI", {an.KERNEL_DIRECT_BOOT: "false"}, files=frozenset({"kernel", "initrd.img"})),
    Case(
        "preferred initrd over a present rootfs.vhd",
        {an.PREFERRED_ROOTFS_TYPE: "initrd", an.KERNEL_DIRECT_BOOT: "false"},
    ),
    Case("compressed kernel only, kernel direct", {}, files=frozenset({"kernel", "rootfs.vhd"})),
    Case(
        "processor count clamped to host",
        {P + "count": "64"},
        differs={
            CMDLINE_DIRECT: "V1 writes the requested count into nr_cpus, V2 the count clamped to the host",
        },
    ),
    Case("kernel boot options + VPCI off", {an.KERNEL_BOOT_OPTIONS: "console=hvc0 systemd.unit=x"}),
    Case(
        "extra exec args",
        {an.EXTRA_LCOW_EXEC_ARGS: "-foo bar", an.DISABLE_LCOW_TIME_SYNC_SERVICE: "true"},
        differs={CMDLINE_DIRECT: "V1 puts extra exec args right after the base gcs args, V2 last"},
    ),
    Case(
        "scrub logs disabled",
        {},
        {"scrub_logs": False},
    ),
    Case(
        "scrub logs explicitly enabled",
        {},
        {"scrub_logs": True},
        differs={
            CMDLINE_DIRECT: "V2 passes -scrub-logs=true whenever the option is set; V1 only passes =false"
        },
    ),
    Case("log level option", {}, {"log_level": "debug"}),
    Case(
        "console pipe",
        {an.UVM_CONSOLE_PIPE: "\\\\.\\pipe\\vmconsole"},
        differs={CMDLINE_DIRECT: 'V1 wraps gcs as sh -c "<cmd> & exec sh", V2 as sh -c"<cmd>& exec sh"'},
    ),
    Case(
        "dm-verity VHD rootfs",
        {an.DM_VERITY_MODE: "true", an.DM_VERITY_CREATE_ARGS: "vroot,,,ro,0 1 verity 1"},
    ),
    Case(
        "vNUMA implicit",
        {
            an.NUMA_MAXIMUM_PROCESSORS_PER_NODE: "2",
            an.NUMA_MAXIMUM_MEMORY_SIZE_PER_NODE: "512",
            M + "allowovercommit": "false",
        },
    ),
    Case(
        "vNUMA explicit",
        {
            P + "count": "4",
            M + "sizeinmb": "2048",
            M + "allowovercommit": "false",
            an.NUMA_MAPPED_PHYSICAL_NODES: "0,1",
            an.NUMA_COUNT_OF_PROCESSORS: "2,2",
            an.NUMA_COUNT_OF_MEMORY_BLOCKS: "1024,1024",
        },
    ),
    Case(
        "HvSocket service table annotation",
        {
            an.UVM_HV_SOCKET_CONFIG_PREFIX
            + LOG_SERVICE: '{"AllowWildcardBinds":true,"BindSecurityDescriptor":"x"}'
        },
    ),
    Case("resource partition", {an.RESOURCE_PARTITION_ID: "7A3C8C2B-1D5A-4F2E-9B0C-6E8F1A2B3C4D"}),
    Case(
        "security policy without security hardware",
        {an.LCOW_SECURITY_POLICY: "eyJhbGxvd19hbGwiOnRydWV9", an.NO_SECURITY_HARDWARE: "true"},
    ),
    Case(
        "confidential (SNP)",
        {
            an.LCOW_SECURITY_POLICY: "eyJhbGxvd19hbGwiOnRydWV9",
            an.EXTRA_VSOCK_PORTS: "1234",
            an.LCOW_HCL_ENABLED: "true",
        },
    ),
    Case(
        "live migration enabled",
        {an.MIGRATION_SUPPORT_ENABLED: "true"},
        differs={
            "VirtualMachine.Devices.Plan9": "V2 omits Plan9 from live-migratable VMs; V1 knows no migration",
            CMDLINE_DIRECT: "V2 runs vsockexec -r (reconnect) for live migration",
        },
    ),
    Case(
        "disable-unsafe-operations expansion",
        {an.DISABLE_UNSAFE_OPERATIONS: "true"},
    ),
    Case(
        "assigned vPCI devices",
        {an.VPCI_ENABLED: "true"},
        devices=[
            {"id": "PCIP\\VEN_10DE&DEV_13F2\\3&2411E6FE&0&00", "idType": "vpci-instance-id"},
            {"id": "PCIP\\VEN_8086&DEV_1521/2", "idType": "vpci"},
            {"id": "ignored", "idType": "class"},
        ],
    ),
    Case(
        "arm64 (UEFI, no vPMem)",
        {},
        arch="arm64",
        differs={
            CMDLINE_UEFI: "V1 drops 8250_core.nr_uarts=0 on arm64, V2 keeps it",
        },
    ),
]


def _options(case: Case, files: frozenset[str] | None = None) -> RuntimeOptions:
    o = RuntimeOptions(sandbox_platform="linux/amd64", boot_files_root_path=BOOT)
    for key, value in case.options.items():
        setattr(o, key, value)
    return o


def _build_both(case: Case, *, force_no_vpmem: bool = True) -> tuple[Any, Any]:
    boot = BootFiles(BOOT, case.files)
    host = HostInfo(logical_processor_count=HOST.logical_processor_count, arch=case.arch)
    v1_ann = dict(case.annotations)
    if force_no_vpmem:
        v1_ann[an.VPMEM_COUNT] = "0"
    spec = {"linux": {}, "windows": {"hyperv": {}, "devices": case.devices}, "annotations": v1_ann}
    legacy = build_lcow_uvm_v1(
        owner="test-owner", spec=spec, options=_options(case), boot_files=boot, host=host, bundle_path="/b"
    )
    v2_options = _options(case)
    v2_options.sandbox_platform = f"linux/{case.arch}"
    v2 = build_lcow_uvm_v2(
        owner="test-owner",
        annotations=dict(case.annotations),
        options=v2_options,
        boot_files=boot,
        devices=case.devices,
        host=host,
        bundle_path="/b",
    )
    return legacy, v2


def _pop(doc: dict[str, Any], path: str) -> Any:
    *parents, leaf = path.split(".")
    node = doc
    for p in parents:
        node = node.get(p, {})
    return node.pop(leaf, None)


def _assert_parity(case: Case) -> None:
    (legacy, _), (v2, _) = _build_both(case)
    a, b = legacy.to_dict(), v2.to_dict()
    for path, reason in case.differs.items():
        assert _pop(a, path) != _pop(b, path), f"{path} is allow-listed ({reason}) but does not differ"
    assert a == b, f"{case.name}:\nV1 {legacy.to_json(indent=2)}\nV2 {v2.to_json(indent=2)}"


@pytest.mark.parametrize("case", DOCUMENT_CASES, ids=lambda c: c.name)
def test_lcow_document_parity(case: Case) -> None:
    _assert_parity(case)


@pytest.mark.parametrize("case", PERMUTATIONS, ids=lambda c: c.name)
def test_lcow_document_parity_permutations(case: Case) -> None:
    _assert_parity(case)


@pytest.mark.parametrize("case", EXTRA, ids=lambda c: c.name)
def test_lcow_document_parity_extra(case: Case) -> None:
    _assert_parity(case)


def test_confidential_case_is_really_confidential() -> None:
    case = next(c for c in EXTRA if c.name == "confidential (SNP)")
    (legacy, _), (v2, _) = _build_both(case)
    for doc in (legacy, v2):
        d = doc.to_dict()
        assert d["SchemaVersion"] == {"Major": 2, "Minor": 5}
        assert d["VirtualMachine"]["SecuritySettings"]["Isolation"]["HclEnabled"] is True
        assert "AllowOvercommit" not in d["VirtualMachine"]["ComputeTopology"]["Memory"]


def test_vpci_case_assigns_two_devices() -> None:
    case = next(c for c in EXTRA if c.name == "assigned vPCI devices")
    (legacy, _), _ = _build_both(case)
    vpci = legacy.to_dict()["VirtualMachine"]["Devices"]["VirtualPci"]
    functions = sorted(f["Functions"][0].get("VirtualFunction", 0) for f in vpci.values())
    assert functions == [0, 2]


def test_permutation_table_is_at_least_upstreams() -> None:
    assert len(PERMUTATIONS) == 26
    assert len(DOCUMENT_CASES) == 3


ERROR_CASES = [
    Case("invalid boot files path", {}, files=frozenset()),
    Case(
        "deferred commit on physically backed memory",
        {M + "allowovercommit": "false", M + "enabledeferredcommit": "true", M + "sizeinmb": "2048"},
    ),
    Case("bad boolean annotation", {M + "allowovercommit": "maybe"}),
    Case(
        "preferred rootfs not present",
        {an.PREFERRED_ROOTFS_TYPE: "vhd"},
        files=frozenset({"kernel", "initrd.img"}),
    ),
    Case("dm-verity without create args", {an.DM_VERITY_MODE: "true"}),
    Case(
        "resource partition with cpu group",
        {an.RESOURCE_PARTITION_ID: str(SCSI_CONTROLLER_GUIDS[0]), an.CPU_GROUP_ID: "g"},
    ),
    Case(
        "vNUMA with overcommit",
        {
            an.NUMA_MAPPED_PHYSICAL_NODES: "0",
            an.NUMA_COUNT_OF_PROCESSORS: "2",
            an.NUMA_COUNT_OF_MEMORY_BLOCKS: "1024",
        },
    ),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c.name)
def test_lcow_error_path_parity(case: Case) -> None:
    with pytest.raises((BuilderError, ValueError)):
        _build_both(case)
    boot = BootFiles(BOOT, case.files)
    v1_ann = {**case.annotations, an.VPMEM_COUNT: "0"}
    with pytest.raises(ValueError):
        build_lcow_uvm_v1(
            owner="o",
            spec={"linux": {}, "annotations": v1_ann},
            options=_options(case),
            boot_files=boot,
            host=HOST,
        )
    with pytest.raises(ValueError):
        build_lcow_uvm_v2(
            owner="o", annotations=case.annotations, options=_options(case), boot_files=boot, host=HOST
        )


SANDBOX_OPTION_CASES = [
    Case("default config", {}),
    Case("scratch encryption enabled", {an.LCOW_ENCRYPTED_SCRATCH_DISK: "true"}),
    Case("policy-based routing enabled", {an.NETWORKING_POLICY_BASED_ROUTING: "true"}),
    Case("fully physically backed", {an.FULLY_PHYSICALLY_BACKED: "true", M + "sizeinmb": "2048"}),
    Case("disable writable file shares", {an.DISABLE_WRITABLE_FILE_SHARES: "true"}),
    Case(
        "all four together",
        {
            an.LCOW_ENCRYPTED_SCRATCH_DISK: "true",
            an.NETWORKING_POLICY_BASED_ROUTING: "true",
            an.FULLY_PHYSICALLY_BACKED: "true",
            an.DISABLE_WRITABLE_FILE_SHARES: "true",
            M + "sizeinmb": "2048",
        },
    ),
    Case(
        "security policy implies scratch encryption",
        {an.LCOW_SECURITY_POLICY: "e30=", an.NO_SECURITY_HARDWARE: "1"},
    ),
]


@pytest.mark.parametrize("case", SANDBOX_OPTION_CASES, ids=lambda c: c.name)
def test_lcow_sandbox_options_field_parity(case: Case) -> None:
    # Upstream's field-parity tests do not force vPMem off: V1 keeps its 64 devices, V2 has none.
    (_, s1), (_, s2) = _build_both(case, force_no_vpmem=False)
    assert s1.no_writable_file_shares == s2.no_writable_file_shares
    assert s1.enable_scratch_encryption == s2.enable_scratch_encryption
    assert s1.policy_based_routing == s2.policy_based_routing
    assert s1.fully_physically_backed == s2.fully_physically_backed
    assert (s1.confidential_config is None) == (s2.confidential_config is None)


# Where the pipelines deliberately do not meet: V1-only features, checked on their own.


def test_v1_vpmem_rootfs_and_single_scsi_controller() -> None:
    boot = BootFiles(BOOT, ALL_BOOT_FILES)
    doc, _ = build_lcow_uvm_v1(
        owner="o", spec={"linux": {}}, options=_options(Case("", {})), boot_files=boot, host=HOST
    )
    devices = doc.to_dict()["VirtualMachine"]["Devices"]
    assert list(devices["Scsi"]) == [SCSI_CONTROLLER_GUIDS[0]]
    assert devices["VirtualPMem"] == {
        "Devices": {"0": {"HostPath": f"{BOOT}/rootfs.vhd", "ReadOnly": True, "ImageFormat": "Vhd1"}},
        "MaximumCount": 64,
        "MaximumSizeBytes": 4 * 1024**3,
    }
    cmdline = doc.to_dict()["VirtualMachine"]["Chipset"]["LinuxKernelDirect"]["KernelCmdLine"]
    assert cmdline.startswith("root=/dev/pmem0 ro rootwait init=/init ")


@pytest.mark.parametrize("count", ["1", "8", "128"])
def test_v2_rejects_vpmem_and_v1_accepts_it(count: str) -> None:
    boot = BootFiles(BOOT, ALL_BOOT_FILES)
    doc, _ = build_lcow_uvm_v1(
        owner="o",
        spec={"linux": {}, "annotations": {an.VPMEM_COUNT: count}},
        options=_options(Case("", {})),
        boot_files=boot,
        host=HOST,
    )
    assert doc.to_dict()["VirtualMachine"]["Devices"]["VirtualPMem"]["MaximumCount"] == int(count)
    with pytest.raises(an.AnnotationError, match="vPMem"):
        build_lcow_uvm_v2(
            owner="o", annotations={an.VPMEM_COUNT: count}, options=_options(Case("", {})), boot_files=boot
        )


def test_v1_vpmem_count_over_maximum_is_an_error() -> None:
    with pytest.raises(BuilderError, match="128"):
        build_lcow_uvm_v1(
            owner="o",
            spec={"linux": {}, "annotations": {an.VPMEM_COUNT: "129"}},
            options=_options(Case("", {})),
            boot_files=BootFiles(BOOT, ALL_BOOT_FILES),
            host=HOST,
        )


def test_v1_windows_resources_fallbacks() -> None:
    spec = {
        "linux": {},
        "annotations": {an.VPMEM_COUNT: "0"},
        "windows": {
            "resources": {
                "cpu": {"count": 3, "maximum": 7000, "shares": 9},
                "memory": {"limit": 3 * 1024**3},
                "storage": {"iops": 77, "bps": 88},
            }
        },
    }
    doc, _ = build_lcow_uvm_v1(
        owner="o",
        spec=spec,
        options=_options(Case("", {})),
        boot_files=BootFiles(BOOT, ALL_BOOT_FILES),
        host=HOST,
    )
    vm = doc.to_dict()["VirtualMachine"]
    assert vm["ComputeTopology"]["Processor"] == {"Count": 3, "Limit": 7000, "Weight": 9}
    assert vm["ComputeTopology"]["Memory"]["SizeInMB"] == 3072
    assert vm["StorageQoS"] == {"IopsMaximum": 77, "BandwidthMaximum": 88}


@pytest.mark.parametrize("key", sorted(an.V2_REJECTED))
def test_v2_rejects_what_upstream_rejects(key: str) -> None:
    with pytest.raises(an.AnnotationError) as info:
        build_lcow_uvm_v2(owner="o", annotations={key: "x"}, boot_files=BootFiles(BOOT, ALL_BOOT_FILES))
    assert info.value.key == key


def test_v2_rejects_unsupported_platform() -> None:
    with pytest.raises(BuilderError, match="platform"):
        build_lcow_uvm_v2(owner="o", options=RuntimeOptions(sandbox_platform="windows/amd64"))
