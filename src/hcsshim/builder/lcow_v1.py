"""The V1 pipeline: runhcs Options + OCI spec annotations → UVM options → LCOW UVM document.

Mirrors containerd-shim-runhcs-v1: oci.UpdateSpecFromOptions, oci.ProcessAnnotations,
oci.SpecToUVMCreateOpts (annotations with spec.Windows.Resources fallbacks), uvm.VerifyOptions and
uvm.MakeLCOWDoc. The intermediate :class:`UvmOptionsLCOW` is public so the shim can log it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hcsshim import annotations as an
from hcsshim.builder.kernel_args import KernelArgsInput, kernel_args_v1
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
    BUILD_19H1,
    BUILD_KERNEL_DIRECT,
    BUILD_RS5,
    BUILD_V21H1,
    DEFAULT_MEMORY_SIZE_IN_MB,
    DEFAULT_VPMEM_COUNT,
    DEFAULT_VPMEM_SIZE_BYTES,
    INITRD_FILE,
    KERNEL_FILE,
    MAX_VPMEM_COUNT,
    UNCOMPRESSED_KERNEL_FILE,
    VHD_FILE,
    BootFiles,
    BuilderError,
    Capabilities,
    ConfidentialConfig,
    HostInfo,
    RuntimeOptions,
    SandboxOptions,
    normalize_memory_size,
)
from hcsshim.hvsock.abi import SCSI_CONTROLLER_GUIDS
from hcsshim.oci import Spec
from hcsshim.schema import (
    Attachment,
    Chipset,
    ComPort,
    ComputeSystem,
    CpuGroup,
    Devices,
    Empty,
    HvSocket2,
    HvSocketServiceConfig,
    HvSocketSystemConfig,
    LinuxKernelDirect,
    Numa,
    NumaProcessors,
    Plan9,
    StorageQoS,
    Topology,
    Uefi,
    UefiBootEntry,
    Version,
    VideoMonitor,
    VirtualMachine,
    VirtualMachineMemory,
    VirtualMachineProcessor,
    VirtualPMemController,
    VirtualPMemDevice,
)


@dataclass(slots=True)
class UvmOptionsLCOW:
    """uvm.OptionsLCOW: the V1 pipeline's intermediate form."""

    id: str
    owner: str
    boot_files_path: str = ""
    memory_size_in_mb: int = DEFAULT_MEMORY_SIZE_IN_MB
    low_mmio_gap_in_mb: int = 0
    high_mmio_base_in_mb: int = 0
    high_mmio_gap_in_mb: int = 0
    allow_overcommit: bool = True
    enable_deferred_commit: bool = False
    fully_physically_backed: bool = False
    processor_count: int = 2
    processor_limit: int = 0
    processor_weight: int = 0
    storage_qos_iops_maximum: int = 0
    storage_qos_bandwidth_maximum: int = 0
    cpu_group_id: str = ""
    network_config_proxy: str = ""
    process_dump_location: str = ""
    no_writable_file_shares: bool = False
    dump_directory_path: str = ""
    console_pipe: str = ""
    enable_graphics_console: bool = False
    numa: NumaInput = field(default_factory=NumaInput)
    additional_hyperv_config: dict[str, HvSocketServiceConfig] = field(default_factory=dict)
    resource_partition_id: str | None = None
    kernel_file: str = KERNEL_FILE
    kernel_direct: bool = True
    rootfs_file: str = INITRD_FILE
    preferred_rootfs_type: str = "initrd"  # "initrd", "vhd" or "" (confidential)
    kernel_boot_options: str = ""
    # The gcs command line is "/bin/gcs -v4 -log-format json -loglevel <log_level> [extra args]".
    log_level: str = "info"
    extra_exec_args: str = ""
    enable_cold_discard_hint: bool = False
    vpmem_device_count: int = DEFAULT_VPMEM_COUNT
    vpmem_size_bytes: int = DEFAULT_VPMEM_SIZE_BYTES
    vpmem_no_multi_mapping: bool = False
    vpci_enabled: bool = False
    extra_vsock_ports: list[int] = field(default_factory=list)
    enable_scratch_encryption: bool = False
    security_policy: str = ""
    security_policy_enabled: bool = False
    security_policy_enforcer: str = ""
    uvm_reference_info_file: str = "reference_info.cose"
    uvm_hash_envelope_reference_info_file: str = "reference_info_hash_envelope.cose"
    disable_time_sync_service: bool = False
    writable_overlay_dirs: bool = False
    guest_state_file: str = ""
    dm_verity_rootfs_vhd: str = ""
    dm_verity_mode: bool = False
    dm_verity_create_args: str = ""
    hcl_enabled: bool | None = None
    assigned_devices: list[tuple[str, int]] = field(default_factory=list)
    policy_based_routing: bool = False
    scrub_logs: bool | None = None


