"""The ``lcow-layer`` mount: how a snapshot names its scratch disk and its read-only parent layers.

Upstream shape (containerd's windows-lcow snapshotter, hcsshim ``internal/layers/lcow.go``): type
``lcow-layer``, source = the snapshot directory (holding the scratch disk), options[0] ``rw`` (or ``ro``
for a view) and ``parentLayerPaths=<JSON list>``, nearest parent first, each a directory holding
``layer.vhd``.

On a Linux host containerd itself mounts a container's snapshot (CRI reads /etc/passwd and /etc/group,
``ctr`` resolves additional GIDs), and the kernel knows no ``lcow-layer`` file system. So the lcow
snapshotter returns two mounts: first a read-only overlay of the layers' host loop mounts (what a
host temp-mount reads), then the ``lcow-layer`` mount with the extra options ``bind,remount,ro``: on
the host that second mount is a read-only bind-remount of the overlay below it (the kernel ignores
the type and the data of a bind-remount), and the shim takes it as the real description."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

TYPE = "lcow-layer"
PARENT_LAYER_PATHS = "parentLayerPaths="
# Appended so that containerd's mount.All on a Linux host turns the mount into a harmless remount.
HOST_NOOP_OPTIONS = ("bind", "remount", "ro")
LAYER_FILE = "layer.vhd"
# Upstream's scratch is sandbox.vhdx; ours is a fixed VHD (raw ext4 + footer) named for what it is.
SCRATCH_FILES = ("sandbox.vhd", "sandbox.vhdx")


class LcowMountError(ValueError):
    pass


class MountLike(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def options(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class LcowLayers:
    """Read-only layer VHDs (nearest parent first, like overlay's lowerdir) and the scratch VHD
    ("" for a read-only view)."""

    layers: tuple[str, ...]
    scratch: str
    source: str


def options(read_write: bool, parents: Sequence[str]) -> list[str]:
    return ["rw" if read_write else "ro", PARENT_LAYER_PATHS + json.dumps(list(parents)), *HOST_NOOP_OPTIONS]


def find(mounts: Sequence[MountLike]) -> MountLike | None:
    found = [m for m in mounts if m.type == TYPE]
    if len(found) > 1:
        raise LcowMountError(f"{len(found)} {TYPE} mounts in the rootfs; expected at most one")
    return found[0] if found else None


def parse(m: MountLike) -> LcowLayers:
    """The layer and scratch files of an ``lcow-layer`` mount (checked to exist)."""
    if m.type != TYPE:
        raise LcowMountError(f"mount type {m.type!r} is not {TYPE}")
    if not m.source or not os.path.isabs(m.source):
        raise LcowMountError(f"{TYPE} mount source {m.source!r} is not an absolute path")
    opts = list(m.options)
    read_write = "rw" in opts[:1]
    parents: list[str] = []
    raw = [o[len(PARENT_LAYER_PATHS) :] for o in opts if o.startswith(PARENT_LAYER_PATHS)]
    if len(raw) > 1:
        raise LcowMountError(f"{TYPE} mount has {len(raw)} {PARENT_LAYER_PATHS} options")
    if raw:
        try:
            value = json.loads(raw[0])
        except ValueError as e:
            raise LcowMountError(f"{PARENT_LAYER_PATHS} is not JSON: {raw[0]!r}") from e
        if not isinstance(value, list) or not all(isinstance(p, str) and os.path.isabs(p) for p in value):
            raise LcowMountError(f"{PARENT_LAYER_PATHS} is not a list of absolute paths: {raw[0]!r}")
        parents = value
    layers: list[str] = []
    scratch = ""
    if read_write:
        candidates = [os.path.join(m.source, n) for n in SCRATCH_FILES]
        scratch = next((c for c in candidates if os.path.isfile(c)), "")
        if not scratch:
            names = " or ".join(SCRATCH_FILES)
            raise LcowMountError(f"{TYPE} mount: no scratch disk ({names}) in {m.source}")
    else:
        # A view: the source is the top layer itself (upstream).
        parents = [m.source, *parents]
    for p in parents:
        vhd = os.path.join(p, LAYER_FILE)
        if not os.path.isfile(vhd):
            raise LcowMountError(f"{TYPE} mount: layer {vhd} does not exist")
        layers.append(vhd)
    if not layers:
        raise LcowMountError(f"{TYPE} mount of {m.source} has no layers")
    return LcowLayers(tuple(layers), scratch, m.source)
