"""The windows backend: the ComputeSystem interface over computecore.dll through ctypes.

computecore.dll is loaded on first use and only on Windows; elsewhere every call raises
ErrPlatformNotSupported naming the operation and system. `computecore.set_loader()` swaps the
library for a fake (the unit tests run this backend on Linux that way)."""

from __future__ import annotations

from hcsshim.hcs.system import ComputeSystem, Document
from hcsshim.hcs.windows.computecore import ComputeCore, get_computecore, set_loader
from hcsshim.hcs.windows.system import WindowsComputeSystem
from hcsshim.hcs.windows.system import open_system as _open_system


async def create(system_id: str, document: Document) -> ComputeSystem:
    return await WindowsComputeSystem.create(system_id, document)


def open_system(system_id: str) -> ComputeSystem:
    return _open_system(system_id)


__all__ = ["ComputeCore", "WindowsComputeSystem", "create", "get_computecore", "open_system", "set_loader"]