def update_spec_from_options(spec: Spec, options: RuntimeOptions) -> None:
    """oci.UpdateSpecFromOptions: options become annotations unless the spec already sets them."""
    a = spec.annotations
    if options.boot_files_root_path:
        a.setdefault(an.BOOT_FILES_ROOT_PATH, options.boot_files_root_path)
    if options.vm_processor_count != 0:
        a.setdefault(an.PROCESSOR_COUNT, str(options.vm_processor_count))
    if options.vm_memory_size_in_mb != 0:
        a.setdefault(an.MEMORY_SIZE_IN_MB, str(options.vm_memory_size_in_mb))
    if options.ncproxy_addr:
        a.setdefault(an.NETWORK_CONFIG_PROXY, options.ncproxy_addr)
    for key, value in options.default_container_annotations.items():
        a.setdefault(key, value)


def spec_to_uvm_options(
    spec: Spec,
    uvm_id: str,
    owner: str,
    options: RuntimeOptions,
    boot: BootFiles,
    host: HostInfo,
    capabilities: Capabilities | None = None,
) -> UvmOptionsLCOW:
    """oci.SpecToUVMCreateOpts for LCOW (annotations over spec.Windows.Resources over defaults)."""
    if not spec.is_lcow():
        raise BuilderError("the spec has no linux section: not an LCOW container")
    a = spec.annotations
    arm64 = host.arch == "arm64"
    vpmem = not arm64 and (capabilities or Capabilities()).vpmem
    o = UvmOptionsLCOW(
        id=uvm_id,
        owner=owner,
        processor_count=host.default_processor_count(),
        kernel_direct=host.build >= BUILD_KERNEL_DIRECT and not arm64,
        # Upstream's default count where the backend has VPMem; an annotation below still wins.
        vpmem_device_count=DEFAULT_VPMEM_COUNT if vpmem else 0,
        vpmem_no_multi_mapping=host.build < BUILD_19H1,
        log_level=options.logrus_level(),
        scrub_logs=options.scrub_logs,
    )
    # Common (specToUVMCreateOptionsCommon).
    o.memory_size_in_mb = (
        an.parse_uint64(a, an.MEMORY_SIZE_IN_MB, 0)
        or _mb(spec.windows_memory_limit())
        or (o.memory_size_in_mb)
    )
    o.low_mmio_gap_in_mb = an.parse_uint64(a, an.MEMORY_LOW_MMIO_GAP_IN_MB, 0)
    o.high_mmio_base_in_mb = an.parse_uint64(a, an.MEMORY_HIGH_MMIO_BASE_IN_MB, 0)
    o.high_mmio_gap_in_mb = an.parse_uint64(a, an.MEMORY_HIGH_MMIO_GAP_IN_MB, 0)
    o.allow_overcommit = an.parse_bool(a, an.ALLOW_OVERCOMMIT, o.allow_overcommit)
    o.enable_deferred_commit = an.parse_bool(a, an.ENABLE_DEFERRED_COMMIT, False)
    o.processor_count = (
        an.parse_int32(a, an.PROCESSOR_COUNT, 0) or _pos(spec.windows_cpu_count()) or o.processor_count
    )
    o.processor_limit = an.parse_int32(a, an.PROCESSOR_LIMIT, 0) or _pos(spec.windows_cpu_maximum())
    o.processor_weight = an.parse_int32(a, an.PROCESSOR_WEIGHT, 0) or _pos(spec.windows_cpu_shares())
    o.storage_qos_bandwidth_maximum = an.parse_int32(a, an.STORAGE_QOS_BANDWIDTH_MAXIMUM, 0) or _pos(
        spec.windows_storage_bps()
    )
    o.storage_qos_iops_maximum = an.parse_int32(a, an.STORAGE_QOS_IOPS_MAXIMUM, 0) or _pos(
        spec.windows_storage_iops()
    )
    o.cpu_group_id = an.parse_string(a, an.CPU_GROUP_ID, "")
    o.network_config_proxy = an.parse_string(a, an.NETWORK_CONFIG_PROXY, "")
    o.process_dump_location = an.parse_string(a, an.CONTAINER_PROCESS_DUMP_LOCATION, "")
    o.no_writable_file_shares = an.parse_bool(a, an.DISABLE_WRITABLE_FILE_SHARES, False)
    o.dump_directory_path = an.parse_string(a, an.DUMP_DIRECTORY_PATH, "")
    o.console_pipe = an.parse_string(a, an.UVM_CONSOLE_PIPE, "")
    o.numa = NumaInput.from_annotations(a)
    o.additional_hyperv_config = hv_socket_service_table(a)
    o.resource_partition_id = an.parse_guid(a, an.RESOURCE_PARTITION_ID)
    # LCOW.
    o.enable_cold_discard_hint = an.parse_bool(a, an.ENABLE_COLD_DISCARD_HINT, False)
    o.vpmem_device_count = an.parse_uint32(a, an.VPMEM_COUNT, o.vpmem_device_count)
    o.vpmem_size_bytes = an.parse_uint64(a, an.VPMEM_SIZE, o.vpmem_size_bytes)
    o.vpmem_no_multi_mapping = an.parse_bool(a, an.VPMEM_NO_MULTI_MAPPING, o.vpmem_no_multi_mapping)
    o.vpci_enabled = an.parse_bool(a, an.VPCI_ENABLED, False)
    o.extra_vsock_ports = an.parse_csv_uint32(a, an.EXTRA_VSOCK_PORTS)
    o.boot_files_path = an.parse_string(a, an.BOOT_FILES_ROOT_PATH, "") or boot.root
    if o.boot_files_path != boot.root:
        raise BuilderError(
            f"boot files were listed for {boot.root!r} but the VM boots from {o.boot_files_path!r}"
        )
    # UpdateBootFilesPath: a rootfs.vhd wins over the initrd; kernel direct prefers vmlinux.
    if boot.has(VHD_FILE):
        o.rootfs_file, o.preferred_rootfs_type = VHD_FILE, "vhd"
    if o.kernel_direct and boot.has(UNCOMPRESSED_KERNEL_FILE):
        o.kernel_file = UNCOMPRESSED_KERNEL_FILE
    o.enable_scratch_encryption = an.parse_bool(a, an.LCOW_ENCRYPTED_SCRATCH_DISK, False)
    o.security_policy = an.parse_string(a, an.LCOW_SECURITY_POLICY, "")
    o.security_policy_enforcer = an.parse_string(a, an.LCOW_SECURITY_POLICY_ENFORCER, "")
    o.uvm_reference_info_file = an.parse_string(a, an.LCOW_REFERENCE_INFO_FILE, o.uvm_reference_info_file)
    o.uvm_hash_envelope_reference_info_file = an.parse_string(
        a, an.UVM_HASH_ENVELOPE_REFERENCE_INFO_FILE, o.uvm_hash_envelope_reference_info_file
    )
    o.kernel_boot_options = an.parse_string(a, an.KERNEL_BOOT_OPTIONS, "")
    o.disable_time_sync_service = an.parse_bool(a, an.DISABLE_LCOW_TIME_SYNC_SERVICE, False)
    o.writable_overlay_dirs = an.parse_bool(a, an.WRITABLE_OVERLAY_DIRS, False)
    choice = an.parse_choice(a, an.PREFERRED_ROOTFS_TYPE, ("initrd", "vhd"), "")
    if choice:
        o.preferred_rootfs_type = choice
        o.rootfs_file = VHD_FILE if choice == "vhd" else INITRD_FILE
    o.kernel_direct = an.parse_bool(a, an.KERNEL_DIRECT_BOOT, o.kernel_direct)
    if not o.kernel_direct:
        o.kernel_file = KERNEL_FILE
    o.fully_physically_backed = an.parse_bool(a, an.FULLY_PHYSICALLY_BACKED, False)
    if o.fully_physically_backed:
        o.allow_overcommit = False
        o.vpmem_device_count = 0
    o.extra_exec_args = an.parse_string(a, an.EXTRA_LCOW_EXEC_ARGS, "")
    # handleLCOWSecurityPolicy: confidential mode rewrites settings it cannot honour.
    no_security_hardware = an.parse_bool(a, an.NO_SECURITY_HARDWARE, False)
    o.security_policy_enabled = bool(o.security_policy)
    if o.security_policy_enabled and not no_security_hardware:
        o.vpmem_device_count = 0
        o.guest_state_file = "kernel.vmgs"
        o.kernel_boot_options = ""
        o.allow_overcommit = False
        o.preferred_rootfs_type = ""
        o.rootfs_file = ""
        o.dm_verity_rootfs_vhd = "rootfs.vhd"
        o.dm_verity_mode = True
    if o.security_policy_enabled:
        o.enable_scratch_encryption = an.parse_bool(a, an.LCOW_ENCRYPTED_SCRATCH_DISK, True)
    o.guest_state_file = an.parse_string(a, an.LCOW_GUEST_STATE_FILE, o.guest_state_file)
    o.dm_verity_rootfs_vhd = an.parse_string(a, an.DM_VERITY_ROOTFS_VHD, o.dm_verity_rootfs_vhd)
    o.dm_verity_mode = an.parse_bool(a, an.DM_VERITY_MODE, o.dm_verity_mode)
    o.dm_verity_create_args = an.parse_string(a, an.DM_VERITY_CREATE_ARGS, "")
    o.hcl_enabled = an.parse_optional_bool(a, an.LCOW_HCL_ENABLED)
    o.assigned_devices = _devices(spec)
    o.policy_based_routing = an.parse_bool(a, an.NETWORKING_POLICY_BASED_ROUTING, False)
    return o


