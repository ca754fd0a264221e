"""The QEMU and accelerator every VM benchmark prints, so figures from two machines can be compared."""

from __future__ import annotations

import asyncio
import os

from hcsshim.hcs.qemu import accel
from hcsshim.hcs.qemu.system import qemu_binary
from hcsshim.uvm.document import boot_files_path


def chosen() -> accel.Accel:
    root = boot_files_path()
    kernel = os.path.join(root, "vmlinux")
    if not os.path.isfile(kernel):
        kernel = os.path.join(root, "kernel")
    return asyncio.run(accel.choose(qemu_binary(), kernel))


def describe(a: accel.Accel) -> str:
    why = " ".join(a.why.split())[:160]
    return f"QEMU {a.qemu_version}, accelerator {a.spec} ({why})"
