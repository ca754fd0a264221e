"""The OCI spec adjustments a guest makes before handing a bundle to runc.

Pod model (CRI annotations): the sandbox container gets fresh network/IPC/UTS namespaces, the pod's
hostname, /etc/hosts, /etc/resolv.conf and a per-pod /dev/shm tmpfs; workload containers join the
sandbox's namespaces (through /proc/<sandbox init>/ns/*) and bind the same files.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from hcsshim.gcs.protocol import GcsError, Hresult

CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SHM_SIZE_ANNOTATION = "io.microsoft.container.storage.shm.size-kb"
DEFAULT_SHM_KB = 64 * 1024
SHARED_NAMESPACES = ("network", "ipc", "uts")
_NS_FILE = {"network": "net", "ipc": "ipc", "uts": "uts"}


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What workload containers need from their sandbox."""

    sandbox_id: str
    files_dir: str
    init_pid: int
    hostname: str


def container_kind(spec: dict[str, Any], cid: str) -> tuple[str, str]:
    """("sandbox" | "container" | "standalone", sandbox id)."""
    ann = spec.get("annotations") or {}
    kind = ann.get(CONTAINER_TYPE, "")
    sid = ann.get(SANDBOX_ID, "")
    if kind == "sandbox":
        if sid and sid != cid:
            raise GcsError(f"sandbox {cid} names a different sandbox id {sid}", Hresult.E_INVALIDARG)
        return "sandbox", cid
    if kind == "container":
        if not sid:
            raise GcsError(f"container {cid} has no {SANDBOX_ID} annotation", Hresult.E_INVALIDARG)
        return "container", sid
    if kind:
        raise GcsError(f"invalid {CONTAINER_TYPE} {kind!r}", Hresult.E_INVALIDARG)
    return "standalone", ""


def hosts_content(hostname: str) -> str:
    return (
        "127.0.0.1 localhost\n"
        f"127.0.0.1 {hostname}\n\n"
        "# The following lines are desirable for IPv6 capable hosts\n"
        "::1     ip6-localhost ip6-loopback\n"
        "fe00::0 ip6-localnet\n"
        "ff00::0 ip6-mcastprefix\n"
        "ff02::1 ip6-allnodes\n"
        "ff02::2 ip6-allrouters\n"
    )


def write_pod_files(files_dir: str, hostname: str) -> None:
    os.makedirs(files_dir, exist_ok=True)
    with open(os.path.join(files_dir, "hostname"), "w", encoding="utf-8") as f:
        f.write(hostname + "\n")
    with open(os.path.join(files_dir, "hosts"), "w", encoding="utf-8") as f:
        f.write(hosts_content(hostname))
    try:
        with open("/etc/resolv.conf", encoding="utf-8") as f:
            resolv = f.read()
    except OSError:
        resolv = ""
    with open(os.path.join(files_dir, "resolv.conf"), "w", encoding="utf-8") as f:
        f.write(resolv)


def network_namespace_id(spec: dict[str, Any]) -> str:
    """The pod namespace the host named (hcsshim: ``windows.network.networkNamespace``), lower-cased."""
    windows = spec.get("windows")
    net = windows.get("network") if isinstance(windows, dict) else None
    return str(net.get("networkNamespace") or "").lower() if isinstance(net, dict) else ""


def shm_size_kb(spec: dict[str, Any]) -> int:
    raw = (spec.get("annotations") or {}).get(SHM_SIZE_ANNOTATION, "")
    try:
        return int(raw) if raw else DEFAULT_SHM_KB
    except ValueError:
        raise GcsError(f"invalid {SHM_SIZE_ANNOTATION} {raw!r}", Hresult.E_INVALIDARG) from None


def _set_mount(spec: dict[str, Any], destination: str, source: str, options: list[str]) -> None:
    mounts = [m for m in spec.get("mounts") or [] if m.get("destination") != destination]
    mounts.append({"destination": destination, "type": "bind", "source": source, "options": options})
    spec["mounts"] = mounts


def _has_mount(spec: dict[str, Any], destination: str) -> bool:
    return any(m.get("destination") == destination for m in spec.get("mounts") or [])


def _set_namespace(spec: dict[str, Any], ns_type: str, path: str = "") -> None:
    linux = spec.setdefault("linux", {})
    namespaces = [n for n in linux.get("namespaces") or [] if n.get("type") != ns_type]
    entry: dict[str, str] = {"type": ns_type}
    if path:
        entry["path"] = path
    namespaces.append(entry)
    linux["namespaces"] = namespaces


def adjust(
    spec: dict[str, Any],
    cid: str,
    kind: str,
    files_dir: str,
    *,
    pod: PodInfo | None = None,
    shm_dir: str = "",
    cgroup_parent: str = "",
    netns_path: str = "",
) -> dict[str, Any]:
    """Return the spec runc should see. ``files_dir`` holds this container's (or pod's) files."""
    spec = dict(spec)
    spec.pop("windows", None)
    linux = spec.setdefault("linux", {})
    if not isinstance(spec.get("process"), dict):
        raise GcsError("OCI spec has no process", Hresult.E_INVALIDARG)
    if not isinstance(spec.get("root"), dict) or not spec["root"].get("path"):
        raise GcsError("OCI spec has no root.path", Hresult.E_INVALIDARG)

    if kind == "container":
        assert pod is not None
        for ns in SHARED_NAMESPACES:
            _set_namespace(spec, ns, f"/proc/{pod.init_pid}/ns/{_NS_FILE[ns]}")
        # runc refuses to set a hostname in a UTS namespace it does not own.
        spec.pop("hostname", None)
        files_dir = pod.files_dir
    else:
        hostname = spec.get("hostname") or socket.gethostname()
        spec["hostname"] = hostname
        for ns in SHARED_NAMESPACES:
            existing = [n for n in linux.get("namespaces") or [] if n.get("type") == ns]
            if ns == "network" and (netns_path or any(n.get("path") for n in existing)):
                # The pod's namespace in the guest; a path from the host never names one here.
                _set_namespace(spec, ns, netns_path)
            elif not existing:
                _set_namespace(spec, ns)
        write_pod_files(files_dir, hostname)

    for name in ("hostname", "hosts", "resolv.conf"):
        dest = f"/etc/{name}"
        if not _has_mount(spec, dest):
            _set_mount(spec, dest, os.path.join(files_dir, name), ["rbind", "rprivate", "rw"])
    if shm_dir:
        _set_mount(spec, "/dev/shm", shm_dir, ["rbind", "rprivate", "rw"])

    if not linux.get("cgroupsPath"):
        parent = cgroup_parent.rstrip("/")
        if kind == "standalone":
            linux["cgroupsPath"] = f"{parent}/containers/{cid}"
        else:
            sid = pod.sandbox_id if pod else cid
            linux["cgroupsPath"] = f"{parent}/pods/{sid}/{cid}"
    return spec
