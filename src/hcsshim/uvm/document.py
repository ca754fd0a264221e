"""The default LCOW UVM document: from the builder when it is available, else an equivalent
minimal schema2 document built here from the boot files directory."""

from __future__ import annotations

import os
from typing import Any

from hcsshim import settings

# Imported here, not on first use: a first use inside a running event loop would hold it for the
# ~0.3 s the builder and schema modules take to import.
from hcsshim.builder.lcow_v2 import build_lcow_uvm_v2
from hcsshim.builder.options import BootFiles
from hcsshim.hvsock.abi import SCSI_CONTROLLER_GUIDS

ENV_BOOT_FILES = settings.BOOT_FILES_ENV
DEFAULT_BOOT_FILES = settings.DEFAULT_BOOT_FILES


def boot_files_path() -> str:
    """Where `hcsshim uvm build` puts the boot files (the image builder uses the same)."""
    return settings.current().boot_files


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


def default_lcow_document(owner: str, annotations: dict[str, str] | None = None) -> Any:
    """The builder's V2 document for a default sandbox (annotations honoured) over the boot files
    directory as it is now."""
    root = boot_files_path()
    if os.path.isdir(root):
        boot = BootFiles(root, frozenset(os.listdir(root)))
        doc, _ = build_lcow_uvm_v2(owner=owner, annotations=annotations or {}, boot_files=boot)
    else:
        # Validation then names the missing kernel rather than the builder guessing a layout.
        doc, _ = build_lcow_uvm_v2(owner=owner, annotations=annotations or {}, boot_files_root=root)
    return doc
