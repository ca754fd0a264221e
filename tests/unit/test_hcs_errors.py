from __future__ import annotations

import asyncio

import pytest

from hcsshim import hcs
from hcsshim.hcs import (
    ErrComputeSystemDoesNotExist,
    ErrPlatformNotSupported,
    ErrVmcomputeOperationInvalidState,
    HcsError,
    HResult,
)


def test_error_carries_operation_system_and_code() -> None:
    err = ErrVmcomputeOperationInvalidState("Start", "pod1@vm", "not valid in state Running")
    assert isinstance(err, HcsError)
    assert err.op == "Start" and err.system_id == "pod1@vm"
    assert err.code is HResult.VMCOMPUTE_OPERATION_INVALID_STATE
    assert int(err.code) == 0xC0370105
    assert "Start" in str(err) and "pod1@vm" in str(err) and "0xc0370105" in str(err)


def test_not_exist_helpers() -> None:
    assert hcs.is_not_exist(ErrComputeSystemDoesNotExist("Open", "x", "gone"))
    assert not hcs.is_not_exist(ValueError())
    assert hcs.is_already_stopped(hcs.ErrVmcomputeAlreadyStopped("Start", "x", "stopped"))


def test_document_to_dict_rejects_bad_json() -> None:
    with pytest.raises(hcs.ErrVmcomputeInvalidJSON, match="not valid JSON"):
        hcs.document_to_dict("{nope", "x")
    with pytest.raises(hcs.ErrVmcomputeInvalidJSON, match="JSON object"):
        hcs.document_to_dict("[1]", "x")
    assert hcs.document_to_dict('{"Owner": "a"}') == {"Owner": "a"}


def test_windows_backend_says_not_available() -> None:
    with pytest.raises(ErrPlatformNotSupported, match="windows HCS backend is not available"):
        asyncio.run(hcs.create_compute_system("x", {}, backend="windows"))


def test_unknown_backend() -> None:
    with pytest.raises(hcs.ErrNotSupported, match="unknown hcs backend"):
        asyncio.run(hcs.create_compute_system("x", {}, backend="nope"))


def test_open_unknown_system() -> None:
    with pytest.raises(ErrComputeSystemDoesNotExist):
        hcs.open_compute_system("never-created")
