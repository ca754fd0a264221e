"""The windows backend (computecore.dll). Not implemented yet: every call raises a clear
ErrPlatformNotSupported so callers on Windows know what is missing."""

from __future__ import annotations

import sys

from hcsshim.hcs.errors import ErrPlatformNotSupported
from hcsshim.hcs.system import ComputeSystem, Document


def _unavailable(op: str, system_id: str) -> ErrPlatformNotSupported:
    where = "on this platform" if sys.platform != "win32" else "yet (computecore.dll binding not written)"
    return ErrPlatformNotSupported(op, system_id, f"the windows HCS backend is not available {where}")


async def create(system_id: str, document: Document) -> ComputeSystem:
    raise _unavailable("CreateComputeSystem", system_id)


def open_system(system_id: str) -> ComputeSystem:
    raise _unavailable("OpenComputeSystem", system_id)
