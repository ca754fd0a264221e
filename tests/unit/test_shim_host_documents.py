"""The documents the runhcs-v1 shim builds (shim/host.py): the builder's V1 pipeline over the handler's
boot files, the proto options converted to the builder's RuntimeOptions, and the container document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hcsshim import oci, settings
from hcsshim.api.runhcs.options import runhcs_pb2
from hcsshim.builder import RuntimeOptions
from hcsshim.hvsock.abi import SCSI_CONTROLLER_GUIDS
from hcsshim.schema import ComputeSystem
from hcsshim.shim import host
from hcsshim.shim.spec import BundleSpec, read_spec


def _boot(tmp_path: Path, *names: str) -> str:
    for name in names:
        (tmp_path / name).write_bytes(b"placeholder")
    return str(tmp_path)


def test_runtime_options_from_the_proto_keep_every_set_field() -> None:
    options = runhcs_pb2.Options(
        boot_files_root_path="/boot/uvm",
        vm_memory_size_in_mb=2048,
        vm_processor_count=3,
        NCProxyAddr="ncproxy.sock",  # upstream's spelling, not snake_case
        default_container_annotations={"k": "v"},
        scrub_logs=False,
    )
    converted = host.runtime_options(options)
    assert converted == RuntimeOptions(
        boot_files_root_path="/boot/uvm",
        vm_memory_size_in_mb=2048,
        vm_processor_count=3,
        ncproxy_addr="ncproxy.sock",
        default_container_annotations={"k": "v"},
        scrub_logs=False,
    )
    assert host.runtime_options(None) == RuntimeOptions()


def test_uvm_document_boots_from_the_handler_boot_files(tmp_path: Path) -> None:
    root = _boot(tmp_path, "kernel", "initrd.img")
    options = runhcs_pb2.Options(boot_files_root_path=root, vm_memory_size_in_mb=768)
    document = host.build_uvm_document("pod1", {}, options)
    assert isinstance(document, ComputeSystem)
    vm = document.virtual_machine
    assert vm is not None and vm.chipset is not None and vm.chipset.linux_kernel_direct is not None
    assert vm.chipset.linux_kernel_direct.kernel_file_path == f"{root}/kernel"
    assert vm.chipset.linux_kernel_direct.init_rd_path == f"{root}/initrd.img"
    assert vm.compute_topology is not None and vm.compute_topology.memory is not None
    assert vm.compute_topology.memory.size_in_mb == 768
    assert document.owner == "pod1"


def test_uvm_document_uses_the_image_cache_without_a_handler_path(tmp_path: Path) -> None:
    root = _boot(tmp_path, "kernel", "initrd.img")
    settings.reset(settings.Settings(boot_files=root))
    document = host.build_uvm_document("pod2", {"annotations": {}}, None)
    vm = document.virtual_machine
    assert vm is not None and vm.chipset is not None and vm.chipset.linux_kernel_direct is not None
    assert vm.chipset.linux_kernel_direct.kernel_file_path == f"{root}/kernel"


def test_container_document_roots_the_spec_at_the_guest_path() -> None:
    spec = {"root": {"path": "rootfs", "readonly": True}, "linux": {}, "process": {"args": ["sh"]}}
    doc = host.container_document("c1", spec, "/run/gcs/c/c1/rootfs", bundle_path="/run/gcs/c/c1")
    assert doc["OciBundlePath"] == "/run/gcs/c/c1"
    assert doc["OciSpecification"]["root"] == {"path": "/run/gcs/c/c1/rootfs", "readonly": True}
    assert doc["OciSpecification"]["process"]["args"] == ["sh"]
    assert spec["root"] == {"path": "rootfs", "readonly": True}  # the caller's spec is left alone


def test_a_vhd_rootfs_in_the_boot_files_is_attached_to_scsi_on_qemu(tmp_path: Path) -> None:
    root = _boot(tmp_path, "kernel", "initrd.img", "rootfs.vhd")
    settings.reset(settings.Settings(hcs_backend="qemu"))
    document = host.build_uvm_document("pod3", {}, runhcs_pb2.Options(boot_files_root_path=root))
    devices = document.virtual_machine.devices if document.virtual_machine else None
    assert devices is not None and devices.scsi is not None
    assert devices.virtual_pmem is None
    disk = devices.scsi[SCSI_CONTROLLER_GUIDS[0]].attachments["0"]
    assert disk.path == f"{root}/rootfs.vhd" and disk.read_only


def test_a_spec_vpmem_count_still_wins_on_qemu(tmp_path: Path) -> None:
    root = _boot(tmp_path, "kernel", "initrd.img", "rootfs.vhd")
    settings.reset(settings.Settings(hcs_backend="qemu"))
    spec = {"annotations": {"io.microsoft.virtualmachine.devices.virtualpmem.maximumcount": "4"}}
    document = host.build_uvm_document("pod4", spec, runhcs_pb2.Options(boot_files_root_path=root))
    devices = document.virtual_machine.devices if document.virtual_machine else None
    assert devices is not None and devices.virtual_pmem is not None
    assert devices.virtual_pmem.maximum_count == 4
    assert devices.virtual_pmem.devices["0"].host_path == f"{root}/rootfs.vhd"


def test_the_shim_asks_the_backend_what_it_can_do(tmp_path: Path) -> None:
    # On a backend with VPMem (Hyper-V's defaults) the same inputs keep upstream's VPMem rootfs.
    root = _boot(tmp_path, "kernel", "initrd.img", "rootfs.vhd")
    settings.reset(settings.Settings(hcs_backend="windows"))
    document = host.build_uvm_document("pod5", {}, runhcs_pb2.Options(boot_files_root_path=root))
    devices = document.virtual_machine.devices if document.virtual_machine else None
    assert devices is not None and devices.virtual_pmem is not None
    assert devices.virtual_pmem.devices["0"].host_path == f"{root}/rootfs.vhd"


def test_the_spec_create_parsed_is_the_one_the_builder_gets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _boot(tmp_path, "kernel", "initrd.img")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.1.0", "linux": {}, "annotations": {}}))
    spec = read_spec(str(bundle))
    assert isinstance(spec, BundleSpec) and spec == {"ociVersion": "1.1.0", "linux": {}, "annotations": {}}

    def parsed_again(data: object) -> oci.Spec:
        raise AssertionError("the OCI spec was parsed a second time")

    monkeypatch.setattr(oci.Spec, "from_dict", parsed_again)
    options = runhcs_pb2.Options(boot_files_root_path=root)
    document = host.build_uvm_document("pod3", spec, options)
    assert isinstance(document, ComputeSystem) and document.owner == "pod3"
    # A plain dict (the CLI's template build) is still parsed, once, there.
    with pytest.raises(AssertionError, match="parsed a second time"):
        host.build_uvm_document("pod3", {"linux": {}}, options)
