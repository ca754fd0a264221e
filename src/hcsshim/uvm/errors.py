"""Errors of the UtilityVM layer (device bookkeeping, guest connection)."""

from __future__ import annotations

from hcsshim import errdefs


class UvmError(Exception):
    """A UtilityVM operation failed; every raise names its kind (a VM that died before the agent
    connected is Unavailable, a stalled agent DeadlineExceeded, a path not attached NotFound)."""

    def __init__(
        self, uvm_id: str, op: str, message: str, *, kind: errdefs.Kind = errdefs.Kind.UNKNOWN
    ) -> None:
        self.uvm_id = uvm_id
        self.op = op
        self.message = message
        self.kind = kind
        super().__init__(f"uvm {uvm_id}: {op}: {message}")
