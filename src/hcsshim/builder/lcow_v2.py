"""The V2 pipeline: sandbox options + sandbox spec annotations → LCOW UVM document.

Follows containerd-shim-lcow-v2's internal/builder/vm/lcow.BuildSandboxConfig step by step; the
differences from V1 that upstream has too are listed in tests/unit/test_parity_lcow.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hcsshim import annotations as an
from hcsshim.annotations import AnnotationError
from hcsshim.builder.kernel_args import KernelArgsInput, kernel_args_v2
from hcsshim.builder.lcow_common import (
    DEFAULT_BIND_SD,
    NumaInput,
    confidential_parts,
    hv_socket_service_table,
    prepare_vnuma,
    scsi_controllers,
    validate_numa,
    vpci_device_ids,
    vpci_devices,
)
from hcsshim.builder.options import (
    BUILD_COLD_DISCARD_HINT,
    BUILD_KERNEL_DIRECT,
    BUILD_V21H1,
    DEFAULT_MEMORY_SIZE_IN_MB,
    INITRD_FILE,
    KERNEL_FILE,
    UNCOMPRESSED_KERNEL_FILE,
    VHD_FILE,
    BootFiles,
    BuilderError,
    ConfidentialConfig,
    HostInfo,
    RuntimeOptions,
    SandboxOptions,
    normalize_memory_size,
)
from hcsshim.hvsock.abi import SCSI_CONTROLLER_GUIDS
from hcsshim.schema import (
    Attachment,
    Chipset,
    ComPort,
    ComputeSystem,
    CpuGroup,
    Devices,
    HvSocket2,
    HvSocketSystemConfig,
    LinuxKernelDirect,
    Plan9,
    StorageQoS,
    Topology,
    Uefi,
    UefiBootEntry,
    Version,
    VirtualMachine,
    VirtualMachineMemory,
    VirtualMachineProcessor,
)

SUPPORTED_PLATFORMS = ("linux/amd64", "linux/arm64")


def process_annotations(options: RuntimeOptions, annotations: Mapping[str, str]) -> dict[str, str]:
    """Default container annotations merged under the spec's, expansions applied, V2 rejections."""
    merged = dict(annotations)
    for key, value in options.default_container_annotations.items():
        merged.setdefault(key, value)
    merged = an.expand_annotations(merged)
    for key in sorted(an.V2_REJECTED):
        if merged.get(key):
            raise AnnotationError(key, merged[key], "annotation is not supported by the V2 pipeline")
    return merged


def resolve_boot_files_root(options: RuntimeOptions, annotations: Mapping[str, str], default: str) -> str:
    """The boot files directory V2 uses: annotation, then options, then ``default``."""
    return (
        an.parse_string(annotations, an.BOOT_FILES_ROOT_PATH, "") or options.boot_files_root_path or default
    )


