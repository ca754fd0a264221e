"""The ``shim_cgroup`` option of containerd's runc Options (``containerd.runc.v1.Options``): the shim
process moves into that cgroup, as containerd's runc shim does (cgroup v2, or every v1 hierarchy that
has the path). Processes the shim starts afterwards (QEMU, the local agent) are born there too.

containerd hands a client's task options both to ``start`` and to ``Create``; the shim applies them at
Create, before it starts a UVM or an agent.
"""

from __future__ import annotations

import os

from google.protobuf import any_pb2

from hcsshim import errdefs
from hcsshim.api.containerd.runc.options import oci_pb2 as runc_options
from hcsshim.shim.options import type_matches

CGROUP_ROOT = "/sys/fs/cgroup"
RUNC_OPTIONS = runc_options.Options.DESCRIPTOR.full_name


class ShimCgroupError(ValueError):
    """The runc options' shim_cgroup cannot be joined: the caller's input."""

    kind = errdefs.Kind.INVALID_ARGUMENT


def shim_cgroup(value: any_pb2.Any | None) -> str:
    """The shim_cgroup of a runc Options Any ("" for other types or none)."""
    if value is None or not type_matches(value.type_url, RUNC_OPTIONS):
        return ""
    options = runc_options.Options()
    options.ParseFromString(value.value)
    return options.shim_cgroup


def _targets(path: str, root: str) -> list[str]:
    rel = path.strip("/")
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return [os.path.join(root, rel)]
    found = []
    for name in sorted(os.listdir(root)):
        base = os.path.join(root, name)
        if not os.path.islink(base) and os.path.isdir(os.path.join(base, rel)) and rel:
            found.append(os.path.join(base, rel))
    return found


def join(path: str, pid: int | None = None, root: str = CGROUP_ROOT) -> list[str]:
    """Move ``pid`` (default: this process) into cgroup ``path``; returns the cgroup directories."""
    if not path.startswith("/"):
        raise ShimCgroupError(f"shim_cgroup {path!r}: must be an absolute cgroup path")
    targets = [t for t in _targets(path, root) if os.path.isdir(t)]
    if not targets:
        raise ShimCgroupError(f"shim_cgroup {path}: no such cgroup under {root}")
    for target in targets:
        try:
            with open(os.path.join(target, "cgroup.procs"), "w", encoding="ascii") as f:
                f.write(str(pid or os.getpid()))
        except OSError as exc:
            raise ShimCgroupError(f"shim_cgroup {path}: joining {target}: {exc.strerror}") from exc
    return targets
