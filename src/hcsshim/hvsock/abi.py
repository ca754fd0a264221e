"""The device ABI between the host and the guest agent (stdlib only): where the host places devices,
where the guest finds and mounts them, the mux ports each service listens on, and the names of the
guest resources a modify request carries.

Both ends import these so each value is written down exactly once. Values that mirror upstream
hcsshim name their source; the rest are our extensions.
"""

from __future__ import annotations

import enum
import glob
import os

# ---- mux ports (the HvSocket service ids of upstream, as u32 ports) ----------------------------

# The guest's entropy and log services (vmutils: LinuxGcsVsockPort is the bridge).
ENTROPY_PORT = 1
LOG_PORT = 109
BRIDGE_PORT = 0x40000000
# The host allocates stdio channels from here up (one port per stdio stream of a process).
FIRST_IO_PORT = BRIDGE_PORT + 1
# Port forwarding (our extension): the host dials this mux port, sends one JSON line
# {"NamespaceID": ..., "Port": N}, the guest answers "OK\n" or "ERR <why>\n" and relays the
# channel to 127.0.0.1:N inside that pod network namespace.
PORT_FORWARD_PORT = 0x40000100
# A template's agent listens here for the host of a clone restored from it (hvsock/clone.py).
RESUME_PORT = 0x40000200

# AF_VSOCK's well-known host CID: a guest dialling vsock reaches the host there.
VMADDR_CID_HOST = 2

# ---- the mux's own device: a virtio-serial port -----------------------------------------------

VIRTIO_MUX_PORT_NAME = "hcsshim.mux"
VIRTIO_MUX_DEVICE = f"/dev/virtio-ports/{VIRTIO_MUX_PORT_NAME}"

# ---- containers -------------------------------------------------------------------------------

# The container id of "the UVM itself" (upstream's nullContainerID).
NULL_CONTAINER_ID = "00000000-0000-0000-0000-000000000000"
LCOW_ROOT = "/run/gcs/c"
LCOW_POD_ROOT = "/run/gcs/pods"

# ---- SCSI -------------------------------------------------------------------------------------

# Upstream's fixed controller GUIDs (guestrequest.ScsiControllerGuids, V5 GUIDs of the names
# "0".."3"): the index in this tuple is the controller number the guest sees.
SCSI_CONTROLLER_GUIDS: tuple[str, ...] = (
    "df6d0690-79e5-55b6-a5ec-c1e2f77f580a",
    "0110f83b-de10-5172-a266-78bca56bf50a",
    "b5d2d8d4-3a75-51bf-945b-3444dc6b8579",
    "305891a9-b251-5dfe-91a2-c25d9212275b",
)
SCSI_CONTROLLERS = len(SCSI_CONTROLLER_GUIDS)


def scsi_controller_index(guid: str, position: int) -> int:
    """The number of a document's SCSI controller: a known GUID keeps upstream's number; an unknown
    one takes its position in the document."""
    try:
        return SCSI_CONTROLLER_GUIDS.index(guid.lower())
    except ValueError:
        return position


SCSI_LUNS_PER_CONTROLLER = 64
# The qemu backend puts controller i at PCI slot 0x10+i of bus 0; the guest finds its disks there.
SCSI_PCI_SLOT_BASE = 0x10
SCSI_MOUNT_ROOT = "/run/mounts/scsi"

# ---- VPMem ------------------------------------------------------------------------------------

VPMEM_MOUNT_ROOT = "/run/mounts/vpmem"

# ---- Plan9 ------------------------------------------------------------------------------------

PLAN9_PORT = 564
# Plan9ShareFlags bits (schema2 plan9_share_flags.go).
PLAN9_FLAG_READ_ONLY = 0x00000001
PLAN9_FLAG_LINUX_METADATA = 0x00000004
PLAN9_FLAG_CASE_SENSITIVE = 0x00000008
PLAN9_FLAG_UNLIMITED_CONNECTIONS = 0x00000010
PLAN9_FLAG_RESTRICT_FILE_ACCESS = 0x00000080
# The qemu backend exports every share under one virtio-9p tag; the guest mounts the tag once at
# PLAN9_ROOT and bind-mounts each share from there to PLAN9_SHARES/<name>.
PLAN9_MOUNT_TAG = "hcsshim-plan9"
PLAN9_ROOT = "/run/mounts/plan9-root"
PLAN9_SHARES = "/run/mounts/plan9"


