"""Plan9 share names and reference counts for one UVM (host path -> share)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hcsshim.hvsock.abi import PLAN9_PORT, plan9_share_path

# Upstream's flags (internal/uvm/plan9.go): LinuxMetadata | ReadOnly when read-only.
FLAG_READONLY = 0x1
FLAG_LINUX_METADATA = 0x4


@dataclass
class Plan9Mount:
    host_path: str
    name: str
    read_only: bool
    refs: int = 1

    @property
    def guest_path(self) -> str:
        return plan9_share_path(self.name)

    def host_settings(self) -> dict[str, object]:
        flags = FLAG_LINUX_METADATA | (FLAG_READONLY if self.read_only else 0)
        return {
            "Name": self.name,
            "AccessName": self.name,
            "Path": self.host_path,
            "Port": PLAN9_PORT,
            "Flags": flags,
            "ReadOnly": self.read_only,
        }

    def guest_settings(self) -> dict[str, object]:
        return {
            "MountPath": self.guest_path,
            "Port": PLAN9_PORT,
            "ShareName": self.name,
            "ReadOnly": self.read_only,
        }


class Plan9Names:
    """Share names are a decimal counter, as upstream; names used by the document are skipped."""

    def __init__(self, used: set[str]) -> None:
        self.used = set(used)
        self.by_path: dict[str, Plan9Mount] = {}
        self._counter = itertools.count()

    def next_name(self) -> str:
        while True:
            name = str(next(self._counter))
            if name not in self.used:
                self.used.add(name)
                return name
