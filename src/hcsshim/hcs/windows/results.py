"""HCS result documents and HRESULTs → the HcsError classes of hcsshim.hcs.errors.

A failed HCS call returns an HRESULT and, usually, a ResultError document
(`{"Error": <int32>, "ErrorMessage": "...", "ErrorEvents"|"ErrorRecords": [...]}`). The mapped
HcsError names the operation and system; its `__cause__` is a `ResultError` carrying the raw HRESULT
and the parsed events (like upstream's hcsResult wrapped by makeSystemError)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hcsshim.hcs.errors import (
    ErrAlreadyExists,
    ErrComputeSystemDoesNotExist,
    ErrElementNotFound,
    ErrInvalidData,
    ErrNotSupported,
    ErrTimeout,
    ErrVmcomputeAlreadyStopped,
    ErrVmcomputeInvalidJSON,
    ErrVmcomputeOperationInvalidState,
    ErrVmcomputeUnexpectedExit,
    HcsError,
    HResult,
)

# HCS_E_* (0x8037xxxx, what computecore returns) and ERROR_VMCOMPUTE_* (0xC037xxxx, vmcompute and
# the guest bridge) share their low bits.
HCS_E_INVALID_STATE = 0x80370105
HCS_E_UNEXPECTED_EXIT = 0x80370106
HCS_E_UNKNOWN_MESSAGE = 0x8037010B
HCS_E_INVALID_JSON = 0x8037010D
HCS_E_SYSTEM_NOT_FOUND = 0x8037010E
HCS_E_SYSTEM_ALREADY_EXISTS = 0x8037010F
HCS_E_SYSTEM_ALREADY_STOPPED = 0x80370110
HCS_E_OPERATION_PENDING = 0x80370117
HCS_E_OPERATION_TIMEOUT = 0x80370118
HCS_E_SERVICE_DISCONNECT = 0x8037011E
ERROR_VMCOMPUTE_SYSTEM_ALREADY_EXISTS = 0xC037010F

_MAP: dict[int, tuple[type[HcsError], HResult]] = {
    HResult.VMCOMPUTE_SYSTEM_NOT_FOUND: (ErrComputeSystemDoesNotExist, HResult.VMCOMPUTE_SYSTEM_NOT_FOUND),
    HCS_E_SYSTEM_NOT_FOUND: (ErrComputeSystemDoesNotExist, HResult.VMCOMPUTE_SYSTEM_NOT_FOUND),
    HResult.ERROR_NOT_FOUND: (ErrElementNotFound, HResult.ERROR_NOT_FOUND),
    HResult.ERROR_NOT_SUPPORTED: (ErrNotSupported, HResult.ERROR_NOT_SUPPORTED),
    HResult.ERROR_INVALID_DATA: (ErrInvalidData, HResult.ERROR_INVALID_DATA),
    HResult.VMCOMPUTE_INVALID_JSON: (ErrVmcomputeInvalidJSON, HResult.VMCOMPUTE_INVALID_JSON),
    HCS_E_INVALID_JSON: (ErrVmcomputeInvalidJSON, HResult.VMCOMPUTE_INVALID_JSON),
    HResult.VMCOMPUTE_OPERATION_INVALID_STATE: (
        ErrVmcomputeOperationInvalidState,
        HResult.VMCOMPUTE_OPERATION_INVALID_STATE,
    ),
    HCS_E_INVALID_STATE: (ErrVmcomputeOperationInvalidState, HResult.VMCOMPUTE_OPERATION_INVALID_STATE),
    HResult.VMCOMPUTE_ALREADY_STOPPED: (ErrVmcomputeAlreadyStopped, HResult.VMCOMPUTE_ALREADY_STOPPED),
    HCS_E_SYSTEM_ALREADY_STOPPED: (ErrVmcomputeAlreadyStopped, HResult.VMCOMPUTE_ALREADY_STOPPED),
    HResult.VMCOMPUTE_UNEXPECTED_EXIT: (ErrVmcomputeUnexpectedExit, HResult.VMCOMPUTE_UNEXPECTED_EXIT),
    HCS_E_UNEXPECTED_EXIT: (ErrVmcomputeUnexpectedExit, HResult.VMCOMPUTE_UNEXPECTED_EXIT),
    HCS_E_SERVICE_DISCONNECT: (ErrVmcomputeUnexpectedExit, HResult.VMCOMPUTE_UNEXPECTED_EXIT),
    ERROR_VMCOMPUTE_SYSTEM_ALREADY_EXISTS: (ErrAlreadyExists, HResult.VMCOMPUTE_SYSTEM_ALREADY_EXISTS),
    HCS_E_SYSTEM_ALREADY_EXISTS: (ErrAlreadyExists, HResult.VMCOMPUTE_SYSTEM_ALREADY_EXISTS),
    HResult.ERROR_ALREADY_EXISTS: (ErrAlreadyExists, HResult.VMCOMPUTE_SYSTEM_ALREADY_EXISTS),
    HResult.ERROR_TIMEOUT: (ErrTimeout, HResult.ERROR_TIMEOUT),
    HCS_E_OPERATION_TIMEOUT: (ErrTimeout, HResult.ERROR_TIMEOUT),
    HResult.ERROR_ACCESS_DENIED: (HcsError, HResult.ERROR_ACCESS_DENIED),
    HResult.ERROR_INVALID_HANDLE: (HcsError, HResult.ERROR_INVALID_HANDLE),
    HResult.VMCOMPUTE_UNKNOWN_MESSAGE: (HcsError, HResult.VMCOMPUTE_UNKNOWN_MESSAGE),
    HCS_E_UNKNOWN_MESSAGE: (HcsError, HResult.VMCOMPUTE_UNKNOWN_MESSAGE),
}


@dataclass(frozen=True)
class ErrorEvent:
    message: str = ""
    provider: str = ""
    event_id: int = 0
    source: str = ""
    stack_trace: str = ""

    def __str__(self) -> str:
        out = f"[Event Detail: {self.message}"
        if self.provider:
            out += f" Provider: {self.provider}"
        if self.event_id:
            out += f" EventID: {self.event_id}"
        if self.source:
            out += f" Source: {self.source}"
        return out + "]"


@dataclass(eq=False)
class ResultError(Exception):
    """The raw outcome of one HCS call: the HRESULT and what the result document said."""

    hresult: int
    message: str = ""
    events: list[ErrorEvent] = field(default_factory=list)
    document: str = ""

    def __str__(self) -> str:
        text = f"HRESULT 0x{self.hresult:08x}"
        if self.message:
            text += f": {self.message}"
        return text + "".join(f" {e}" for e in self.events)


def _event(raw: Any) -> ErrorEvent:
    if not isinstance(raw, dict):
        return ErrorEvent(message=str(raw))
    event_id = raw.get("EventId", 0)
    return ErrorEvent(
        message=str(raw.get("Message", "")),
        provider=str(raw.get("Provider", "")),
        event_id=event_id if isinstance(event_id, int) else 0,
        source=str(raw.get("Source", "")),
        stack_trace=str(raw.get("StackTrace", "")),
    )


def parse_result(hresult: int, document: str) -> ResultError:
    """Parse a ResultError document; a document that is not one is kept verbatim in `message`."""
    result = ResultError(hresult=hresult, document=document)
    if not document.strip():
        return result
    try:
        doc = json.loads(document)
    except json.JSONDecodeError:
        result.message = f"unparsable result document: {document[:200]!r}"
        return result
    if not isinstance(doc, dict):
        result.message = f"unexpected result document: {document[:200]!r}"
        return result
    result.message = str(doc.get("ErrorMessage") or "")
    raw_events = doc.get("ErrorEvents") or doc.get("ErrorRecords") or []
    if isinstance(raw_events, list):
        result.events = [_event(e) for e in raw_events]
    code = doc.get("Error")
    if result.hresult == 0 and isinstance(code, int) and code != 0:
        result.hresult = code & 0xFFFFFFFF
    return result


def error_for(op: str, system_id: str, hresult: int, document: str = "") -> HcsError:
    """The HcsError subclass for `hresult`, naming `op` and `system_id`, caused by the ResultError."""
    result = parse_result(hresult, document)
    cls, code = _MAP.get(result.hresult, (HcsError, HResult.E_FAIL))
    err = cls(op, system_id, str(result), code)
    err.__cause__ = result
    return err


def cause(err: BaseException) -> ResultError | None:
    """The ResultError behind an error raised by the windows backend, if any."""
    c = err.__cause__
    return c if isinstance(c, ResultError) else None