# ---- guest resources (guestresource / guestrequest in upstream) --------------------------------


class ResourceType(enum.StrEnum):
    """``ResourceType`` of a guest modify request."""

    MAPPED_DIRECTORY = "MappedDirectory"
    SCSI_DEVICE = "SCSIDevice"
    MAPPED_VIRTUAL_DISK = "MappedVirtualDisk"
    MAPPED_VIRTUAL_DISK_FOR_CONTAINER_SCRATCH = "MappedVirtualDiskForContainerScratch"
    NETWORK = "Network"
    NETWORK_NAMESPACE = "NetworkNamespace"
    COMBINED_LAYERS = "CombinedLayers"
    VPMEM_DEVICE = "VPMemDevice"
    VPCI_DEVICE = "VPCIDevice"
    CONTAINER_CONSTRAINTS = "ContainerConstraints"
    HV_SOCKET = "HvSocket"
    SECURITY_POLICY = "SecurityPolicy"
    POLICY_FRAGMENT = "SecurityPolicyFragment"
    POD_CGROUP_MEMORY_LIMIT = "PodCgroupMemoryLimit"


class RequestType(enum.StrEnum):
    """``RequestType`` of a (host or guest) modify request."""

    ADD = "Add"
    REMOVE = "Remove"
    PRE_ADD = "PreAdd"
    UPDATE = "Update"


# ---- derived paths ----------------------------------------------------------------------------


def scsi_pci_address(controller: int) -> str:
    """PCI address (bus 0) of SCSI controller ``controller``: ``00:{0x10+i:02x}.0``."""
    _check_scsi(controller, 0)
    return f"00:{SCSI_PCI_SLOT_BASE + controller:02x}.0"


def scsi_sysfs_glob(controller: int, lun: int) -> str:
    _check_scsi(controller, lun)
    slot = SCSI_PCI_SLOT_BASE + controller
    return f"/sys/bus/pci/devices/0000:00:{slot:02x}.0/virtio*/host*/target*/*:0:0:{lun}"


def scsi_mount_path(controller: int, lun: int, partition: int = 0) -> str:
    return f"{SCSI_MOUNT_ROOT}/{controller}_{lun}_{partition}"


def find_scsi_device(controller: int, lun: int, sysfs_root: str = "") -> tuple[str, str] | None:
    """(sysfs device dir, /dev/sdX) for a disk, or None when it has not appeared yet."""
    for dev_dir in sorted(glob.glob(sysfs_root + scsi_sysfs_glob(controller, lun))):
        blocks = (
            sorted(os.listdir(os.path.join(dev_dir, "block"))) if os.path.isdir(dev_dir + "/block") else []
        )
        if blocks:
            return dev_dir, "/dev/" + blocks[0]
    return None


def vpmem_device(number: int) -> str:
    return f"/dev/pmem{number}"


def plan9_share_path(name: str) -> str:
    """Guest path where share ``name`` is bind-mounted."""
    return f"{PLAN9_SHARES}/{name}"


def plan9_source_path(name: str) -> str:
    """Guest path of share ``name`` inside the once-mounted tag root."""
    return f"{PLAN9_ROOT}/{name}"


def _check_scsi(controller: int, lun: int) -> None:
    if not 0 <= controller < SCSI_CONTROLLERS:
        raise ValueError(f"SCSI controller {controller} out of range 0..{SCSI_CONTROLLERS - 1}")
    if not 0 <= lun < SCSI_LUNS_PER_CONTROLLER:
        raise ValueError(f"SCSI LUN {lun} out of range 0..{SCSI_LUNS_PER_CONTROLLER - 1}")