def build_lcow_uvm_v2(
    *,
    owner: str,
    annotations: Mapping[str, str] | None = None,
    options: RuntimeOptions | None = None,
    boot_files: BootFiles | None = None,
    boot_files_root: str | None = None,
    devices: Sequence[Mapping[str, Any]] = (),
    bundle_path: str = "",
    host: HostInfo | None = None,
) -> tuple[ComputeSystem, SandboxOptions]:
    """Build the LCOW UVM document as containerd-shim-lcow-v2 does.

    ``annotations`` are the sandbox spec's; ``options`` the sandbox's runhcs options (None means
    ``sandbox_platform="linux/amd64"`` and nothing else); ``boot_files`` lists the boot directory (a bare
    ``boot_files_root`` assumes the layout ``hcsshim uvm build`` writes); ``devices`` are the sandbox
    spec's Windows devices (``{"id": ..., "idType": ...}``); ``bundle_path`` is needed for confidential VMs.
    """
    if options is None:
        options = RuntimeOptions(sandbox_platform="linux/amd64")
    host = host or HostInfo()
    a = process_annotations(options, annotations or {})

    platform = options.sandbox_platform.lower()
    if platform not in SUPPORTED_PLATFORMS:
        raise BuilderError(f"unsupported sandbox platform {options.sandbox_platform!r}")
    arch = platform.split("/", 1)[1]

    policy = an.parse_string(a, an.LCOW_SECURITY_POLICY, "")
    sandbox = SandboxOptions(
        no_writable_file_shares=an.parse_bool(a, an.DISABLE_WRITABLE_FILE_SHARES, False),
        enable_scratch_encryption=an.parse_bool(a, an.LCOW_ENCRYPTED_SCRATCH_DISK, bool(policy)),
        policy_based_routing=an.parse_bool(a, an.NETWORKING_POLICY_BASED_ROUTING, False),
        architecture=arch,
    )
    if policy:
        sandbox.confidential_config = ConfidentialConfig(
            security_policy=policy,
            security_policy_enforcer=an.parse_string(a, an.LCOW_SECURITY_POLICY_ENFORCER, "rego"),
            uvm_reference_info_file=an.parse_string(a, an.LCOW_REFERENCE_INFO_FILE, "reference_info.cose"),
            uvm_hash_envelope_reference_info_file=an.parse_string(
                a, an.UVM_HASH_ENVELOPE_REFERENCE_INFO_FILE, "reference_info_hash_envelope.cose"
            ),
        )
    no_security_hardware = an.parse_bool(a, an.NO_SECURITY_HARDWARE, False)
    snp = bool(policy) and not no_security_hardware
    physically_backed = an.parse_bool(a, an.FULLY_PHYSICALLY_BACKED, False)
    live_migration = an.parse_bool(a, an.MIGRATION_SUPPORT_ENABLED, False)

    processor = _processor(a, options, host)
    resource_partition = an.parse_guid(a, an.RESOURCE_PARTITION_ID)
    if resource_partition is not None and processor.cpu_group is not None:
        raise AnnotationError(
            an.RESOURCE_PARTITION_ID,
            a[an.RESOURCE_PARTITION_ID],
            f"cannot be combined with {an.CPU_GROUP_ID}",
        )
    memory = _memory(a, options, host, physically_backed)
    topology = Topology(memory=memory, processor=processor)

    if not snp:
        numa, numa_processors = prepare_vnuma(NumaInput.from_annotations(a))
        if numa is not None:
            validate_numa(numa, host, memory.allow_overcommit, processor.count, memory.size_in_mb)
        topology.numa = numa
        processor.numa_processors_settings = numa_processors
        if numa is not None or numa_processors is not None:
            memory.slit_type = "FirmwareFallbackMeasured"

    iops = an.parse_int32(a, an.STORAGE_QOS_IOPS_MAXIMUM, 0)
    bandwidth = an.parse_int32(a, an.STORAGE_QOS_BANDWIDTH_MAXIMUM, 0)
    storage_qos = (
        StorageQoS(iops_maximum=iops, bandwidth_maximum=bandwidth) if iops > 0 or bandwidth > 0 else None
    )

    root = ""
    if not snp:
        if boot_files is None:
            root = resolve_boot_files_root(options, a, boot_files_root or "")
            boot_files = BootFiles(root=root)
        else:
            root = resolve_boot_files_root(options, a, boot_files.root)
            if root != boot_files.root:
                raise BuilderError(
                    f"boot files were listed for {boot_files.root!r} but the VM boots from {root!r}"
                )
        chipset, rootfs_file, kernel_direct = _boot(a, boot_files, host, arch)
    else:
        root = resolve_boot_files_root(options, a, boot_files.root if boot_files else boot_files_root or "")
        chipset, rootfs_file, kernel_direct = Chipset(), "", False

    devices_doc = Devices(scsi=scsi_controllers(len(SCSI_CONTROLLER_GUIDS)))
    if rootfs_file == VHD_FILE and boot_files is not None:
        devices_doc.scsi[SCSI_CONTROLLER_GUIDS[0]].attachments["0"] = Attachment(
            type="VirtualDisk", path=boot_files.path(VHD_FILE), read_only=True
        )
    vpmem = an.parse_uint32(a, an.VPMEM_COUNT, 0)
    if physically_backed or snp or arch == "arm64":
        vpmem = 0
    if vpmem > 0:
        raise AnnotationError(an.VPMEM_COUNT, a[an.VPMEM_COUNT], "v2 shims do not support vPMem devices")
    if not snp and devices:
        vnuma = topology.numa is not None or processor.numa_processors_settings is not None
        devices_doc.virtual_pci = vpci_devices(vpci_device_ids(devices), host, vnuma)

    service_table = hv_socket_service_table(a)
    devices_doc.hv_socket = HvSocket2(
        hv_socket_config=HvSocketSystemConfig(
            default_bind_security_descriptor=DEFAULT_BIND_SD, service_table=dict(service_table)
        )
    )
    console_pipe = an.parse_string(a, an.UVM_CONSOLE_PIPE, "")
    has_console = False
    if console_pipe and not snp:
        if not (console_pipe.startswith("\\\\.\\pipe\\") or console_pipe.startswith("/")):
            raise AnnotationError(
                an.UVM_CONSOLE_PIPE, console_pipe, "must be a named pipe or an absolute path"
            )
        devices_doc.com_ports = {"0": ComPort(named_pipe=console_pipe)}
        has_console = True

    vm = VirtualMachine(
        stop_on_reset=True,
        chipset=chipset,
        compute_topology=topology,
        devices=devices_doc,
        storage_qos=storage_qos,
        resource_partition_id=resource_partition or "",
    )
    if snp:
        parts = confidential_parts(a, policy, root, bundle_path, service_table)
        vm.chipset = parts.chipset
        vm.security_settings = parts.security
        vm.guest_state = parts.guest_state
        devices_doc.scsi[SCSI_CONTROLLER_GUIDS[0]].attachments["0"] = parts.rootfs
        devices_doc.hv_socket = HvSocket2(hv_socket_config=parts.hv_socket)
        memory.allow_overcommit = False
        sandbox.files_to_copy = parts.files_to_copy
    sandbox.fully_physically_backed = not memory.allow_overcommit

    if not snp:
        cmdline = kernel_args_v2(
            KernelArgsInput(
                rootfs_file=rootfs_file,
                kernel_direct=kernel_direct,
                processor_count=processor.count,
                log_level=options.log_level or "info",
                dm_verity_mode=an.parse_bool(a, an.DM_VERITY_MODE, False),
                dm_verity_create_args=an.parse_string(a, an.DM_VERITY_CREATE_ARGS, ""),
                console=has_console,
                kernel_boot_options=an.parse_string(a, an.KERNEL_BOOT_OPTIONS, ""),
                vpci_enabled=an.parse_bool(a, an.VPCI_ENABLED, False),
                disable_time_sync=an.parse_bool(a, an.DISABLE_LCOW_TIME_SYNC_SERVICE, False),
                scrub_logs=options.scrub_logs,
                process_dump_location=an.parse_string(a, an.CONTAINER_PROCESS_DUMP_LOCATION, ""),
                writable_overlay_dirs=an.parse_bool(a, an.WRITABLE_OVERLAY_DIRS, False),
                extra_exec_args=an.parse_string(a, an.EXTRA_LCOW_EXEC_ARGS, ""),
                live_migration=live_migration,
            )
        )
        verity = rootfs_file == VHD_FILE and an.parse_bool(a, an.DM_VERITY_MODE, False)
        if verity and not an.parse_string(a, an.DM_VERITY_CREATE_ARGS, ""):
            raise AnnotationError(
                an.DM_VERITY_MODE, a[an.DM_VERITY_MODE], f"needs {an.DM_VERITY_CREATE_ARGS}"
            )
        assert vm.chipset is not None
        if vm.chipset.linux_kernel_direct is not None:
            vm.chipset.linux_kernel_direct.kernel_cmd_line = cmdline
        elif vm.chipset.uefi is not None and vm.chipset.uefi.boot_this is not None:
            vm.chipset.uefi.boot_this.optional_data = cmdline

    if not live_migration:
        devices_doc.plan9 = Plan9()
    document = ComputeSystem(
        owner=owner,
        schema_version=Version(major=2, minor=5 if snp else 1),
        should_terminate_on_last_handle_closed=True,
        virtual_machine=vm,
    )
    return document, sandbox


