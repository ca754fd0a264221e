"""The error kinds every layer's failures fall into, and how an error's kind is found.

A layer keeps its own exception types (HcsError with an HRESULT, the guest's GcsError, the bridge's
timeout and closed errors, the shim's ProcessError); what crosses layers is the kind. An exception
says its kind with a `kind` attribute, or through the HRESULT it carries (`result` on the bridge's
errors, `code` on HcsError), or by being one of Python's own OSError/TimeoutError/ConnectionError
subclasses; a wrapper without a kind of its own takes its cause's. The ttrpc boundary maps kinds to
status codes (hcsshim.ttrpc.status.from_exception), so containerd sees NotFound, not Unknown.

This module imports nothing of ours: every layer, the guest agent included, may use it."""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    NOT_FOUND = "not found"
    ALREADY_EXISTS = "already exists"
    FAILED_PRECONDITION = "failed precondition"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline exceeded"
    INVALID_ARGUMENT = "invalid argument"
    NOT_IMPLEMENTED = "not implemented"
    UNKNOWN = "unknown"


class Error(Exception):
    """An error of ours that names its kind directly."""

    kind: Kind = Kind.UNKNOWN

    def __init__(self, message: str, kind: Kind | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class NotFound(Error):
    kind = Kind.NOT_FOUND


class AlreadyExists(Error):
    kind = Kind.ALREADY_EXISTS


class FailedPrecondition(Error):
    kind = Kind.FAILED_PRECONDITION


class Unavailable(Error):
    kind = Kind.UNAVAILABLE


class DeadlineExceeded(Error):
    kind = Kind.DEADLINE_EXCEEDED


class InvalidArgument(Error):
    kind = Kind.INVALID_ARGUMENT


class NotImplementedKind(Error):
    kind = Kind.NOT_IMPLEMENTED


def _u32(value: int) -> int:
    return value & 0xFFFFFFFF


# HRESULTs from HCS (internal/hcs/errors.go) and the GCS (internal/guest/gcserr), unsigned.
_HRESULT_KINDS: dict[int, Kind] = {
    0x80070490: Kind.NOT_FOUND,  # ERROR_NOT_FOUND
    0xC037010E: Kind.NOT_FOUND,  # HCS_E_SYSTEM_NOT_FOUND
    0x80070002: Kind.NOT_FOUND,  # ERROR_FILE_NOT_FOUND
    0x00000490: Kind.NOT_FOUND,
    0xC037010F: Kind.ALREADY_EXISTS,  # HCS_E_SYSTEM_ALREADY_EXISTS
    0x800700B7: Kind.ALREADY_EXISTS,  # ERROR_ALREADY_EXISTS
    0x000000B7: Kind.ALREADY_EXISTS,
    0xC0370110: Kind.FAILED_PRECONDITION,  # HCS_E_SYSTEM_ALREADY_STOPPED
    0x80370105: Kind.FAILED_PRECONDITION,  # HCS_E_INVALID_STATE
    0xC0370105: Kind.FAILED_PRECONDITION,  # operation invalid in this state
    0xC0370106: Kind.UNAVAILABLE,  # HCS_E_UNEXPECTED_EXIT: the VM died
    0xC0370109: Kind.DEADLINE_EXCEEDED,  # HCS_E_CONNECTION_TIMEOUT
    0x000005B4: Kind.DEADLINE_EXCEEDED,  # ERROR_TIMEOUT
    0x80070057: Kind.INVALID_ARGUMENT,  # E_INVALIDARG
    0xC037010D: Kind.INVALID_ARGUMENT,  # HCS_E_INVALID_JSON
    0x0000000D: Kind.INVALID_ARGUMENT,  # ERROR_INVALID_DATA
    0x80004001: Kind.NOT_IMPLEMENTED,  # E_NOTIMPL
    0xC037010B: Kind.NOT_IMPLEMENTED,  # HCS_E_UNKNOWN_MESSAGE
    0x00000032: Kind.NOT_IMPLEMENTED,  # ERROR_NOT_SUPPORTED
    0xC037010C: Kind.NOT_IMPLEMENTED,  # HCS_E_UNSUPPORTED_PROTOCOL_VERSION
}


def kind_of_hresult(value: int) -> Kind:
    return _HRESULT_KINDS.get(_u32(value), Kind.UNKNOWN)


def _attr(exc: BaseException, name: str) -> object:
    # An exception's own property may raise; finding a kind must not.
    try:
        return getattr(exc, name, None)
    except Exception:
        return None


def _own_kind(exc: BaseException) -> Kind:
    declared = _attr(exc, "kind")
    if isinstance(declared, Kind):
        return declared
    for attr in ("result", "code"):
        value = _attr(exc, attr)
        if isinstance(value, int) and not isinstance(value, bool):
            kind = kind_of_hresult(value)
            if kind is not Kind.UNKNOWN:
                return kind
    if isinstance(exc, TimeoutError):
        return Kind.DEADLINE_EXCEEDED
    if isinstance(exc, ConnectionError | EOFError):
        return Kind.UNAVAILABLE
    if isinstance(exc, FileNotFoundError | ProcessLookupError):
        return Kind.NOT_FOUND
    if isinstance(exc, FileExistsError):
        return Kind.ALREADY_EXISTS
    if isinstance(exc, NotImplementedError):
        return Kind.NOT_IMPLEMENTED
    return Kind.UNKNOWN


def kind_of(exc: BaseException) -> Kind:
    """The kind of `exc`, or of the nearest cause that has one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = _own_kind(current)
        if kind is not Kind.UNKNOWN:
            return kind
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return Kind.UNKNOWN
