"""Snapshot errors by kind; the service maps each to the gRPC status containerd's errdefs expects."""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    NOT_FOUND = "not found"
    ALREADY_EXISTS = "already exists"
    FAILED_PRECONDITION = "failed precondition"
    INVALID_ARGUMENT = "invalid argument"
    NOT_IMPLEMENTED = "not implemented"
    INTERNAL = "internal"


class SnapshotError(Exception):
    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def not_found(msg: str) -> SnapshotError:
    return SnapshotError(Kind.NOT_FOUND, msg)


def already_exists(msg: str) -> SnapshotError:
    return SnapshotError(Kind.ALREADY_EXISTS, msg)


def precondition(msg: str) -> SnapshotError:
    return SnapshotError(Kind.FAILED_PRECONDITION, msg)


def invalid(msg: str) -> SnapshotError:
    return SnapshotError(Kind.INVALID_ARGUMENT, msg)


def not_implemented(msg: str) -> SnapshotError:
    return SnapshotError(Kind.NOT_IMPLEMENTED, msg)
