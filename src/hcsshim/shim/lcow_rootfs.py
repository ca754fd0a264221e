"""A container rootfs from an ``lcow-layer`` mount (the lcow snapshotter): each layer VHD attached
read-only over SCSI, the scratch VHD read-write, and the guest's overlay of them (CombinedLayers).
Nothing of the rootfs is mounted on the host and no Plan9 share carries it.

The UVM reference-counts attachments by host path, so the containers of one image in a pod share
one attachment of each layer. Upstream's per-container scratch directory on the scratch disk
(``<mount>/scratch/<id>``) is kept, so containers sharing a scratch disk get their own upper dirs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from hcsshim.hvsock.abi import LCOW_ROOT, RequestType, ResourceType
from hcsshim.layers import lcow_mount
from hcsshim.shim.rootfs import MountSpec
from hcsshim.ttrpc import Code, TtrpcError

log = logging.getLogger("hcsshim.shim.lcow_rootfs")


class ScsiAttachment(Protocol):
    @property
    def guest_path(self) -> str: ...


class LayerHost(Protocol):
    """What a UVM offers for disk layers (``hcsshim.uvm.UtilityVM``)."""

    async def add_scsi(self, host_path: str, read_only: bool = ...) -> Any: ...
    async def remove_scsi(self, host_path: str) -> None: ...
    async def guest_modify(self, resource_type: str, request_type: str, settings: dict[str, Any]) -> Any: ...


def layers_of(rootfs: Sequence[MountSpec]) -> lcow_mount.LcowLayers | None:
    """The lcow layers the rootfs mounts describe, or None for another snapshotter's mounts."""
    try:
        m = lcow_mount.find(rootfs)
        return None if m is None else lcow_mount.parse(m)
    except lcow_mount.LcowMountError as e:
        raise TtrpcError(Code.INVALID_ARGUMENT, f"rootfs: {e}") from e


async def find_layers(rootfs: Sequence[MountSpec]) -> lcow_mount.LcowLayers | None:
    """:func:`layers_of` off the event loop (it checks the layer files exist)."""
    return await asyncio.to_thread(layers_of, rootfs)


class LcowRootfs:
    def __init__(self, host: Any, task_id: str) -> None:
        for name in ("add_scsi", "remove_scsi", "guest_modify"):
            if not callable(getattr(host, name, None)):
                raise TtrpcError(
                    Code.FAILED_PRECONDITION,
                    f"rootfs: an {lcow_mount.TYPE} mount needs SCSI disks, which this host has not ({name})",
                )
        self.host: LayerHost = host
        self.task_id = task_id
        self._attached: list[str] = []
        self._combined: dict[str, Any] | None = None

    async def attach(self, layers: lcow_mount.LcowLayers, bundle: str = "") -> str:
        """Attach and combine; returns the container's root path in the guest."""
        try:
            paths: list[dict[str, str]] = []
            for vhd in layers.layers:
                m = await self.host.add_scsi(vhd, read_only=True)
                self._attached.append(vhd)
                paths.append({"Path": str(m.guest_path)})
            scratch_path = ""
            if layers.scratch:
                m = await self.host.add_scsi(layers.scratch, read_only=False)
                self._attached.append(layers.scratch)
                scratch_path = f"{m.guest_path}/scratch/{self.task_id}"
            root = f"{bundle or f'{LCOW_ROOT}/{self.task_id}'}/rootfs"
            settings: dict[str, Any] = {"ContainerID": self.task_id, "ContainerRootPath": root}
            settings["Layers"] = paths
            if scratch_path:
                settings["ScratchPath"] = scratch_path
            await self.host.guest_modify(ResourceType.COMBINED_LAYERS, RequestType.ADD, settings)
            self._combined = settings
        except BaseException:
            await self.release()
            raise
        log.info(
            "rootfs from lcow layers",
            extra={"task": self.task_id, "layers": len(layers.layers), "scratch": layers.scratch},
        )
        return root

    async def release(self) -> None:
        """Guest unmount first, then the scratch, then the layers (upstream's order)."""
        if self._combined is not None:
            settings = {"ContainerID": self.task_id, "ContainerRootPath": self._combined["ContainerRootPath"]}
            try:
                await self.host.guest_modify(ResourceType.COMBINED_LAYERS, RequestType.REMOVE, settings)
            except Exception as exc:
                log.warning("removing combined layers failed", extra={"task": self.task_id, "error": exc})
            self._combined = None
        for path in reversed(self._attached):
            try:
                await self.host.remove_scsi(path)
            except Exception as exc:
                log.warning("detaching a layer disk failed", extra={"path": path, "error": exc})
        self._attached.clear()
