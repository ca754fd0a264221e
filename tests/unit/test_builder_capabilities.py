"""Backend capabilities: what a compute backend cannot realize changes the builder's defaults, exactly as
the annotation that switched it off did; an explicit annotation still wins."""

from __future__ import annotations

import pytest

from hcsshim import hcs, settings
from hcsshim.annotations import keys as an
from hcsshim.builder import (
    DEFAULT_LINUX_BOOT_FILES,
    BootFiles,
    Capabilities,
    HostInfo,
    RuntimeOptions,
    build_lcow_uvm_v1,
    build_lcow_uvm_v2,
)
from hcsshim.hvsock.abi import SCSI_CONTROLLER_GUIDS
from hcsshim.schema import ComputeSystem

HOST = HostInfo(logical_processor_count=8)
BOOT = BootFiles("/boot/uvm", DEFAULT_LINUX_BOOT_FILES)  # kernel, initrd.img, rootfs.vhd
NO_VPMEM = Capabilities(vpmem=False)


def _v1(
    annotations: dict[str, str] | None = None,
    capabilities: Capabilities | None = None,
    options: RuntimeOptions | None = None,
) -> ComputeSystem:
    doc, _ = build_lcow_uvm_v1(
        owner="o",
        spec={"linux": {}},
        annotations=annotations or {},
        options=options,
        boot_files=BOOT,
        host=HOST,
        capabilities=capabilities,
    )
    return doc


def test_without_vpmem_v1_builds_what_a_vpmem_count_of_zero_built() -> None:
    off = _v1(capabilities=NO_VPMEM)
    assert off.to_json() == _v1({an.VPMEM_COUNT: "0"}).to_json()
    devices = off.virtual_machine.devices if off.virtual_machine else None
    assert devices is not None and devices.virtual_pmem is None
    assert devices.scsi is not None and len(devices.scsi) == 4
    assert devices.scsi[SCSI_CONTROLLER_GUIDS[0]].attachments["0"].path == "/boot/uvm/rootfs.vhd"
    # ... and differs from the default, which boots the rootfs from VPMem device 0.
    default = _v1()
    assert default.to_json() == _v1(capabilities=Capabilities()).to_json()
    default_devices = default.virtual_machine.devices if default.virtual_machine else None
    assert default_devices is not None and default_devices.virtual_pmem is not None
    assert default_devices.virtual_pmem.devices["0"].host_path == "/boot/uvm/rootfs.vhd"


@pytest.mark.parametrize("count", ["64", "8"])
def test_an_explicit_vpmem_count_wins_over_the_capability(count: str) -> None:
    ann = {an.VPMEM_COUNT: count}
    assert _v1(ann, NO_VPMEM).to_json() == _v1(ann).to_json()
    # The runtime handler's default annotations are annotations too (the shim used to inject 0 ahead
    # of them; now only the backend's default changes).
    handler = RuntimeOptions(default_container_annotations=ann)
    assert _v1(capabilities=NO_VPMEM, options=handler).to_json() == _v1(ann).to_json()


def test_v2_has_no_vpmem_whatever_the_backend() -> None:
    doc, _ = build_lcow_uvm_v2(owner="o", annotations={}, boot_files=BOOT, host=HOST)
    devices = doc.virtual_machine.devices if doc.virtual_machine else None
    assert devices is not None and devices.virtual_pmem is None
    assert devices.scsi is not None and devices.scsi[SCSI_CONTROLLER_GUIDS[0]].attachments["0"].path == (
        "/boot/uvm/rootfs.vhd"
    )


def test_hcs_names_each_backends_capabilities() -> None:
    assert hcs.capabilities("qemu") == Capabilities(vpmem=False)
    assert hcs.capabilities("windows") == Capabilities()
    settings.reset(settings.Settings(hcs_backend="windows"))
    assert hcs.capabilities() == Capabilities()
    settings.reset(settings.Settings(hcs_backend="qemu"))
    assert hcs.capabilities() == NO_VPMEM


def test_an_unknown_backend_has_no_capabilities() -> None:
    with pytest.raises(hcs.ErrNotSupported, match="unknown hcs backend 'bogus'"):
        hcs.capabilities("bogus")
