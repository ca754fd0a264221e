"""The qemu backend: HCS schema2 VirtualMachine documents realized by QEMU (Linux)."""

from __future__ import annotations

from hcsshim.hcs.qemu.system import QemuComputeSystem, open_system

__all__ = ["QemuComputeSystem", "open_system"]
