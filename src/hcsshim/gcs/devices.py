"""Where the qemu backend places devices and where the guest finds them (stdlib only).

Both ends import these so the addressing is written down exactly once.
"""

from __future__ import annotations

import glob
import os

SCSI_CONTROLLERS = 4
SCSI_LUNS_PER_CONTROLLER = 64
SCSI_PCI_SLOT_BASE = 0x10

PLAN9_MOUNT_TAG = "hcsshim-plan9"
PLAN9_ROOT = "/run/mounts/plan9-root"
PLAN9_SHARES = "/run/mounts/plan9"
PLAN9_PORT = 564

SCSI_MOUNT_ROOT = "/run/mounts/scsi"
VPMEM_MOUNT_ROOT = "/run/mounts/vpmem"

VIRTIO_MUX_PORT_NAME = "hcsshim.mux"
VIRTIO_MUX_DEVICE = f"/dev/virtio-ports/{VIRTIO_MUX_PORT_NAME}"

# Port forwarding (our extension): the host dials this mux port, sends one JSON line
# {"NamespaceID": ..., "Port": N}, the guest answers "OK\n" or "ERR <why>\n" and relays the
# channel to 127.0.0.1:N inside that pod network namespace.
PORT_FORWARD_PORT = 0x40000100

LCOW_ROOT = "/run/gcs/c"
LCOW_POD_ROOT = "/run/gcs/pods"


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
