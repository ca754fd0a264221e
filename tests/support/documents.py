"""A hand-written minimal LCOW UVM document for the backend tests (fake QEMU, the qemu config, a
bare boot): a fixed shape the tests can assert on, independent of the builder's pipelines. The
runtime builds its documents with hcsshim.builder only."""

from __future__ import annotations

import os
from typing import Any

from hcsshim.hvsock.abi import SCSI_CONTROLLER_GUIDS
from hcsshim.uvm.document import boot_files_path


def minimal_lcow_document(
    owner: str,
    boot_files: str | None = None,
    *,
    memory_mb: int = 1024,
    cpus: int = 2,
    scsi_controllers: int = 1,
    kernel_args: str = "",
) -> dict[str, Any]:
    """An initrd-booted LCOW UVM the way upstream describes one (kernel args as upstream's,
    the qemu backend translates them)."""
    root = boot_files or boot_files_path()
    cmdline = (
        f"initrd=/initrd.img 8250_core.nr_uarts=0 panic=-1 quiet pci=off nr_cpus={cpus} brd.rd_nr=0 pmtmr=0"
    )
    if kernel_args:
        cmdline += " " + kernel_args
    return {
        "Owner": owner,
        "SchemaVersion": {"Major": 2, "Minor": 1},
        "ShouldTerminateOnLastHandleClosed": True,
        "VirtualMachine": {
            "StopOnReset": True,
            "Chipset": {
                "LinuxKernelDirect": {
                    "KernelFilePath": os.path.join(root, "kernel"),
                    "InitRdPath": os.path.join(root, "initrd.img"),
                    "KernelCmdLine": cmdline,
                }
            },
            "ComputeTopology": {
                "Memory": {"SizeInMB": memory_mb, "AllowOvercommit": True},
                "Processor": {"Count": cpus},
            },
            "Devices": {
                "Scsi": {guid: {} for guid in SCSI_CONTROLLER_GUIDS[:scsi_controllers]},
                "HvSocket": {
                    "HvSocketConfig": {"DefaultBindSecurityDescriptor": "D:P(A;;FA;;;SY)(A;;FA;;;BA)"}
                },
                "Plan9": {},
            },
        },
    }
