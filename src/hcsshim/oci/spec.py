"""The OCI runtime spec (config.json), modelled loosely.

The builder reads a handful of fields and passes the rest through to the guest, so the model keeps
every top-level section as JSON and types only what hcsshim interprets: annotations, root, hostname,
and the Windows resources the V1 pipeline falls back on. Unknown top-level fields survive a
``from_dict``/``to_dict`` round trip unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from hcsshim import errdefs


class SpecError(ValueError):
    """A spec of the wrong shape; ``path`` names the field."""

    kind = errdefs.Kind.INVALID_ARGUMENT

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"spec {path}: {reason}")
        self.path = path
        self.reason = reason


_SECTIONS = ("process", "root", "mounts", "hooks", "linux", "windows", "solaris", "vm")


@dataclass(slots=True)
class Spec:
    oci_version: str = ""
    hostname: str = ""
    domainname: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    process: dict[str, Any] | None = None
    root: dict[str, Any] | None = None
    mounts: list[dict[str, Any]] = field(default_factory=list)
    hooks: dict[str, Any] | None = None
    linux: dict[str, Any] | None = None
    windows: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> Spec:
        if not isinstance(data, dict):
            raise SpecError("", f"expected an object, got {type(data).__name__}")
        data = copy.deepcopy(data)
        spec = cls()
        spec.oci_version = _str(data.pop("ociVersion", ""), "ociVersion")
        spec.hostname = _str(data.pop("hostname", ""), "hostname")
        spec.domainname = _str(data.pop("domainname", ""), "domainname")
        ann = data.pop("annotations", None) or {}
        if not isinstance(ann, dict):
            raise SpecError("annotations", "expected an object of strings")
        for k, v in ann.items():
            if not isinstance(v, str):
                raise SpecError(f"annotations.{k}", f"expected a string, got {type(v).__name__}")
        spec.annotations = dict(ann)
        mounts = data.pop("mounts", None) or []
        if not isinstance(mounts, list) or not all(isinstance(m, dict) for m in mounts):
            raise SpecError("mounts", "expected a list of objects")
        spec.mounts = mounts
        for name in ("process", "root", "hooks", "linux", "windows"):
            value = data.pop(name, None)
            if value is not None and not isinstance(value, dict):
                raise SpecError(name, f"expected an object, got {type(value).__name__}")
            setattr(spec, name, value)
        spec.extra = data
        return spec

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.oci_version:
            out["ociVersion"] = self.oci_version
        for key, value in (("process", self.process), ("root", self.root)):
            if value is not None:
                out[key] = copy.deepcopy(value)
        if self.hostname:
            out["hostname"] = self.hostname
        if self.domainname:
            out["domainname"] = self.domainname
        if self.mounts:
            out["mounts"] = copy.deepcopy(self.mounts)
        if self.hooks is not None:
            out["hooks"] = copy.deepcopy(self.hooks)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        for key, value in (("linux", self.linux), ("windows", self.windows)):
            if value is not None:
                out[key] = copy.deepcopy(value)
        out.update(copy.deepcopy(self.extra))
        return out

    def copy(self) -> Spec:
        # A deep copy, not from_dict(to_dict()): what was validated once need not be parsed again.
        return copy.deepcopy(self)

    # -- the Windows resources V1 falls back on when annotations are absent --------------------------

    def _windows_resource(self, section: str, name: str) -> int | None:
        resources = (self.windows or {}).get("resources") or {}
        value = (resources.get(section) or {}).get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"windows.resources.{section}.{name}", "expected an integer")
        return value

    def windows_cpu_count(self) -> int | None:
        return self._windows_resource("cpu", "count")

    def windows_cpu_maximum(self) -> int | None:
        return self._windows_resource("cpu", "maximum")

    def windows_cpu_shares(self) -> int | None:
        return self._windows_resource("cpu", "shares")

    def windows_memory_limit(self) -> int | None:
        return self._windows_resource("memory", "limit")

    def windows_storage_iops(self) -> int | None:
        return self._windows_resource("storage", "iops")

    def windows_storage_bps(self) -> int | None:
        return self._windows_resource("storage", "bps")

    def is_hyperv(self) -> bool:
        return self.windows is not None and self.windows.get("hyperv") is not None

    def is_lcow(self) -> bool:
        return self.linux is not None

    def is_isolated(self) -> bool:
        return self.is_lcow() or self.is_hyperv()


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise SpecError(path, f"expected a string, got {type(value).__name__}")
    return value
