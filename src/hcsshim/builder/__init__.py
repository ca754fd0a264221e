"""Pure functions from (OCI spec, annotations, runtime options) to HCS schema2 documents.

* :func:`build_lcow_uvm_v1` - the containerd-shim-runhcs-v1 pipeline (spec annotations, with
  spec.windows.resources fallbacks and VPMem);
* :func:`build_lcow_uvm_v2` - the containerd-shim-lcow-v2 pipeline (sandbox options);
* :func:`build_lcow_container_document` - the LCOW container document the guest receives;
* :func:`build_wcow_process_container_document` / :func:`build_wcow_hyperv_container_document`.

Nothing here touches the filesystem: callers pass :class:`BootFiles` (a directory and the names in
it), :class:`HostInfo` (processor count, build, arch; Linux defaults) and :class:`Capabilities` (what
the compute backend can realize; Hyper-V's everything by default).
"""

from hcsshim.builder.container_lcow import build_lcow_container_document, sanitize_spec
from hcsshim.builder.kernel_args import kernel_args_v1, kernel_args_v2
from hcsshim.builder.lcow_v1 import UvmOptionsLCOW, build_lcow_uvm_v1
from hcsshim.builder.lcow_v2 import build_lcow_uvm_v2, resolve_boot_files_root
from hcsshim.builder.options import (
    DEFAULT_LINUX_BOOT_FILES,
    BootFiles,
    BuilderError,
    Capabilities,
    ConfidentialConfig,
    HostInfo,
    RuntimeOptions,
    SandboxOptions,
)
from hcsshim.builder.wcow import build_wcow_hyperv_container_document, build_wcow_process_container_document

__all__ = [
    "DEFAULT_LINUX_BOOT_FILES",
    "BootFiles",
    "BuilderError",
    "Capabilities",
    "ConfidentialConfig",
    "HostInfo",
    "RuntimeOptions",
    "SandboxOptions",
    "UvmOptionsLCOW",
    "build_lcow_container_document",
    "build_lcow_uvm_v1",
    "build_lcow_uvm_v2",
    "build_wcow_hyperv_container_document",
    "build_wcow_process_container_document",
    "kernel_args_v1",
    "kernel_args_v2",
    "resolve_boot_files_root",
    "sanitize_spec",
]