def verify_options(o: UvmOptionsLCOW, host: HostInfo) -> None:
    """uvm.VerifyOptions for LCOW."""
    if o.enable_deferred_commit and not o.allow_overcommit:
        raise BuilderError("EnableDeferredCommit is not supported on physically backed VMs")
    if o.vpmem_device_count > MAX_VPMEM_COUNT:
        raise BuilderError(f"VPMem device count cannot be greater than {MAX_VPMEM_COUNT}")
    if o.vpmem_device_count > 0 and o.vpmem_size_bytes % 4096 != 0:
        raise BuilderError("VPMemSizeBytes must be a multiple of 4096")
    if o.kernel_direct and host.build < BUILD_KERNEL_DIRECT:
        raise BuilderError("KernelDirectBoot is not supported on builds older than 18286")
    if o.enable_cold_discard_hint and host.build < 18967:
        raise BuilderError("EnableColdDiscardHint is not supported on builds older than 18967")
    if o.resource_partition_id is not None and o.cpu_group_id:
        raise BuilderError("resource partition ID and CPU group ID cannot be set at the same time")


def make_lcow_doc(o: UvmOptionsLCOW, boot: BootFiles, host: HostInfo, bundle_path: str = "") -> ComputeSystem:
    """uvm.MakeLCOWDoc (and the confidential variant when a policy needs security hardware)."""
    scsi_count = 4 if host.build >= BUILD_RS5 and o.vpmem_device_count == 0 else 1
    confidential = o.security_policy_enabled and o.preferred_rootfs_type == ""
    kernel_path = boot.path(o.kernel_file)
    rootfs_path = boot.path(o.rootfs_file) if o.rootfs_file else ""
    if not confidential:
        if not boot.has(o.kernel_file):
            raise BuilderError(f"kernel: {kernel_path!r} not found")
        if not boot.has(o.rootfs_file):
            raise BuilderError(f"boot file: {rootfs_path!r} not found")
    count = host.normalize_processor_count(o.processor_count)
    processor = VirtualMachineProcessor(
        count=count, limit=o.processor_limit & 0xFFFFFFFF, weight=max(0, o.processor_weight)
    )
    if o.cpu_group_id:
        if host.build < BUILD_V21H1:
            raise BuilderError("CPU group creation is not supported on this build")
        processor.cpu_group = CpuGroup(id=o.cpu_group_id)
    numa: Numa | None = None
    numa_processors: NumaProcessors | None = None
    if not confidential:
        numa, numa_processors = prepare_vnuma(o.numa)
    memory_mb = normalize_memory_size(o.memory_size_in_mb)
    if numa is not None:
        validate_numa(numa, host, o.allow_overcommit, processor.count, memory_mb)
    processor.numa_processors_settings = numa_processors
    memory = VirtualMachineMemory(
        size_in_mb=memory_mb,
        allow_overcommit=o.allow_overcommit,
        enable_deferred_commit=o.enable_deferred_commit,
        enable_cold_discard_hint=o.enable_cold_discard_hint,
        low_mmio_gap_in_mb=o.low_mmio_gap_in_mb,
        high_mmio_base_in_mb=o.high_mmio_base_in_mb,
        high_mmio_gap_in_mb=o.high_mmio_gap_in_mb,
    )
    if numa is not None or numa_processors is not None:
        memory.slit_type = "FirmwareFallbackMeasured"
    devices = Devices(
        hv_socket=HvSocket2(
            hv_socket_config=HvSocketSystemConfig(
                default_bind_security_descriptor=DEFAULT_BIND_SD,
                service_table=dict(o.additional_hyperv_config),
            )
        ),
        plan9=Plan9(),
    )
    vm = VirtualMachine(
        stop_on_reset=True,
        chipset=Chipset(),
        compute_topology=Topology(memory=memory, processor=processor, numa=numa),
        devices=devices,
        resource_partition_id=o.resource_partition_id or "",
    )
    if o.assigned_devices and not confidential:
        vnuma = numa is not None or numa_processors is not None
        devices.virtual_pci = vpci_devices(o.assigned_devices, host, vnuma)
    if o.storage_qos_bandwidth_maximum > 0 or o.storage_qos_iops_maximum > 0:
        vm.storage_qos = StorageQoS(
            iops_maximum=o.storage_qos_iops_maximum, bandwidth_maximum=o.storage_qos_bandwidth_maximum
        )
    devices.scsi = scsi_controllers(scsi_count)
    if o.vpmem_device_count > 0:
        devices.virtual_pmem = VirtualPMemController(
            maximum_count=o.vpmem_device_count, maximum_size_bytes=o.vpmem_size_bytes
        )
    document = ComputeSystem(
        owner=o.owner,
        schema_version=Version(major=2, minor=5 if confidential else 1),
        should_terminate_on_last_handle_closed=True,
        virtual_machine=vm,
    )
    if confidential:
        policy_annotations = {an.EXTRA_VSOCK_PORTS: ",".join(str(p) for p in o.extra_vsock_ports)}
        if o.hcl_enabled is not None:
            policy_annotations[an.LCOW_HCL_ENABLED] = str(o.hcl_enabled).lower()
        policy_annotations[an.LCOW_GUEST_STATE_FILE] = o.guest_state_file
        policy_annotations[an.DM_VERITY_ROOTFS_VHD] = o.dm_verity_rootfs_vhd
        parts = confidential_parts(
            policy_annotations, o.security_policy, boot.root, bundle_path, o.additional_hyperv_config
        )
        vm.chipset = parts.chipset
        vm.security_settings = parts.security
        vm.guest_state = parts.guest_state
        devices.scsi[SCSI_CONTROLLER_GUIDS[0]].attachments["0"] = parts.rootfs
        devices.hv_socket = HvSocket2(hv_socket_config=parts.hv_socket)
        memory.allow_overcommit = False
        return document

    vpmem_rootfs = False
    if o.preferred_rootfs_type == "vhd":
        if o.vpmem_device_count > 0:
            vpmem_rootfs = True
            fmt = "Vhdx" if o.rootfs_file.lower().endswith(".vhdx") else "Vhd1"
            assert devices.virtual_pmem is not None
            devices.virtual_pmem.devices = {
                "0": VirtualPMemDevice(host_path=rootfs_path, read_only=True, image_format=fmt)
            }
        else:
            if o.dm_verity_mode and not o.dm_verity_create_args:
                raise BuilderError(
                    "DmVerityCreateArgs must be set when DmVerityMode is true"
                    " and not booting from a vmgs file."
                )
            devices.scsi[SCSI_CONTROLLER_GUIDS[0]].attachments["0"] = Attachment(
                type="VirtualDisk", path=rootfs_path, read_only=True
            )
    if o.console_pipe:
        devices.com_ports = {"0": ComPort(named_pipe=o.console_pipe)}
    if o.enable_graphics_console:
        devices.keyboard = Empty()
        devices.enhanced_mode_video = Empty()
        devices.video_monitor = VideoMonitor()
    cmdline = kernel_args_v1(
        KernelArgsInput(
            rootfs_file=o.rootfs_file if o.preferred_rootfs_type else "",
            kernel_direct=o.kernel_direct,
            processor_count=o.processor_count,
            log_level=o.log_level,
            vpmem_rootfs=vpmem_rootfs,
            dm_verity_mode=o.dm_verity_mode,
            dm_verity_create_args=o.dm_verity_create_args,
            console=bool(o.console_pipe),
            arm64=host.arch == "arm64",
            graphics_console=o.enable_graphics_console,
            kernel_boot_options=o.kernel_boot_options,
            vpci_enabled=o.vpci_enabled,
            disable_time_sync=o.disable_time_sync_service,
            scrub_logs=o.scrub_logs,
            process_dump_location=o.process_dump_location,
            writable_overlay_dirs=o.writable_overlay_dirs,
            extra_exec_args=o.extra_exec_args,
        )
    )
    if not o.kernel_direct:
        vm.chipset = Chipset(
            uefi=Uefi(
                boot_this=UefiBootEntry(
                    device_path="\\" + o.kernel_file,
                    device_type="VmbFs",
                    vmb_fs_root_path=boot.root,
                    optional_data=cmdline,
                )
            )
        )
    else:
        direct = LinuxKernelDirect(kernel_file_path=kernel_path, kernel_cmd_line=cmdline)
        if o.preferred_rootfs_type == "initrd":
            direct.init_rd_path = rootfs_path
        vm.chipset = Chipset(linux_kernel_direct=direct)
    return document


