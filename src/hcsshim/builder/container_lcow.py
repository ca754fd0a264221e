"""The LCOW container document the guest receives (hcsshim's vmHostedContainerSettingsV2)."""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Mapping
from typing import Any

from hcsshim import annotations as an
from hcsshim.hvsock.abi import LCOW_POD_ROOT, LCOW_ROOT
from hcsshim.oci import Spec
from hcsshim.schema import LCOWHostedContainerSettings, Version


def sanitize_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec as the guest should see it: host-only sections dropped (linuxcontainer/document.go).

    Windows keeps only the network namespace and devices; hooks run on the host only; the guest owns
    cgroup placement; resources the guest cannot apply are dropped and CPU period/quota get their
    "unlimited" spellings; a privileged container (annotation) runs without seccomp.
    """
    out = copy.deepcopy(dict(spec))
    windows = out.get("windows")
    if isinstance(windows, dict):
        kept: dict[str, Any] = {}
        namespace = (windows.get("network") or {}).get("networkNamespace")
        if namespace:
            kept["network"] = {"networkNamespace": namespace}
        if windows.get("devices"):
            kept["devices"] = windows["devices"]
        out["windows"] = kept
    out.pop("hooks", None)
    linux = out.get("linux")
    if isinstance(linux, dict):
        linux.pop("cgroupsPath", None)
        resources = linux.get("resources")
        if isinstance(resources, dict):
            for key in ("devices", "pids", "blockIO", "hugepageLimits", "network"):
                resources.pop(key, None)
            cpu = resources.get("cpu")
            if isinstance(cpu, dict):
                if not cpu.get("period"):
                    cpu["period"] = 100000
                if not cpu.get("quota"):
                    cpu["quota"] = -1
        annotations = out.get("annotations") or {}
        if an.parse_bool(annotations, an.LCOW_PRIVILEGED, False):
            linux.pop("seccomp", None)
    return out


def build_lcow_container_document(
    container_id: str,
    spec: Spec | Mapping[str, Any],
    *,
    pod_id: str = "",
    bundle_path: str = "",
    scratch_dir: str = "",
    root_path: str = "",
) -> LCOWHostedContainerSettings:
    """The container document for the GCS ``Create`` request.

    Without ``pod_id`` the V1 layout is used (bundle ``/run/gcs/c/<id>``); with it, the V2 layout
    ``/run/gcs/pods/<pod>/<id>``. ``root_path`` overrides the rootfs path; by default an absolute root path
    in the spec is kept, else ``<bundle>/rootfs``. ``scratch_dir`` is the guest scratch directory.
    """
    raw = spec.to_dict() if isinstance(spec, Spec) else dict(spec)
    if not bundle_path:
        bundle_path = (
            posixpath.join(LCOW_POD_ROOT, pod_id, container_id)
            if pod_id
            else posixpath.join(LCOW_ROOT, container_id)
        )
    final = sanitize_spec(raw)
    root = dict(final.get("root") or {})
    given = str(root.get("path") or "")
    # An absolute guest path set by the caller stays; a bundle-relative one (config.json's usual
    # "rootfs") becomes the guest bundle's rootfs, as upstream always places it.
    root["path"] = root_path or (given if given.startswith("/") else posixpath.join(bundle_path, "rootfs"))
    final["root"] = root
    return LCOWHostedContainerSettings(
        schema_version=Version(major=2, minor=1),
        oci_bundle_path=bundle_path,
        oci_specification=final,
        scratch_dir_path=scratch_dir,
    )
