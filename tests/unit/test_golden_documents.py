"""Golden documents for realistic inputs, checked in under tests/golden/<case>/.

Each case holds the inputs (config.json, options.json) and the expected outputs in HCS's compact
form: uvm-v1.json and uvm-v2.json (the two pipelines) and container.json (the LCOW container
document). The pod cases disable vPMem, so both pipelines agree byte for byte; ctr-run keeps V1's
defaults, so its V1 document boots the rootfs from VPMem device 0 with one SCSI controller while V2
(which has no vPMem) uses SCSI. Regenerate after a deliberate change with HCSSHIM_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hcsshim.builder import (
    DEFAULT_LINUX_BOOT_FILES,
    BootFiles,
    HostInfo,
    RuntimeOptions,
    build_lcow_container_document,
    build_lcow_uvm_v1,
    build_lcow_uvm_v2,
)
from hcsshim.oci import Spec
from hcsshim.schema import ComputeSystem, LCOWHostedContainerSettings

GOLDEN = Path(__file__).parent.parent / "golden"
CASES = ["k8s-pod-sandbox", "ctr-run", "high-memory-vm"]
HOST = HostInfo(logical_processor_count=16)
BOOT = BootFiles("/var/cache/hcsshim/uvm", DEFAULT_LINUX_BOOT_FILES)


def _render(case: str) -> dict[str, str]:
    spec = Spec.from_dict(json.loads((GOLDEN / case / "config.json").read_text()))
    options = RuntimeOptions(**json.loads((GOLDEN / case / "options.json").read_text()))
    v1, _ = build_lcow_uvm_v1(
        owner="containerd-shim-runhcs-v1", spec=spec, options=options, boot_files=BOOT, host=HOST
    )
    v2_options = RuntimeOptions(**json.loads((GOLDEN / case / "options.json").read_text()))
    v2_options.sandbox_platform = v2_options.sandbox_platform or "linux/amd64"
    v2_ann = {k: v for k, v in spec.annotations.items() if "virtualpmem" not in k}
    v2, _ = build_lcow_uvm_v2(
        owner="containerd-shim-runhcs-v1", annotations=v2_ann, options=v2_options, boot_files=BOOT, host=HOST
    )
    sid = spec.annotations.get("io.kubernetes.cri.sandbox-id", "")
    container = build_lcow_container_document(case, spec, pod_id=sid)
    return {"uvm-v1.json": v1.to_json(), "uvm-v2.json": v2.to_json(), "container.json": container.to_json()}


@pytest.mark.parametrize("case", CASES)
def test_golden_document(case: str) -> None:
    rendered = _render(case)
    for name, text in rendered.items():
        path = GOLDEN / case / name
        if os.environ.get("HCSSHIM_UPDATE_GOLDEN"):
            path.write_text(text + "\n")
        assert path.read_text().rstrip("\n") == text, f"{case}/{name} differs from the golden document"


@pytest.mark.parametrize("case", CASES)
def test_golden_documents_round_trip(case: str) -> None:
    for name in ("uvm-v1.json", "uvm-v2.json"):
        text = (GOLDEN / case / name).read_text().rstrip("\n")
        assert ComputeSystem.from_json(text).to_json() == text
    text = (GOLDEN / case / "container.json").read_text().rstrip("\n")
    assert LCOWHostedContainerSettings.from_json(text).to_json() == text


@pytest.mark.parametrize("case", ["k8s-pod-sandbox", "high-memory-vm"])
def test_golden_pipelines_agree_without_vpmem(case: str) -> None:
    assert (GOLDEN / case / "uvm-v1.json").read_text() == (GOLDEN / case / "uvm-v2.json").read_text()


def test_golden_pod_sandbox_facts() -> None:
    doc = json.loads((GOLDEN / "k8s-pod-sandbox" / "uvm-v1.json").read_text())
    topo = doc["VirtualMachine"]["ComputeTopology"]
    assert topo["Memory"]["SizeInMB"] == 2048
    assert topo["Processor"] == {"Count": 2, "Limit": 50000}
    container = json.loads((GOLDEN / "k8s-pod-sandbox" / "container.json").read_text())
    spec = container["OciSpecification"]
    assert container["OciBundlePath"] == "/run/gcs/pods/4f1c0d2e9a7b/k8s-pod-sandbox"
    assert spec["root"]["path"] == "/run/gcs/pods/4f1c0d2e9a7b/k8s-pod-sandbox/rootfs"
    assert "cgroupsPath" not in spec["linux"] and "devices" not in spec["linux"]["resources"]
    assert spec["windows"] == {"network": {"networkNamespace": "8f8e9f1c-1111-2222-3333-444455556666"}}


def test_golden_high_memory_facts() -> None:
    doc = json.loads((GOLDEN / "high-memory-vm" / "uvm-v2.json").read_text())
    memory = doc["VirtualMachine"]["ComputeTopology"]["Memory"]
    assert memory["SizeInMB"] == 65536  # 65535 rounded up to 2 MB alignment
    assert "AllowOvercommit" not in memory  # physically backed
    cmdline = doc["VirtualMachine"]["Chipset"]["LinuxKernelDirect"]["KernelCmdLine"]
    assert "transparent_hugepage=always pci=off nr_cpus=8" in cmdline
    assert cmdline.endswith("-loglevel info -disable-time-sync -scrub-logs=false")
