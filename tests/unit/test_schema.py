"""schema2 JSON: Go field names and order, omitempty, sorted maps, byte-exact round trips, clean errors."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hcsshim.schema as S
from hcsshim.schema import SchemaError, SchemaObject

TAGS: dict[str, list[str]] = json.loads(
    (Path(__file__).parent.parent / "golden" / "schema2_json_tags.json").read_text()
)["types"]
GO_NAME = {"GuestModificationRequest": "types.ModificationRequest"}
# Go fields we do not model (no LCOW/WCOW document we build uses them), stated so additions show up.
NOT_MODELLED = {"Devices": {"FlexibleIov", "SharedMemory"}, "VirtualMachine": {"MigrationOptions"}}
NO_GO_TYPE = {"Empty", "LCOWHostedContainerSettings"}


def _schema_classes() -> list[type[SchemaObject]]:
    out = []
    for name in S.__all__:
        obj = getattr(S, name)
        if isinstance(obj, type) and issubclass(obj, SchemaObject) and obj is not SchemaObject:
            out.append(obj)
    return out


CLASSES = _schema_classes()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_json_keys_are_go_json_tags_in_go_order(cls: type[SchemaObject]) -> None:
    if cls.__name__ in NO_GO_TYPE:
        return
    go = TAGS[GO_NAME.get(cls.__name__, cls.__name__)]
    ours = list(cls.json_keys())
    assert [k for k in go if k in ours] == ours, "keys out of Go order or not Go tags"
    assert set(go) - set(ours) == NOT_MODELLED.get(cls.__name__, set())


def test_lcow_container_settings_keys() -> None:
    # vmHostedContainerSettingsV2 (internal/controller/linuxcontainer/document.go).
    assert S.LCOWHostedContainerSettings.json_keys() == (
        "SchemaVersion",
        "OciBundlePath",
        "OciSpecification",
        "ScratchDirPath",
    )


def test_quirky_names() -> None:
    mem = S.VirtualMachineMemory(low_mmio_gap_in_mb=1, high_mmio_base_in_mb=2, high_mmio_gap_in_mb=3)
    assert mem.to_json() == '{"LowMmioGapInMB":1,"HighMmioBaseInMB":2,"HighMmioGapInMB":3}'
    numa = S.NumaProcessors(count_per_node=S.Range(max=4))
    assert numa.to_json() == '{"count_per_node":{"max":4}}'
    assert S.Attachment(type="VirtualDisk").to_json() == '{"Type":"VirtualDisk"}'


def test_omitempty_rules() -> None:
    devices = S.Devices(plan9=S.Plan9(), scsi={"b": S.Scsi(), "a": S.Scsi()})
    # Empty nested objects behind pointers stay; map keys are sorted; zero scalars go.
    assert devices.to_json() == '{"Scsi":{"a":{},"b":{}},"Plan9":{}}'
    assert S.IsolationSettings(hcl_enabled=False).to_json() == '{"HclEnabled":false}'
    assert S.IsolationSettings().to_json() == "{}"


def test_go_html_escaping() -> None:
    assert S.LinuxKernelDirect(kernel_cmd_line="a<b>&c").to_json() == (
        '{"KernelCmdLine":"a\\u003cb\\u003e\\u0026c"}'
    )
    text = '{"KernelCmdLine":"a\\u003cb\\u003e\\u0026c é"}'
    assert S.LinuxKernelDirect.from_json(text).to_json() == text


def test_modify_request_with_guest_request() -> None:
    req = S.ModifySettingRequest(
        resource_path="VirtualMachine/Devices/Scsi/x/Attachments/1",
        request_type="Add",
        settings=S.Attachment(type="VirtualDisk", path="/d.vhdx"),
        guest_request=S.GuestModificationRequest(
            resource_type="MappedVirtualDisk",
            request_type="Add",
            settings=S.LCOWMappedVirtualDisk(mount_path="/run/mounts/scsi/0_1_0", lun=1, controller=0),
        ),
    )
    assert req.to_json() == (
        '{"ResourcePath":"VirtualMachine/Devices/Scsi/x/Attachments/1","RequestType":"Add",'
        '"Settings":{"Type":"VirtualDisk","Path":"/d.vhdx"},'
        '"GuestRequest":{"RequestType":"Add","ResourceType":"MappedVirtualDisk",'
        '"Settings":{"MountPath":"/run/mounts/scsi/0_1_0","Lun":1}}}'
    )
    back = S.ModifySettingRequest.from_json(req.to_json())
    assert back.to_json() == req.to_json()


def test_container_constraints_always_write_both() -> None:
    assert S.LCOWContainerConstraints().to_json() == '{"Windows":{},"Linux":{}}'


# -- hypothesis: round trips over generated documents -------------------------------------------------

_text = st.text(max_size=12)
_u32 = st.integers(0, 2**32 - 1)
_u64 = st.integers(0, 2**64 - 1)

_attachment = st.builds(
    S.Attachment, type=st.sampled_from(["", "VirtualDisk", "PassThru"]), path=_text, read_only=st.booleans()
)
_scsi = st.builds(
    S.Scsi, attachments=st.dictionaries(st.sampled_from(["0", "1", "63"]), _attachment, max_size=3)
)
_memory = st.builds(
    S.VirtualMachineMemory,
    size_in_mb=_u64,
    allow_overcommit=st.booleans(),
    low_mmio_gap_in_mb=_u64,
    slit_type=st.none() | st.just("FirmwareFallbackMeasured"),
)
_processor = st.builds(
    S.VirtualMachineProcessor,
    count=_u32,
    limit=_u64,
    weight=_u64,
    cpu_group=st.none() | st.builds(S.CpuGroup, id=_text),
    numa_processors_settings=st.none()
    | st.builds(S.NumaProcessors, count_per_node=st.builds(S.Range, max=_u32)),
)
_chipset = st.builds(
    S.Chipset,
    linux_kernel_direct=st.none()
    | st.builds(S.LinuxKernelDirect, kernel_file_path=_text, init_rd_path=_text, kernel_cmd_line=_text),
    uefi=st.none() | st.builds(S.Uefi, boot_this=st.none() | st.builds(S.UefiBootEntry, device_path=_text)),
)
_devices = st.builds(
    S.Devices,
    scsi=st.dictionaries(_text, _scsi, max_size=4),
    plan9=st.none()
    | st.builds(
        S.Plan9,
        shares=st.lists(st.builds(S.Plan9Share, name=_text, port=st.integers(0, 2**31 - 1)), max_size=2),
    ),
    hv_socket=st.none()
    | st.builds(
        S.HvSocket2,
        hv_socket_config=st.builds(
            S.HvSocketSystemConfig,
            default_bind_security_descriptor=_text,
            service_table=st.dictionaries(
                _text, st.builds(S.HvSocketServiceConfig, allow_wildcard_binds=st.booleans()), max_size=2
            ),
        ),
    ),
    com_ports=st.dictionaries(st.just("0"), st.builds(S.ComPort, named_pipe=_text), max_size=1),
    virtual_pmem=st.none() | st.builds(S.VirtualPMemController, maximum_count=_u32),
)
_vm = st.builds(
    S.VirtualMachine,
    stop_on_reset=st.booleans(),
    chipset=st.none() | _chipset,
    compute_topology=st.none()
    | st.builds(S.Topology, memory=st.none() | _memory, processor=st.none() | _processor),
    devices=st.none() | _devices,
    storage_qos=st.none() | st.builds(S.StorageQoS, iops_maximum=st.integers(-(2**31), 2**31 - 1)),
    security_settings=st.none()
    | st.builds(
        S.SecuritySettings, isolation=st.builds(S.IsolationSettings, hcl_enabled=st.none() | st.booleans())
    ),
)
_compute_system = st.builds(
    S.ComputeSystem,
    owner=_text,
    schema_version=st.none() | st.builds(S.Version, major=st.integers(0, 3), minor=st.integers(0, 9)),
    virtual_machine=st.none() | _vm,
    should_terminate_on_last_handle_closed=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(_compute_system)
def test_round_trip_is_byte_exact(doc: S.ComputeSystem) -> None:
    text = doc.to_json()
    again = S.ComputeSystem.from_json(text)
    assert again.to_json() == text
    assert S.ComputeSystem.from_json(doc.to_json(indent=2)).to_json() == text


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_keys = st.sampled_from(
    [
        "VirtualMachine",
        "Devices",
        "Scsi",
        "Attachments",
        "ComputeTopology",
        "Memory",
        "SizeInMB",
        "Chipset",
        "Owner",
        "Plan9",
        "Shares",
        "HvSocket",
    ]
)
_doc_like = st.recursive(
    _json,
    lambda inner: st.dictionaries(_keys, inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(_doc_like)
def test_garbage_raises_schema_error_only(data: Any) -> None:
    for cls in (S.ComputeSystem, S.ModifySettingRequest, S.Properties, S.Container):
        try:
            obj = cls.from_dict(data)
        except SchemaError as exc:
            assert str(exc)
            continue
        assert cls.from_json(obj.to_json()).to_json() == obj.to_json()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_from_json_on_junk_bytes(blob: bytes) -> None:
    with contextlib.suppress(SchemaError):
        S.ComputeSystem.from_json(blob)


def test_error_names_the_field() -> None:
    bad = {"VirtualMachine": {"ComputeTopology": {"Processor": {"Count": -1}}}}
    with pytest.raises(SchemaError) as info:
        S.ComputeSystem.from_dict(bad)
    assert info.value.path == "VirtualMachine.ComputeTopology.Processor.Count"
    with pytest.raises(SchemaError, match=r"Devices\.Scsi\.x"):
        S.ComputeSystem.from_dict({"VirtualMachine": {"Devices": {"Scsi": {"x": []}}}})


def test_properties_round_trip() -> None:
    text = (
        '{"Id":"pod@vm","SystemType":"VirtualMachine","State":"Running",'
        '"Statistics":{"Timestamp":"2026-01-01T00:00:00Z","Uptime100ns":5,"Processor":{"TotalRuntime100ns":9}},'
        '"ProcessList":[{"ProcessId":4,"ImageName":"init"}],'
        '"GuestConnectionInfo":{"SupportedSchemaVersions":[{"Major":2,"Minor":1}],"ProtocolVersion":4}}'
    )
    assert S.Properties.from_json(text).to_json() == text
    query = S.PropertyQuery(property_types=["Statistics", "Memory"])
    assert query.to_json() == '{"PropertyTypes":["Statistics","Memory"]}'