def _processor(a: Mapping[str, str], options: RuntimeOptions, host: HostInfo) -> VirtualMachineProcessor:
    count = an.parse_int32(a, an.PROCESSOR_COUNT, options.vm_processor_count)
    if count <= 0:
        count = host.default_processor_count()
    count = host.normalize_processor_count(count)
    limit = an.parse_int32(a, an.PROCESSOR_LIMIT, 0)
    weight = an.parse_int32(a, an.PROCESSOR_WEIGHT, 0)
    processor = VirtualMachineProcessor(count=count, limit=limit & 0xFFFFFFFF, weight=max(weight, 0))
    group = an.parse_string(a, an.CPU_GROUP_ID, "")
    if group:
        if host.build < BUILD_V21H1:
            raise BuilderError("creating a VM in a CPU group needs Windows build 19043 or later")
        processor.cpu_group = CpuGroup(id=group)
    return processor


def _memory(
    a: Mapping[str, str], options: RuntimeOptions, host: HostInfo, physically_backed: bool
) -> VirtualMachineMemory:
    size = an.parse_uint64(a, an.MEMORY_SIZE_IN_MB, max(options.vm_memory_size_in_mb, 0))
    if size == 0:
        size = DEFAULT_MEMORY_SIZE_IN_MB
    memory = VirtualMachineMemory(
        size_in_mb=normalize_memory_size(size),
        allow_overcommit=an.parse_bool(a, an.ALLOW_OVERCOMMIT, True),
        enable_deferred_commit=an.parse_bool(a, an.ENABLE_DEFERRED_COMMIT, False),
        enable_cold_discard_hint=an.parse_bool(a, an.ENABLE_COLD_DISCARD_HINT, False),
        low_mmio_gap_in_mb=an.parse_uint64(a, an.MEMORY_LOW_MMIO_GAP_IN_MB, 0),
        high_mmio_base_in_mb=an.parse_uint64(a, an.MEMORY_HIGH_MMIO_BASE_IN_MB, 0),
        high_mmio_gap_in_mb=an.parse_uint64(a, an.MEMORY_HIGH_MMIO_GAP_IN_MB, 0),
    )
    if physically_backed:
        memory.allow_overcommit = False
    if memory.enable_deferred_commit and not memory.allow_overcommit:
        raise AnnotationError(
            an.ENABLE_DEFERRED_COMMIT,
            a.get(an.ENABLE_DEFERRED_COMMIT, ""),
            "enable_deferred_commit is not supported on physically backed vms",
        )
    if memory.enable_cold_discard_hint and host.build < BUILD_COLD_DISCARD_HINT:
        raise BuilderError("the cold discard hint needs Windows build 18967 or later")
    return memory


