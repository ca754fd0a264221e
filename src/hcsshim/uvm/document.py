"""The default LCOW UVM document: the builder's V2 pipeline over the boot files directory."""

from __future__ import annotations

import copy
import os
from typing import Any

from hcsshim import loopwatch, settings

# Imported here, not on first use: a first use inside a running event loop would hold it for the
# ~0.3 s the builder and schema modules take to import.
from hcsshim.builder.lcow_v2 import build_lcow_uvm_v2
from hcsshim.builder.options import BootFiles
from hcsshim.hcs import document_to_dict
from hcsshim.schema import ComputeSystem

ENV_BOOT_FILES = settings.BOOT_FILES_ENV
DEFAULT_BOOT_FILES = settings.DEFAULT_BOOT_FILES


def boot_files_path() -> str:
    """Where `hcsshim uvm build` puts the boot files (the image builder uses the same)."""
    return settings.current().boot_files


def boot_file_names(root: str) -> frozenset[str]:
    """The names in the boot files directory `root`; none when it is not a directory (validation
    then names the missing kernel). Blocking."""
    return frozenset(os.listdir(root)) if os.path.isdir(root) else frozenset()


def default_lcow_document(
    owner: str, annotations: dict[str, str] | None = None, *, boot_files: str | None = None
) -> ComputeSystem:
    """The builder's V2 document for a default sandbox (annotations honoured) over the boot files
    directory (``boot_files``, else the image cache) as it is now."""
    root = boot_files or boot_files_path()
    if os.path.isdir(root):
        boot = BootFiles(root, frozenset(os.listdir(root)))
        doc, _ = build_lcow_uvm_v2(owner=owner, annotations=annotations or {}, boot_files=boot)
    else:
        # Validation then names the missing kernel rather than the builder guessing a layout.
        doc, _ = build_lcow_uvm_v2(owner=owner, annotations=annotations or {}, boot_files_root=root)
    return doc


def watch_guest_loops(document: dict[str, Any]) -> dict[str, Any]:
    """With HCSSHIM_GUEST_SLOW_CALLBACK_MS set, the document's kernel command line asks the guest agent to
    report its own slow callbacks too (loopwatch.CMDLINE_PARAM, before the `--` that starts init's
    arguments). Idempotent; a document without a Linux kernel command line is returned as it is."""
    ms = settings.current().guest_slow_callback_ms
    direct = document.get("VirtualMachine", {}).get("Chipset", {}).get("LinuxKernelDirect")
    if ms <= 0 or not isinstance(direct, dict) or not isinstance(direct.get("KernelCmdLine"), str):
        return document
    cmdline: str = direct["KernelCmdLine"]
    kernel_part, sep, init_part = cmdline.partition(" -- ")
    if any(w.startswith(loopwatch.CMDLINE_PARAM + "=") for w in kernel_part.split()):
        return document
    param = f"{loopwatch.CMDLINE_PARAM}={ms}"
    document = copy.deepcopy(document)  # the caller's document stays as it was
    direct = document["VirtualMachine"]["Chipset"]["LinuxKernelDirect"]
    direct["KernelCmdLine"] = f"{kernel_part} {param}{sep}{init_part}" if sep else f"{cmdline} {param}"
    return document


def uvm_document(document: object, uvm_id: str) -> dict[str, Any]:
    """The document a UVM of this process is created, cloned or templated from: `document` as an HCS
    dict, with this process's guest settings (watch_guest_loops). Every path to a UVM goes through
    here, so a template built by the CLI and the clones a shim restores have the same key."""
    return watch_guest_loops(document_to_dict(document, uvm_id))
