"""SCSI slot allocation and reference counts for one UVM (host path -> controller/LUN)."""

from __future__ import annotations

from dataclasses import dataclass

from hcsshim.hvsock.abi import scsi_mount_path

LUNS = 64


@dataclass
class ScsiMount:
    host_path: str
    controller: int
    controller_guid: str
    lun: int
    read_only: bool
    partition: int = 0
    refs: int = 1

    @property
    def guest_path(self) -> str:
        return scsi_mount_path(self.controller, self.lun, self.partition)


class ScsiSlots:
    """Controllers come from the document (HCS cannot hot-add a controller); LUN 0 of controller 0
    is reserved for the rootfs even when it is empty, as upstream does."""

    def __init__(self, controllers: dict[int, str], taken: set[tuple[int, int]]) -> None:
        self.controllers = dict(sorted(controllers.items()))
        self.taken = set(taken) | {(0, 0)}
        self.by_path: dict[str, ScsiMount] = {}

    def allocate(self) -> tuple[int, str, int]:
        for index, guid in self.controllers.items():
            for lun in range(LUNS):
                if (index, lun) not in self.taken:
                    self.taken.add((index, lun))
                    return index, guid, lun
        raise LookupError("no free SCSI slot: every controller in the document is full")

    def release(self, index: int, lun: int) -> None:
        self.taken.discard((index, lun))
