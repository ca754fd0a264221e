"""OCI spec model and the CRI sandbox annotations."""

from __future__ import annotations

import pytest

from hcsshim.annotations import AnnotationError
from hcsshim.oci import KubernetesContainerType, Spec, SpecError, sandbox_type_and_id


def test_spec_keeps_unknown_fields() -> None:
    raw = {
        "ociVersion": "1.1.0",
        "process": {"args": ["sh"]},
        "root": {"path": "rootfs"},
        "annotations": {"a": "b"},
        "linux": {"namespaces": []},
        "vm": {"hypervisor": {"path": "/x"}},
        "x-custom": [1, 2],
    }
    spec = Spec.from_dict(raw)
    assert spec.extra == {"vm": {"hypervisor": {"path": "/x"}}, "x-custom": [1, 2]}
    assert spec.to_dict() == raw
    assert spec.is_lcow() and not spec.is_hyperv()


def test_spec_errors_name_the_field() -> None:
    with pytest.raises(SpecError, match=r"annotations\.k"):
        Spec.from_dict({"annotations": {"k": 1}})
    with pytest.raises(SpecError, match="linux"):
        Spec.from_dict({"linux": []})
    with pytest.raises(SpecError, match=r"windows\.resources\.cpu\.count"):
        Spec.from_dict({"windows": {"resources": {"cpu": {"count": "2"}}}}).windows_cpu_count()


def test_windows_resources() -> None:
    spec = Spec.from_dict({"windows": {"resources": {"memory": {"limit": 1 << 30}, "cpu": {"count": 2}}}})
    assert spec.windows_memory_limit() == 1 << 30
    assert spec.windows_cpu_count() == 2
    assert spec.windows_storage_iops() is None


def test_sandbox_type_and_id() -> None:
    assert sandbox_type_and_id({}) == (KubernetesContainerType.NONE, "")
    kind, sid = sandbox_type_and_id(
        {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "p1"}
    )
    assert kind == "sandbox" and kind is KubernetesContainerType.SANDBOX and sid == "p1"
    with pytest.raises(AnnotationError, match="sandbox-id"):
        sandbox_type_and_id({"io.kubernetes.cri.container-type": "container"})
    with pytest.raises(AnnotationError, match="container-type"):
        sandbox_type_and_id({"io.kubernetes.cri.sandbox-id": "p1"})
    with pytest.raises(AnnotationError, match="'pod'"):
        sandbox_type_and_id({"io.kubernetes.cri.container-type": "pod", "io.kubernetes.cri.sandbox-id": "p"})
