"""hcsshim.uvm: one utility VM (boot, guest connection, ref-counted devices)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hcsshim.uvm.errors import UvmError
    from hcsshim.uvm.utility_vm import UtilityVM


def __getattr__(name: str) -> Any:
    # Lazy so that importing hcsshim.uvm.document (the image builder does) does not import QEMU code.
    if name == "UtilityVM":
        from hcsshim.uvm.utility_vm import UtilityVM

        return UtilityVM
    if name == "UvmError":
        from hcsshim.uvm.errors import UvmError

        return UvmError
    raise AttributeError(name)


__all__ = ["UtilityVM", "UvmError"]
