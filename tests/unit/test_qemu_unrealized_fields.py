"""The qemu backend refuses what it cannot realize, naming the field, and accepts what our shims send.

A ComputeSystem section or field QEMU has no way to honour (processor caps, storage QoS, vPCI, vSMB,
security settings, ...) fails with ErrNotSupported naming its path instead of being dropped; the
builders' defaults, and fields at their neutral values, pass. The same holds for the modify path.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from hcsshim.api.runhcs.options import runhcs_pb2
from hcsshim.hcs import ErrNotSupported, document_to_dict
from hcsshim.hcs.qemu.config import parse_document
from hcsshim.hcs.qemu.devices import DeviceSet
from hcsshim.hcs.qemu.nic import parse_nic_settings
from hcsshim.hvsock.abi import PLAN9_FLAG_RESTRICT_FILE_ACCESS, SCSI_CONTROLLER_GUIDS
from hcsshim.shim.host import build_uvm_document
from hcsshim.ttrpc.status import Code, from_exception
from tests.support.documents import minimal_lcow_document

GOLDEN = Path(__file__).parent.parent / "golden"
M = "io.microsoft.virtualmachine.computetopology."


@pytest.fixture
def boot(tmp_path: Path) -> Path:
    for name in ("kernel", "initrd.img", "rootfs.vhd"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def _shim_document(boot: Path, annotations: dict[str, str]) -> dict[str, Any]:
    """The UVM document the runhcs shim sends for a spec with these annotations."""
    options = runhcs_pb2.Options(boot_files_root_path=str(boot))
    spec = {"ociVersion": "1.1.0", "annotations": annotations, "linux": {}}
    return document_to_dict(build_uvm_document("containerd-shim-runhcs-v1", spec, options))


def _golden_annotations(case: str) -> dict[str, str]:
    spec = json.loads((GOLDEN / case / "config.json").read_text())
    return dict(spec.get("annotations") or {})


@pytest.mark.parametrize(
    "annotations",
    [
        {},
        _golden_annotations("ctr-run"),
        {
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-id": "p1",
            M + "memory.sizeinmb": "2048",
            M + "processor.count": "2",
            M + "memory.allowovercommit": "false",
        },
    ],
    ids=["no-annotations", "ctr-run", "cri-sandbox"],
)
def test_documents_the_shim_sends_are_accepted(boot: Path, annotations: dict[str, str]) -> None:
    cfg = parse_document(_shim_document(boot, annotations), "t")
    assert cfg.kernel == str(boot / "kernel")


def test_the_golden_pod_sandbox_asks_for_a_cpu_cap_and_is_refused_naming_it(boot: Path) -> None:
    doc = _shim_document(boot, _golden_annotations("k8s-pod-sandbox"))
    with pytest.raises(ErrNotSupported, match=r"VirtualMachine\.ComputeTopology\.Processor\.Limit") as info:
        parse_document(doc, "t")
    assert from_exception(info.value).code == Code.UNIMPLEMENTED


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    node = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


_VM = "VirtualMachine"
_DEV = "VirtualMachine.Devices"
_TOPO = "VirtualMachine.ComputeTopology"
_SCSI0 = f"{_DEV}.Scsi.{SCSI_CONTROLLER_GUIDS[0]}"

REFUSED: list[tuple[str, Any, str]] = [
    (
        f"{_DEV}.VirtualPci",
        {"gpu": {"Functions": [{"DeviceInstancePath": "PCIP\\VEN_10DE"}]}},
        f"{_DEV}.VirtualPci",
    ),
    (f"{_DEV}.VirtualSmb", {"Shares": [{"Name": "s", "Path": "/x"}]}, f"{_DEV}.VirtualSmb"),
    (f"{_DEV}.ComPorts", {"0": {"NamedPipe": "\\\\.\\pipe\\com1"}}, f"{_DEV}.ComPorts"),
    (f"{_DEV}.Keyboard", {}, f"{_DEV}.Keyboard"),
    (f"{_DEV}.GuestCrashReporting", {}, f"{_DEV}.GuestCrashReporting"),
    (f"{_DEV}.VideoMonitor", {"HorizontalResolution": 1024}, f"{_DEV}.VideoMonitor"),
    (
        f"{_DEV}.HvSocket.HvSocketConfig.ServiceTable",
        {"0000006d-facb-11e6-bd58-64006a7986d3": {"AllowWildcardBinds": True}},
        f"{_DEV}.HvSocket.HvSocketConfig.ServiceTable",
    ),
    (f"{_VM}.SecuritySettings", {"EnableTpm": True}, f"{_VM}.SecuritySettings"),
    (f"{_VM}.StorageQoS", {"IopsMaximum": 2000}, f"{_VM}.StorageQoS"),
    (f"{_VM}.GuestState", {"GuestStateFilePath": "/x.vmgs"}, f"{_VM}.GuestState"),
    (f"{_VM}.DebugOptions", {"BugcheckSavedStateFileName": "/x"}, f"{_VM}.DebugOptions"),
    (f"{_VM}.GuestConnection", {"UseVsock": True}, f"{_VM}.GuestConnection"),
    (f"{_VM}.RegistryChanges", {"AddValues": [{"Name": "x"}]}, f"{_VM}.RegistryChanges"),
    (f"{_VM}.ResourcePartitionId", "4a1c...", f"{_VM}.ResourcePartitionId"),
    (f"{_VM}.Chipset.FirmwareFile", {"Parameters": "x"}, f"{_VM}.Chipset.FirmwareFile"),
    (f"{_TOPO}.Processor.Limit", 50000, f"{_TOPO}.Processor.Limit"),
    (f"{_TOPO}.Processor.Weight", 200, f"{_TOPO}.Processor.Weight"),
    (f"{_TOPO}.Processor.Reservation", 10, f"{_TOPO}.Processor.Reservation"),
    (f"{_TOPO}.Processor.CpuGroup", {"Id": "8f0b7d1e"}, f"{_TOPO}.Processor.CpuGroup"),
    (f"{_TOPO}.Processor.NumaProcessorsSettings", {"count_per_node": {"max": 2}}, f"{_TOPO}.Processor"),
    (f"{_TOPO}.Numa", {"VirtualNodeCount": 2}, f"{_TOPO}.Numa"),
    (f"{_TOPO}.Memory.HighMmioBaseInMB", 131072, f"{_TOPO}.Memory.HighMmioBaseInMB"),
    (f"{_TOPO}.Memory.HighMmioGapInMB", 65536, f"{_TOPO}.Memory.HighMmioGapInMB"),
    (f"{_TOPO}.Memory.LowMmioGapInMB", 256, f"{_TOPO}.Memory.LowMmioGapInMB"),
    (f"{_TOPO}.Memory.EnableColdDiscardHint", True, f"{_TOPO}.Memory.EnableColdDiscardHint"),
    (f"{_TOPO}.Memory.EnableHotHint", True, f"{_TOPO}.Memory.EnableHotHint"),
    (f"{_TOPO}.Memory.Backing", "Physical", f"{_TOPO}.Memory.Backing='Physical'"),
    (f"{_TOPO}.Memory.SlitType", "Precomputed", f"{_TOPO}.Memory.SlitType"),
    (f"{_DEV}.VirtualPMem.Backing", "Physical", f"{_DEV}.VirtualPMem.Backing"),
    ("HostingSystemId", "uvm1", "HostingSystemId"),
    ("Container", {"Storage": {}}, "Container"),
    (f"{_VM}.Chipset.Uefi", {"BootThis": {"DeviceType": "VmbFs"}}, "Uefi"),
]


@pytest.mark.parametrize(("path", "value", "named"), REFUSED, ids=[p for p, _, _ in REFUSED])
def test_an_unrealizable_field_is_refused_naming_it(boot: Path, path: str, value: Any, named: str) -> None:
    doc = minimal_lcow_document("t", str(boot))
    _set(doc, path, value)
    with pytest.raises(ErrNotSupported) as info:
        parse_document(doc, "t")
    assert named in info.value.message


NEUTRAL: list[tuple[str, Any]] = [
    (f"{_DEV}.VirtualPci", {}),
    (f"{_DEV}.VirtualSmb", None),
    (f"{_VM}.StorageQoS", {}),
    (f"{_TOPO}.Processor.Limit", 0),
    (f"{_TOPO}.Processor.Weight", 0),
    (f"{_TOPO}.Processor.CpuGroup", None),
    (f"{_TOPO}.Memory.AllowOvercommit", False),
    (f"{_TOPO}.Memory.EnableDeferredCommit", True),
    (f"{_TOPO}.Memory.Backing", "Virtual"),
    (f"{_VM}.SecuritySettings", None),
    (f"{_VM}.Chipset.UseUtc", True),
    (f"{_DEV}.HvSocket.HvSocketConfig.ServiceTable", {}),
    (f"{_DEV}.HvSocket.HvSocketConfig.DefaultConnectSecurityDescriptor", "D:P(A;;FA;;;SY)"),
]


@pytest.mark.parametrize(("path", "value"), NEUTRAL, ids=[p for p, _ in NEUTRAL])
def test_a_neutral_or_realized_value_is_accepted(boot: Path, path: str, value: Any) -> None:
    doc = minimal_lcow_document("t", str(boot))
    _set(doc, path, value)
    parse_document(doc, "t")


def _with_vhd_root(boot: Path, attachment: dict[str, Any]) -> dict[str, Any]:
    doc = minimal_lcow_document("t", str(boot))
    doc["VirtualMachine"]["Devices"]["Scsi"][SCSI_CONTROLLER_GUIDS[0]] = {"Attachments": {"0": attachment}}
    return doc


@pytest.mark.parametrize(
    ("field", "value"),
    [("CachingMode", "ReadOnlyCached"), ("IgnoreFlushes", True), ("ExtensibleVirtualDiskType", "x")],
)
def test_a_scsi_attachment_option_qemu_does_not_realize_is_refused(
    boot: Path, field: str, value: Any
) -> None:
    att = {"Type": "VirtualDisk", "Path": str(boot / "rootfs.vhd"), "ReadOnly": True, field: value}
    with pytest.raises(ErrNotSupported, match=rf"{_SCSI0}\.Attachments\.0\.{field}"):
        parse_document(_with_vhd_root(boot, att), "t")


def test_plan9_share_fields_qemu_does_not_realize_are_refused(boot: Path) -> None:
    share = {"Name": "s0", "AccessName": "s0", "Path": str(boot), "Port": 564, "Flags": 0x4}
    doc = minimal_lcow_document("t", str(boot))
    doc["VirtualMachine"]["Devices"]["Plan9"] = {"Shares": [share]}
    assert parse_document(doc, "t").plan9[0].name == "s0"
    for change, named in [
        ({"AllowedFiles": ["a"]}, "Plan9.Shares[0].AllowedFiles"),
        ({"Flags": PLAN9_FLAG_RESTRICT_FILE_ACCESS}, "Plan9.Shares[0].Flags 0x80"),
        ({"AccessName": "other"}, "Plan9.Shares[0].AccessName"),
    ]:
        bad = copy.deepcopy(doc)
        bad["VirtualMachine"]["Devices"]["Plan9"]["Shares"][0].update(change)
        with pytest.raises(ErrNotSupported, match=named.replace("[", r"\[").replace("]", r"\]")):
            parse_document(bad, "t")


def test_a_vpmem_image_format_other_than_a_fixed_vhd_is_refused(boot: Path) -> None:
    doc = minimal_lcow_document("t", str(boot))
    pmem = {"HostPath": str(boot / "rootfs.vhd"), "ReadOnly": True, "ImageFormat": "Vhd1"}
    doc["VirtualMachine"]["Devices"]["VirtualPMem"] = {"Devices": {"0": pmem}, "MaximumCount": 4}
    assert parse_document(doc, "t").vpmem[0].read_only
    pmem["ImageFormat"] = "Vhdx"
    with pytest.raises(ErrNotSupported, match=r"VirtualPMem\.Devices\.0\.ImageFormat='Vhdx'"):
        parse_document(doc, "t")


# ---- the modify path --------------------------------------------------------------------------------


class _FakeSystem:
    """Just enough of a QemuComputeSystem for DeviceSet to validate a request before any QMP."""

    def __init__(self, boot: Path) -> None:
        self.id = "t"
        doc = minimal_lcow_document("t", str(boot))
        doc["VirtualMachine"]["Devices"]["VirtualPMem"] = {"MaximumCount": 4}
        self.cfg = parse_document(doc, "t")
        self.executed: list[str] = []

    async def execute(self, op: str, cmd: str, args: dict[str, Any] | None = None) -> Any:
        self.executed.append(cmd)
        return {}


@pytest.mark.parametrize(
    ("request_", "named"),
    [
        (
            {
                "ResourcePath": f"VirtualMachine/Devices/Scsi/{SCSI_CONTROLLER_GUIDS[0]}/Attachments/1",
                "RequestType": "Add",
                "Settings": {"Type": "VirtualDisk", "Path": "VHD", "CachingMode": "ReadOnlyCached"},
            },
            "ModifySettingRequest.Settings.CachingMode",
        ),
        (
            {
                "ResourcePath": "VirtualMachine/Devices/Plan9/Shares",
                "RequestType": "Add",
                "Settings": {"Name": "s1", "Path": "DIR", "AllowedFiles": ["f"]},
            },
            "ModifySettingRequest.Settings.AllowedFiles",
        ),
        (
            {
                "ResourcePath": "VirtualMachine/Devices/VirtualPMem/Devices/1",
                "RequestType": "Add",
                "Settings": {"HostPath": "VHD", "ImageFormat": "Vhdx"},
            },
            "ModifySettingRequest.Settings.ImageFormat",
        ),
        (
            {
                "ResourcePath": "VirtualMachine/Devices/Plan9/Shares",
                "RequestType": "Add",
                "Settings": {"Name": "s1", "Path": "DIR"},
                "GuestRequest": {"ResourceType": "MappedDirectory", "RequestType": "Add"},
            },
            "ModifySettingRequest.GuestRequest",
        ),
        (
            {"ResourcePath": "VirtualMachine/ComputeTopology/Processor/Limits", "Settings": {"Limit": 50000}},
            "ResourcePath 'VirtualMachine/ComputeTopology/Processor/Limits'",
        ),
    ],
    ids=["scsi-caching", "plan9-allowed-files", "vpmem-format", "guest-request", "processor-limits"],
)
def test_fake_system_modify_refuses_unrealizable_settings_before_touching_qemu(
    boot: Path, request_: dict[str, Any], named: str
) -> None:
    system = _FakeSystem(boot)
    devices = DeviceSet(system)  # type: ignore[arg-type]
    req = json.loads(
        json.dumps(request_)
        .replace('"VHD"', json.dumps(str(boot / "rootfs.vhd")))
        .replace('"DIR"', json.dumps(str(boot)))
    )
    with pytest.raises(ErrNotSupported) as info:
        asyncio.run(devices.modify(req))
    assert named in info.value.message
    assert system.executed == []


def test_nic_settings_qemu_does_not_realize_are_refused() -> None:
    tap = {"Name": "tap0", "NetNsPath": "/proc/1/ns/net"}
    good: dict[str, Any] = {
        "EndpointId": "e1",
        "MacAddress": "00-15-5d-01-02-03",
        "Tap": tap,
    }
    assert parse_nic_settings("t", "n1", good)[:2] == ("00:15:5d:01:02:03", "tap0")
    changes: list[tuple[dict[str, Any], str]] = [
        ({"IovSettings": {"OffloadWeight": 100}}, "NetworkAdapter.IovSettings"),
        ({"InstanceId": "x"}, "NetworkAdapter.InstanceId"),
        ({"Tap": {**tap, "Queues": 4}}, "NetworkAdapter.Tap.Queues"),
    ]
    for change, named in changes:
        with pytest.raises(ErrNotSupported, match=named.replace(".", r"\.")):
            parse_nic_settings("t", "n1", {**good, **change})
