"""Errors of the UtilityVM layer (device bookkeeping, guest connection)."""

from __future__ import annotations


class UvmError(Exception):
    def __init__(self, uvm_id: str, op: str, message: str) -> None:
        self.uvm_id = uvm_id
        self.op = op
        self.message = message
        super().__init__(f"uvm {uvm_id}: {op}: {message}")
