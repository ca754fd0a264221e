"""Inputs of the builders: runtime options, boot files, host facts, and the sandbox side-car options."""

from __future__ import annotations

import ntpath
import os
import posixpath
from dataclasses import dataclass, field

from hcsshim import errdefs

# Boot file names (internal/vm/vmutils/constants.go).
KERNEL_FILE = "kernel"
UNCOMPRESSED_KERNEL_FILE = "vmlinux"
INITRD_FILE = "initrd.img"
VHD_FILE = "rootfs.vhd"
DEFAULT_GUEST_STATE_FILE = "kernel.vmgs"
DEFAULT_DM_VERITY_ROOTFS_VHD = "rootfs.vhd"
DEFAULT_UVM_REFERENCE_INFO_FILE = "reference_info.cose"
DEFAULT_UVM_HASH_ENVELOPE_REFERENCE_INFO_FILE = "reference_info_hash_envelope.cose"

# The layout `hcsshim uvm build` writes; assumed when a caller names a root without listing it.
DEFAULT_LINUX_BOOT_FILES = frozenset({KERNEL_FILE, INITRD_FILE, VHD_FILE})


# Windows builds the builders compare against (osversion).
BUILD_RS5 = 17763
BUILD_KERNEL_DIRECT = 18286
BUILD_19H1 = 18362
BUILD_COLD_DISCARD_HINT = 18967
BUILD_V21H1 = 19043
BUILD_V25H1_SERVER = 26100

DEFAULT_VPMEM_COUNT = 64
MAX_VPMEM_COUNT = 128
DEFAULT_VPMEM_SIZE_BYTES = 4 * 1024 * 1024 * 1024
DEFAULT_MEMORY_SIZE_IN_MB = 1024


class BuilderError(ValueError):
    """Inputs no document can be built from."""

    kind = errdefs.Kind.INVALID_ARGUMENT


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the compute backend can realize of the documents built here. The defaults are Hyper-V's
    (everything, as upstream assumes); ``hcsshim.hcs.capabilities()`` names the chosen backend's."""

    # VPMem devices (V1: the rootfs on /dev/pmem0, layers on further devices). Without them V1 starts
    # from a VPMem count of 0, as upstream does when the annotation says 0: the rootfs VHD goes to SCSI
    # controller 0 LUN 0 and the VM gets four SCSI controllers. An explicit count annotation still
    # wins. V2 never uses VPMem (it refuses a count above 0 whatever the backend).
    vpmem: bool = True


@dataclass(slots=True)
class RuntimeOptions:
    """containerd.runhcs.v1.Options as plain data (the shim converts the protobuf)."""

    debug: bool = False
    debug_type: int = 0  # NPIPE=0, FILE=1, ETW=2
    registry_root: str = ""
    sandbox_image: str = ""
    sandbox_platform: str = ""
    sandbox_isolation: int = 0  # PROCESS=0, HYPERVISOR=1
    boot_files_root_path: str = ""
    vm_processor_count: int = 0
    vm_memory_size_in_mb: int = 0
    gpu_vhd_path: str = ""
    scale_cpu_limits_to_sandbox: bool = False
    default_container_scratch_size_in_gb: int = 0
    default_vm_scratch_size_in_gb: int = 0
    share_scratch: bool = False
    ncproxy_addr: str = ""
    log_level: str = ""
    io_retry_timeout_in_sec: int = 0
    default_container_annotations: dict[str, str] = field(default_factory=dict)
    no_inherit_host_timezone: bool = False
    scrub_logs: bool | None = None  # proto3 optional: None = unset = scrubbing on

    def logrus_level(self) -> str:
        """The level the shim logs at: log_level wins over debug (as runhcs-v1 serve does)."""
        if self.log_level:
            return self.log_level.lower()
        return "debug" if self.debug else "info"


@dataclass(frozen=True, slots=True)
class BootFiles:
    """The boot files directory and which file names exist in it (the caller scans it)."""

    root: str
    files: frozenset[str] = DEFAULT_LINUX_BOOT_FILES

    def has(self, name: str) -> bool:
        return name in self.files

    def path(self, name: str) -> str:
        return join_host_path(self.root, name)


def is_windows_path(path: str) -> bool:
    return "\\" in path or (len(path) >= 2 and path[1] == ":" and path[0].isalpha())


def join_host_path(root: str, name: str) -> str:
    """``root``/``name`` in the root's own convention: POSIX on Linux, backslashes for Windows roots."""
    return ntpath.join(root, name) if is_windows_path(root) else posixpath.join(root, name)


@dataclass(frozen=True, slots=True)
class HostInfo:
    """Facts about the host the documents depend on; defaults describe a current Linux host."""

    logical_processor_count: int = field(default_factory=lambda: os.cpu_count() or 1)
    # The Windows build the feature gates compare with; Linux backends implement them all.
    build: int = BUILD_V25H1_SERVER
    arch: str = "amd64"

    def default_processor_count(self) -> int:
        return 1 if self.logical_processor_count == 1 else 2

    def normalize_processor_count(self, requested: int) -> int:
        return min(requested, self.logical_processor_count)


def normalize_memory_size(size_in_mb: int) -> int:
    """Round up to an even number of MB (HCS needs 2 MB alignment)."""
    return (size_in_mb + 1) & ~1


@dataclass(slots=True)
class ConfidentialConfig:
    security_policy: str = ""
    security_policy_enforcer: str = "rego"
    uvm_reference_info_file: str = DEFAULT_UVM_REFERENCE_INFO_FILE
    uvm_hash_envelope_reference_info_file: str = DEFAULT_UVM_HASH_ENVELOPE_REFERENCE_INFO_FILE


@dataclass(slots=True)
class SandboxOptions:
    """What the shim needs besides the document (internal/builder/vm/lcow SandboxOptions)."""

    no_writable_file_shares: bool = False
    enable_scratch_encryption: bool = False
    policy_based_routing: bool = False
    architecture: str = "amd64"
    fully_physically_backed: bool = False
    confidential_config: ConfidentialConfig | None = None
    # Confidential VMs boot from copies in the bundle; the builder does no I/O, so the caller copies
    # each (source, destination) before creating the VM.
    files_to_copy: list[tuple[str, str]] = field(default_factory=list)