def _boot(a: Mapping[str, str], boot: BootFiles, host: HostInfo, arch: str) -> tuple[Chipset, str, bool]:
    if not boot.files:
        raise BuilderError(f"boot files root path {boot.root!r} does not exist or is empty")
    supported = host.build >= BUILD_KERNEL_DIRECT and arch != "arm64"
    kernel_direct = an.parse_bool(a, an.KERNEL_DIRECT_BOOT, supported)
    if kernel_direct and not supported:
        raise AnnotationError(
            an.KERNEL_DIRECT_BOOT, a[an.KERNEL_DIRECT_BOOT], "kernel direct boot is not supported"
        )
    rootfs = VHD_FILE if boot.has(VHD_FILE) else INITRD_FILE
    choice = an.parse_choice(a, an.PREFERRED_ROOTFS_TYPE, ("initrd", "vhd"), "")
    if choice:
        rootfs = VHD_FILE if choice == "vhd" else INITRD_FILE
    if not boot.has(rootfs):
        raise BuilderError(f"boot file {boot.path(rootfs)!r} not found")
    if kernel_direct:
        kernel = UNCOMPRESSED_KERNEL_FILE if boot.has(UNCOMPRESSED_KERNEL_FILE) else KERNEL_FILE
        if not boot.has(kernel):
            raise BuilderError(f"kernel {boot.path(KERNEL_FILE)!r} not found")
        direct = LinuxKernelDirect(kernel_file_path=boot.path(kernel))
        if rootfs == INITRD_FILE:
            direct.init_rd_path = boot.path(INITRD_FILE)
        return Chipset(linux_kernel_direct=direct), rootfs, True
    if not boot.has(KERNEL_FILE):
        raise BuilderError(f"kernel {boot.path(KERNEL_FILE)!r} not found")
    entry = UefiBootEntry(device_path="\\" + KERNEL_FILE, device_type="VmbFs", vmb_fs_root_path=boot.root)
    return Chipset(uefi=Uefi(boot_this=entry)), rootfs, False
