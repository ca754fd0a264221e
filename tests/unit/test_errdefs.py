"""Errors keep their kind across layers, and the ttrpc boundary maps kinds to status codes."""

from __future__ import annotations

import pytest

from hcsshim import errdefs
from hcsshim.gcs.bridge import BridgeClosedError, BridgeError, BridgeTimeoutError
from hcsshim.gcs.protocol import GcsError, Hresult
from hcsshim.hcs.errors import (
    ErrAlreadyExists,
    ErrComputeSystemDoesNotExist,
    ErrInvalidData,
    ErrNotSupported,
    ErrVmcomputeAlreadyStopped,
    ErrVmcomputeUnexpectedExit,
    HcsError,
)
from hcsshim.shim.process import ProcessError
from hcsshim.ttrpc.status import Code, TtrpcError, from_exception


def _wrapped(inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as e:
            raise RuntimeError("while creating task t1") from e
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (BridgeError("CreateContainer t1", Hresult.ERROR_NOT_FOUND, "no such container", []), Code.NOT_FOUND),
        (
            BridgeError("CreateContainer t1", Hresult.VMCOMPUTE_SYSTEM_ALREADY_EXISTS, "exists", []),
            Code.ALREADY_EXISTS,
        ),
        (BridgeError("Modify", Hresult.E_NOTIMPL, "unsupported modify request", []), Code.UNIMPLEMENTED),
        (BridgeError("Modify", Hresult.E_INVALIDARG, "bad settings", []), Code.INVALID_ARGUMENT),
        (
            GcsError("guest: sandbox still has containers", Hresult.VMCOMPUTE_INVALID_STATE),
            Code.FAILED_PRECONDITION,
        ),
        (BridgeTimeoutError("guest ExecuteProcess timed out after 120s"), Code.DEADLINE_EXCEEDED),
        (BridgeClosedError("utility VM exited: qemu killed by SIGKILL"), Code.UNAVAILABLE),
        (ErrComputeSystemDoesNotExist("Open", "vm", "no such compute system"), Code.NOT_FOUND),
        (ErrAlreadyExists("Create", "vm", "exists"), Code.ALREADY_EXISTS),
        (ErrVmcomputeAlreadyStopped("Modify", "vm", "stopped"), Code.FAILED_PRECONDITION),
        (ErrVmcomputeUnexpectedExit("Modify", "vm", "QEMU exited"), Code.UNAVAILABLE),
        (ErrInvalidData("Create", "vm", "bad document"), Code.INVALID_ARGUMENT),
        (ErrNotSupported("Modify", "vm", "VirtualPci is not supported"), Code.UNIMPLEMENTED),
        (ProcessError("exec e1: not found", not_found=True), Code.NOT_FOUND),
        (ProcessError("process is not running"), Code.FAILED_PRECONDITION),
        (FileNotFoundError(2, "no such file"), Code.NOT_FOUND),
        (TimeoutError(), Code.DEADLINE_EXCEEDED),
        (TtrpcError(Code.NOT_FOUND, "peer said so"), Code.NOT_FOUND),
        (HcsError("Start", "vm", "something odd"), Code.UNKNOWN),
        (RuntimeError("a bug"), Code.UNKNOWN),
    ],
)
def test_every_layer_error_maps_to_its_status(exc: Exception, code: Code) -> None:
    assert from_exception(exc).code == code
    assert str(exc) in from_exception(exc).message or isinstance(exc, TtrpcError)


def test_a_wrapper_without_a_kind_takes_its_causes() -> None:
    inner = BridgeError("WaitForProcess t1", Hresult.ERROR_NOT_FOUND, "gone", [])
    assert from_exception(_wrapped(inner)).code == Code.NOT_FOUND
    assert errdefs.kind_of(_wrapped(BridgeTimeoutError("x"))) is errdefs.Kind.DEADLINE_EXCEEDED


def test_ttrpc_error_kind_round_trips_through_the_code_table() -> None:
    for kind in errdefs.Kind:
        err = from_exception(errdefs.Error("m", kind))
        assert err.kind is kind
