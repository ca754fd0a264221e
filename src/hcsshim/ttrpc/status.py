"""ttrpc status codes (the gRPC numbering carried in ``google.rpc.Status``) and the error type."""

from __future__ import annotations

import enum

from hcsshim import errdefs
from hcsshim.api.google.rpc import status_pb2


class Code(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def from_int(cls, value: int) -> Code:
        """Unknown numbers (a newer peer) degrade to UNKNOWN instead of raising."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


KIND_CODES: dict[errdefs.Kind, Code] = {
    errdefs.Kind.NOT_FOUND: Code.NOT_FOUND,
    errdefs.Kind.ALREADY_EXISTS: Code.ALREADY_EXISTS,
    errdefs.Kind.FAILED_PRECONDITION: Code.FAILED_PRECONDITION,
    errdefs.Kind.UNAVAILABLE: Code.UNAVAILABLE,
    errdefs.Kind.DEADLINE_EXCEEDED: Code.DEADLINE_EXCEEDED,
    errdefs.Kind.INVALID_ARGUMENT: Code.INVALID_ARGUMENT,
    errdefs.Kind.NOT_IMPLEMENTED: Code.UNIMPLEMENTED,
    errdefs.Kind.UNKNOWN: Code.UNKNOWN,
}
_CODE_KINDS = {code: kind for kind, code in KIND_CODES.items()}


class TtrpcError(Exception):
    """An RPC failed with a status code; raised by the client, and raised by handlers to answer one."""

    def __init__(self, code: Code | int, message: str = "") -> None:
        self.code = Code.from_int(int(code))
        self.message = message
        super().__init__(f"{self.code.name}: {message}" if message else self.code.name)

    @property
    def kind(self) -> errdefs.Kind:
        return _CODE_KINDS.get(self.code, errdefs.Kind.UNKNOWN)

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(code=int(self.code), message=self.message)

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> TtrpcError:
        return cls(Code.from_int(status.code), status.message)


class ConnectionClosedError(TtrpcError):
    """The connection went away before the call completed (Go's ``ttrpc.ErrClosed``)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(Code.UNAVAILABLE, f"ttrpc: closed{': ' + reason if reason else ''}")
        self.reason = reason


def from_exception(exc: BaseException) -> TtrpcError:
    """The one mapping from an error of any layer to the status a ttrpc caller sees. Never raises:
    an exception whose ``__str__`` fails is named by its type."""
    if isinstance(exc, TtrpcError):
        return exc
    try:
        message = str(exc)
    except Exception:
        message = ""
    return TtrpcError(KIND_CODES[errdefs.kind_of(exc)], message or type(exc).__name__)
