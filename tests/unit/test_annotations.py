"""Annotation keys and typed parsing: bad values name the key and the value."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hcsshim.annotations as an
from hcsshim.annotations import AnnotationError


def test_keys_match_upstream_spelling() -> None:
    assert an.MEMORY_SIZE_IN_MB == "io.microsoft.virtualmachine.computetopology.memory.sizeinmb"
    assert an.PROCESSOR_COUNT == "io.microsoft.virtualmachine.computetopology.processor.count"
    assert an.BOOT_FILES_ROOT_PATH == "io.microsoft.virtualmachine.bootfilesrootpath"
    assert an.KERNEL_DIRECT_BOOT == "io.microsoft.virtualmachine.lcow.kerneldirectboot"
    assert an.PREFERRED_ROOTFS_TYPE == "io.microsoft.virtualmachine.lcow.preferredrootfstype"
    assert an.VPMEM_COUNT == "io.microsoft.virtualmachine.devices.virtualpmem.maximumcount"
    assert an.VPMEM_SIZE == "io.microsoft.virtualmachine.devices.virtualpmem.maximumsizebytes"
    assert an.KERNEL_BOOT_OPTIONS == "io.microsoft.virtualmachine.lcow.kernelbootoptions"
    assert an.LCOW_SECURITY_POLICY == "io.microsoft.virtualmachine.lcow.securitypolicy"
    assert an.KUBERNETES_CONTAINER_TYPE == "io.kubernetes.cri.container-type"
    assert an.KUBERNETES_SANDBOX_ID == "io.kubernetes.cri.sandbox-id"
    assert an.VSMB_NO_DIRECT_MAP == "io.microsoft.virtualmachine.wcow.virtualSMB.nodirectmap"


@pytest.mark.parametrize("value", ["1", "t", "T", "TRUE", "true", "True"])
def test_bool_true_spellings(value: str) -> None:
    assert an.parse_bool({"k": value}, "k", False) is True


@pytest.mark.parametrize("value", ["0", "f", "F", "FALSE", "false", "False"])
def test_bool_false_spellings(value: str) -> None:
    assert an.parse_bool({"k": value}, "k", True) is False


def test_defaults_when_absent() -> None:
    assert an.parse_bool({}, "k", True) is True
    assert an.parse_uint64({}, "k", 7) == 7
    assert an.parse_optional_bool({}, "k") is None
    assert an.parse_csv_uint32({}, "k") == []
    assert an.parse_guid({}, "k") is None


@pytest.mark.parametrize(
    ("parser", "value"),
    [
        (an.parse_uint64, "-1"),
        (an.parse_uint64, "12MB"),
        (an.parse_uint32, str(2**32)),
        (an.parse_int32, str(2**31)),
        (an.parse_int32, "1.5"),
        (an.parse_int32, ""),
    ],
)
def test_bad_integer_names_key_and_value(parser: object, value: str) -> None:
    key = an.MEMORY_SIZE_IN_MB
    with pytest.raises(AnnotationError) as info:
        parser({key: value}, key, 0)  # type: ignore[operator]
    assert info.value.key == key
    assert info.value.value == value
    assert key in str(info.value) and repr(value) in str(info.value)


def test_bad_bool_and_choice_and_csv_and_guid() -> None:
    with pytest.raises(AnnotationError, match="allowovercommit='yes'"):
        an.parse_bool({an.ALLOW_OVERCOMMIT: "yes"}, an.ALLOW_OVERCOMMIT, True)
    with pytest.raises(AnnotationError, match="initrd, vhd"):
        an.parse_choice({an.PREFERRED_ROOTFS_TYPE: "iso"}, an.PREFERRED_ROOTFS_TYPE, ("initrd", "vhd"), "")
    with pytest.raises(AnnotationError, match="list"):
        an.parse_csv_uint32({an.EXTRA_VSOCK_PORTS: "1,x"}, an.EXTRA_VSOCK_PORTS)
    with pytest.raises(AnnotationError, match="GUID"):
        an.parse_guid({an.RESOURCE_PARTITION_ID: "nope"}, an.RESOURCE_PARTITION_ID)


def test_csv_and_guid() -> None:
    assert an.parse_csv_uint32({"k": "1, 2,3"}, "k") == [1, 2, 3]
    assert (
        an.parse_guid({"k": "7A3C8C2B-1D5A-4F2E-9B0C-6E8F1A2B3C4D"}, "k")
        == "7a3c8c2b-1d5a-4f2e-9b0c-6e8f1a2b3c4d"
    )
    assert an.parse_choice({"k": "VHD"}, "k", ("initrd", "vhd"), "") == "vhd"


def test_unknown_annotations() -> None:
    ann = {
        an.MEMORY_SIZE_IN_MB: "1",
        "io.microsoft.virtualmachine.computetopology.memory.sizeinmib": "1",
        an.UVM_HV_SOCKET_CONFIG_PREFIX + "0000006d-facb-11e6-bd58-64006a7986d3": "{}",
        "org.example.other": "x",
    }
    assert an.unknown_annotations(ann) == ["io.microsoft.virtualmachine.computetopology.memory.sizeinmib"]


def test_expansion_and_conflict() -> None:
    out = an.expand_annotations({an.DISABLE_UNSAFE_OPERATIONS: "true"})
    assert out[an.DISABLE_WRITABLE_FILE_SHARES] == "true"
    assert out[an.WCOW_DISABLE_GMSA] == "true"
    with pytest.raises(AnnotationError) as info:
        an.expand_annotations(
            {an.DISABLE_UNSAFE_OPERATIONS: "true", an.DISABLE_WRITABLE_FILE_SHARES: "false"}
        )
    assert info.value.key == an.DISABLE_WRITABLE_FILE_SHARES


@given(st.text(max_size=12))
def test_parsers_raise_only_annotation_error(value: str) -> None:
    for parse in (an.parse_int32, an.parse_uint32, an.parse_uint64):
        with contextlib.suppress(AnnotationError):
            parse({"k": value}, "k", 0)
    with contextlib.suppress(AnnotationError):
        an.parse_bool({"k": value}, "k", False)
        an.parse_csv_uint64({"k": value}, "k")
        an.parse_guid({"k": value}, "k")
