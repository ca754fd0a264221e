"""HCS-like errors: every failure names the operation, the compute system and an HRESULT-like code.

Codes are upstream's (internal/hcs/errors.go) so callers can branch on them the way hcsshim does,
whatever backend produced them."""

from __future__ import annotations

import enum

from hcsshim import errdefs


class HResult(enum.IntEnum):
    """The HRESULT / Win32 values hcsshim compares against."""

    ERROR_NOT_SUPPORTED = 0x32
    ERROR_INVALID_DATA = 0xD
    ERROR_ACCESS_DENIED = 0x5
    ERROR_INVALID_HANDLE = 0x6
    ERROR_NOT_FOUND = 0x490
    ERROR_ALREADY_EXISTS = 0xB7
    ERROR_TIMEOUT = 0x5B4
    VMCOMPUTE_OPERATION_PENDING = 0xC0370103
    VMCOMPUTE_OPERATION_INVALID_STATE = 0xC0370105
    VMCOMPUTE_UNEXPECTED_EXIT = 0xC0370106
    VMCOMPUTE_UNKNOWN_MESSAGE = 0xC037010B
    VMCOMPUTE_INVALID_JSON = 0xC037010D
    VMCOMPUTE_SYSTEM_NOT_FOUND = 0xC037010E
    VMCOMPUTE_ALREADY_STOPPED = 0xC0370110
    VMCOMPUTE_SYSTEM_ALREADY_EXISTS = 0xC037010F
    E_FAIL = 0x80004005


class HcsError(Exception):
    """Base error: `op` is the ComputeSystem method, `system_id` the system, `code` an HResult."""

    default_code: HResult = HResult.E_FAIL

    def __init__(self, op: str, system_id: str, message: str, code: HResult | None = None) -> None:
        self.op = op
        self.system_id = system_id
        self.code = code if code is not None else self.default_code
        self.message = message
        super().__init__(f"hcs::{op} {system_id}: {message} (0x{int(self.code):08x} {self.code.name})")

    @property
    def kind(self) -> errdefs.Kind:
        """The kind its code names; E_FAIL is unknown, so a cause's kind is used (errdefs.kind_of)."""
        return errdefs.kind_of_hresult(self.code)


class ErrComputeSystemDoesNotExist(HcsError):
    default_code = HResult.VMCOMPUTE_SYSTEM_NOT_FOUND


class ErrElementNotFound(HcsError):
    default_code = HResult.ERROR_NOT_FOUND


class ErrAlreadyExists(HcsError):
    default_code = HResult.VMCOMPUTE_SYSTEM_ALREADY_EXISTS


class ErrInvalidData(HcsError):
    """A malformed document or request, or one naming files that do not exist."""

    default_code = HResult.ERROR_INVALID_DATA


class ErrVmcomputeInvalidJSON(ErrInvalidData):
    default_code = HResult.VMCOMPUTE_INVALID_JSON


class ErrNotSupported(HcsError):
    default_code = HResult.ERROR_NOT_SUPPORTED


class ErrPlatformNotSupported(ErrNotSupported):
    """The backend cannot run on this platform (e.g. the windows backend on Linux)."""


class ErrVmcomputeOperationInvalidState(HcsError):
    default_code = HResult.VMCOMPUTE_OPERATION_INVALID_STATE


class ErrVmcomputeAlreadyStopped(HcsError):
    default_code = HResult.VMCOMPUTE_ALREADY_STOPPED


class ErrVmcomputeUnexpectedExit(HcsError):
    """The system exited while the operation was in flight."""

    default_code = HResult.VMCOMPUTE_UNEXPECTED_EXIT


class ErrTimeout(HcsError):
    default_code = HResult.ERROR_TIMEOUT


def is_not_exist(err: BaseException) -> bool:
    """True when the error means the system or element is already gone (upstream's IsNotExist)."""
    return isinstance(err, HcsError) and err.code in (
        HResult.VMCOMPUTE_SYSTEM_NOT_FOUND,
        HResult.ERROR_NOT_FOUND,
    )


def is_already_stopped(err: BaseException) -> bool:
    return isinstance(err, HcsError) and err.code in (
        HResult.VMCOMPUTE_ALREADY_STOPPED,
        HResult.VMCOMPUTE_UNEXPECTED_EXIT,
    )
