"""The CRI pod model as annotations express it (internal/oci/sandbox.go)."""

from __future__ import annotations

import enum
from collections.abc import Mapping

from hcsshim.annotations import KUBERNETES_CONTAINER_TYPE, KUBERNETES_SANDBOX_ID, AnnotationError


class KubernetesContainerType(enum.StrEnum):
    NONE = ""
    SANDBOX = "sandbox"
    CONTAINER = "container"


def sandbox_type_and_id(annotations: Mapping[str, str]) -> tuple[KubernetesContainerType, str]:
    """(container type, sandbox id); both annotations come together or not at all."""
    kind = annotations.get(KUBERNETES_CONTAINER_TYPE, "")
    sid = annotations.get(KUBERNETES_SANDBOX_ID, "")
    if kind not in ("", "sandbox", "container"):
        raise AnnotationError(KUBERNETES_CONTAINER_TYPE, kind, "must be 'sandbox' or 'container'")
    if kind and not sid:
        raise AnnotationError(
            KUBERNETES_CONTAINER_TYPE, kind, f"cannot specify it without {KUBERNETES_SANDBOX_ID}"
        )
    if sid and not kind:
        raise AnnotationError(
            KUBERNETES_SANDBOX_ID, sid, f"cannot specify it without {KUBERNETES_CONTAINER_TYPE}"
        )
    return KubernetesContainerType(kind), sid
