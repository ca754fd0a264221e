"""The bundle's OCI spec as the shim needs it: annotations and the CRI pod role of a task."""

from __future__ import annotations

import enum
import json
import os
from typing import Any

from hcsshim import errdefs, oci

CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"


class SpecError(ValueError):
    """config.json or its annotations are wrong: the caller's input."""

    kind = errdefs.Kind.INVALID_ARGUMENT


class Role(enum.Enum):
    SANDBOX = "sandbox"
    CONTAINER = "container"
    STANDALONE = ""


class BundleSpec(dict[str, Any]):
    """A bundle's config.json as read, which is what the guest is given, with the oci.Spec it was
    validated as (`parsed`), which is what the document builder takes: parsed once, at Create."""

    def __init__(self, data: dict[str, Any], parsed: oci.Spec) -> None:
        super().__init__(data)
        self.parsed = parsed


def read_spec(bundle: str) -> BundleSpec:
    """``config.json`` of a bundle; a sandbox bundle may hold ``null`` or nothing (reference §2.5)."""
    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return BundleSpec({}, oci.Spec())
    except (OSError, ValueError) as exc:
        raise SpecError(f"{bundle}/config.json: {exc}") from exc
    if data is None:
        return BundleSpec({}, oci.Spec())
    try:
        # A wrong type is refused here, with the field named, instead of surfacing later as a Python
        # error deep in the document builder.
        parsed = oci.Spec.from_dict(data)
    except oci.SpecError as exc:
        raise SpecError(f"{bundle}/config.json: {exc}") from exc
    assert isinstance(data, dict)
    return BundleSpec(data, parsed)


def spec_annotations(spec: dict[str, Any]) -> dict[str, str]:
    raw = spec.get("annotations") or {}
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def role_and_sandbox(spec: dict[str, Any], task_id: str) -> tuple[Role, str]:
    """(role, sandbox id) of a task; the oci package's parser when it is there, the same rules here."""
    try:
        kind, sid = oci.sandbox_type_and_id(spec_annotations(spec))
    except ValueError as exc:
        raise SpecError(str(exc)) from exc
    return _role(str(getattr(kind, "value", kind) or ""), str(sid or ""), task_id)


def _role(kind: str, sid: str, task_id: str) -> tuple[Role, str]:
    if kind == "sandbox":
        if sid and sid != task_id:
            raise SpecError(f"sandbox task {task_id} names a different {SANDBOX_ID} {sid!r}")
        return Role.SANDBOX, task_id
    if kind == "container":
        if not sid:
            raise SpecError(f"container task {task_id} has no {SANDBOX_ID} annotation")
        return Role.CONTAINER, sid
    if kind:
        raise SpecError(f"invalid {CONTAINER_TYPE} {kind!r}")
    if sid:
        raise SpecError(f"{SANDBOX_ID} {sid!r} without {CONTAINER_TYPE}")
    return Role.STANDALONE, ""