def build_lcow_uvm_v1(
    *,
    owner: str,
    spec: Spec | Mapping[str, Any],
    options: RuntimeOptions | None = None,
    boot_files: BootFiles,
    annotations: Mapping[str, str] | None = None,
    uvm_id: str = "",
    bundle_path: str = "",
    host: HostInfo | None = None,
    capabilities: Capabilities | None = None,
) -> tuple[ComputeSystem, SandboxOptions]:
    """Build the LCOW UVM document as containerd-shim-runhcs-v1 does for a pod sandbox.

    ``spec`` is the sandbox container's OCI spec (its ``annotations`` are replaced by ``annotations``
    when given); ``boot_files`` lists the directory the VM boots from; ``uvm_id`` defaults to
    ``<owner>@vm``; ``capabilities`` are the compute backend's (default: everything, as upstream).
    The SandboxOptions are derived the way the V2 pipeline reports them, for parity.
    """
    host = host or HostInfo()
    options = options or RuntimeOptions()
    s = spec.copy() if isinstance(spec, Spec) else Spec.from_dict(dict(spec))
    if annotations is not None:
        s.annotations = dict(annotations)
    update_spec_from_options(s, options)
    s.annotations = an.expand_annotations(s.annotations)
    o = (
        spec_to_uvm_options(s, uvm_id or f"{owner}@vm", owner, options, boot, host, capabilities)
        if (boot := boot_files)
        else None
    )
    assert o is not None
    verify_options(o, host)
    document = make_lcow_doc(o, boot_files, host, bundle_path)
    sandbox = SandboxOptions(
        no_writable_file_shares=o.no_writable_file_shares,
        enable_scratch_encryption=o.enable_scratch_encryption,
        policy_based_routing=o.policy_based_routing,
        architecture=host.arch,
        fully_physically_backed=not o.allow_overcommit,
    )
    if o.security_policy_enabled:
        sandbox.confidential_config = ConfidentialConfig(
            security_policy=o.security_policy,
            security_policy_enforcer=o.security_policy_enforcer or "rego",
            uvm_reference_info_file=o.uvm_reference_info_file,
            uvm_hash_envelope_reference_info_file=o.uvm_hash_envelope_reference_info_file,
        )
    return document, sandbox


def _mb(limit_bytes: int | None) -> int:
    return limit_bytes // (1024 * 1024) if limit_bytes and limit_bytes > 0 else 0


def _pos(value: int | None) -> int:
    return value if value is not None and value > 0 else 0


def _devices(spec: Spec) -> list[tuple[str, int]]:
    return vpci_device_ids(d for d in (spec.windows or {}).get("devices") or [] if isinstance(d, dict))
