"""The utility VM part of a ComputeSystem document (internal/hcs/schema2, VirtualMachine and below)."""

# ruff: noqa: RUF009  -- j() is a dataclasses.field() carrying the Go json tag; it returns a Field, not a shared default
from __future__ import annotations

from dataclasses import dataclass

from hcsshim.schema._codec import RawJSON, SchemaObject, j
from hcsshim.schema.common import HvSocketSystemConfig, RegistryChanges, StorageQoS, Version


@dataclass(slots=True, kw_only=True)
class LinuxKernelDirect(SchemaObject):
    kernel_file_path: str = j("KernelFilePath", default="")
    init_rd_path: str = j("InitRdPath", default="")
    kernel_cmd_line: str = j("KernelCmdLine", default="")


@dataclass(slots=True, kw_only=True)
class UefiBootEntry(SchemaObject):
    device_type: str = j("DeviceType", default="")
    device_path: str = j("DevicePath", default="")
    disk_number: int = j("DiskNumber", "i32", default=0)
    optional_data: str = j("OptionalData", default="")
    vmb_fs_root_path: str = j("VmbFsRootPath", default="")


@dataclass(slots=True, kw_only=True)
class Uefi(SchemaObject):
    enable_debugger: bool = j("EnableDebugger", default=False)
    apply_secure_boot_template: str = j("ApplySecureBootTemplate", default="")
    secure_boot_template_id: str = j("SecureBootTemplateId", default="")
    boot_this: UefiBootEntry | None = j("BootThis", default=None)
    console: str = j("Console", default="")


@dataclass(slots=True, kw_only=True)
class FirmwareFile(SchemaObject):
    parameters: str = j("Parameters", default="")


@dataclass(slots=True, kw_only=True)
class Chipset(SchemaObject):
    uefi: Uefi | None = j("Uefi", default=None)
    is_num_lock_disabled: bool = j("IsNumLockDisabled", default=False)
    base_board_serial_number: str = j("BaseBoardSerialNumber", default="")
    chassis_serial_number: str = j("ChassisSerialNumber", default="")
    chassis_asset_tag: str = j("ChassisAssetTag", default="")
    use_utc: bool = j("UseUtc", default=False)
    linux_kernel_direct: LinuxKernelDirect | None = j("LinuxKernelDirect", default=None)
    firmware_file: FirmwareFile | None = j("FirmwareFile", default=None)


@dataclass(slots=True, kw_only=True)
class VirtualMachineMemory(SchemaObject):
    size_in_mb: int = j("SizeInMB", "u64", default=0)
    backing: str | None = j("Backing", default=None)
    allow_overcommit: bool = j("AllowOvercommit", default=False)
    enable_hot_hint: bool = j("EnableHotHint", default=False)
    enable_cold_hint: bool = j("EnableColdHint", default=False)
    enable_cold_discard_hint: bool = j("EnableColdDiscardHint", default=False)
    enable_deferred_commit: bool = j("EnableDeferredCommit", default=False)
    low_mmio_gap_in_mb: int = j("LowMmioGapInMB", "u64", default=0)
    high_mmio_base_in_mb: int = j("HighMmioBaseInMB", "u64", default=0)
    high_mmio_gap_in_mb: int = j("HighMmioGapInMB", "u64", default=0)
    slit_type: str | None = j("SlitType", default=None)


@dataclass(slots=True, kw_only=True)
class CpuGroup(SchemaObject):
    id: str = j("Id", default="")


@dataclass(slots=True, kw_only=True)
class Range(SchemaObject):
    max: int = j("max", "u32", default=0)


@dataclass(slots=True, kw_only=True)
class NumaProcessors(SchemaObject):
    count_per_node: Range = j("count_per_node", factory=Range)
    node_per_socket: int = j("node_per_socket", "u32", default=0)


@dataclass(slots=True, kw_only=True)
class VirtualMachineProcessor(SchemaObject):
    count: int = j("Count", "u32", default=0)
    limit: int = j("Limit", "u64", default=0)
    weight: int = j("Weight", "u64", default=0)
    reservation: int = j("Reservation", "u64", default=0)
    cpu_group: CpuGroup | None = j("CpuGroup", default=None)
    numa_processors_settings: NumaProcessors | None = j("NumaProcessorsSettings", default=None)


@dataclass(slots=True, kw_only=True)
class NumaSetting(SchemaObject):
    virtual_node_number: int = j("VirtualNodeNumber", "u32", default=0)
    physical_node_number: int = j("PhysicalNodeNumber", "u32", default=0)
    virtual_socket_number: int = j("VirtualSocketNumber", "u32", default=0)
    count_of_processors: int = j("CountOfProcessors", "u32", default=0)
    count_of_memory_blocks: int = j("CountOfMemoryBlocks", "u64", default=0)
    memory_backing_type: str = j("MemoryBackingType", default="")


@dataclass(slots=True, kw_only=True)
class Numa(SchemaObject):
    virtual_node_count: int = j("VirtualNodeCount", "u8", default=0)
    preferred_physical_nodes: list[int] = j("PreferredPhysicalNodes", "i64", factory=list)
    settings: list[NumaSetting] = j("Settings", factory=list)
    max_size_per_node: int = j("MaxSizePerNode", "u64", default=0)


@dataclass(slots=True, kw_only=True)
class Topology(SchemaObject):
    memory: VirtualMachineMemory | None = j("Memory", default=None)
    processor: VirtualMachineProcessor | None = j("Processor", default=None)
    numa: Numa | None = j("Numa", default=None)


@dataclass(slots=True, kw_only=True)
class ComPort(SchemaObject):
    named_pipe: str = j("NamedPipe", default="")
    optimize_for_debugger: bool = j("OptimizeForDebugger", default=False)


@dataclass(slots=True, kw_only=True)
class Attachment(SchemaObject):
    type: str = j("Type", default="")
    path: str = j("Path", default="")
    ignore_flushes: bool = j("IgnoreFlushes", default=False)
    caching_mode: str = j("CachingMode", default="")
    no_write_hardening: bool = j("NoWriteHardening", default=False)
    disable_expansion_optimization: bool = j("DisableExpansionOptimization", default=False)
    ignore_relative_locator: bool = j("IgnoreRelativeLocator", default=False)
    capture_io_attribution_context: bool = j("CaptureIoAttributionContext", default=False)
    read_only: bool = j("ReadOnly", default=False)
    support_compressed_volumes: bool = j("SupportCompressedVolumes", default=False)
    always_allow_sparse_files: bool = j("AlwaysAllowSparseFiles", default=False)
    extensible_virtual_disk_type: str = j("ExtensibleVirtualDiskType", default="")


@dataclass(slots=True, kw_only=True)
class Scsi(SchemaObject):
    attachments: dict[str, Attachment] = j("Attachments", factory=dict)


@dataclass(slots=True, kw_only=True)
class VirtualPMemDevice(SchemaObject):
    host_path: str = j("HostPath", default="")
    read_only: bool = j("ReadOnly", default=False)
    image_format: str = j("ImageFormat", default="")


@dataclass(slots=True, kw_only=True)
class VirtualPMemMapping(SchemaObject):
    host_path: str = j("HostPath", default="")
    image_format: str = j("ImageFormat", default="")


@dataclass(slots=True, kw_only=True)
class VirtualPMemController(SchemaObject):
    devices: dict[str, VirtualPMemDevice] = j("Devices", factory=dict)
    maximum_count: int = j("MaximumCount", "u32", default=0)
    maximum_size_bytes: int = j("MaximumSizeBytes", "u64", default=0)
    backing: str = j("Backing", default="")


@dataclass(slots=True, kw_only=True)
class IovSettings(SchemaObject):
    offload_weight: int | None = j("OffloadWeight", "u32", default=None)
    queue_pairs_requested: int | None = j("QueuePairsRequested", "u32", default=None)
    interrupt_moderation: str | None = j("InterruptModeration", default=None)


@dataclass(slots=True, kw_only=True)
class NetworkAdapter(SchemaObject):
    endpoint_id: str = j("EndpointId", default="")
    mac_address: str = j("MacAddress", default="")
    iov_settings: IovSettings | None = j("IovSettings", default=None)


@dataclass(slots=True, kw_only=True)
class HvSocket2(SchemaObject):
    hv_socket_config: HvSocketSystemConfig | None = j("HvSocketConfig", default=None)


@dataclass(slots=True, kw_only=True)
class VirtualSmbShareOptions(SchemaObject):
    read_only: bool = j("ReadOnly", default=False)
    share_read: bool = j("ShareRead", default=False)
    cache_io: bool = j("CacheIo", default=False)
    no_oplocks: bool = j("NoOplocks", default=False)
    take_backup_privilege: bool = j("TakeBackupPrivilege", default=False)
    use_share_root_identity: bool = j("UseShareRootIdentity", default=False)
    no_directmap: bool = j("NoDirectmap", default=False)
    no_locks: bool = j("NoLocks", default=False)
    no_dirnotify: bool = j("NoDirnotify", default=False)
    vm_shared_memory: bool = j("VmSharedMemory", default=False)
    restrict_file_access: bool = j("RestrictFileAccess", default=False)
    force_level_ii_oplocks: bool = j("ForceLevelIIOplocks", default=False)
    reparse_base_layer: bool = j("ReparseBaseLayer", default=False)
    pseudo_oplocks: bool = j("PseudoOplocks", default=False)
    non_cache_io: bool = j("NonCacheIo", default=False)
    pseudo_dirnotify: bool = j("PseudoDirnotify", default=False)
    single_file_mapping: bool = j("SingleFileMapping", default=False)


@dataclass(slots=True, kw_only=True)
class VirtualSmbShare(SchemaObject):
    name: str = j("Name", default="")
    path: str = j("Path", default="")
    allowed_files: list[str] = j("AllowedFiles", factory=list)
    options: VirtualSmbShareOptions | None = j("Options", default=None)


@dataclass(slots=True, kw_only=True)
class VirtualSmb(SchemaObject):
    shares: list[VirtualSmbShare] = j("Shares", factory=list)
    direct_file_mapping_in_mb: int = j("DirectFileMappingInMB", "i64", default=0)


@dataclass(slots=True, kw_only=True)
class Plan9Share(SchemaObject):
    name: str = j("Name", default="")
    access_name: str = j("AccessName", default="")
    path: str = j("Path", default="")
    port: int = j("Port", "i32", default=0)
    flags: int = j("Flags", "i32", default=0)
    allowed_files: list[str] = j("AllowedFiles", factory=list)


@dataclass(slots=True, kw_only=True)
class Plan9(SchemaObject):
    shares: list[Plan9Share] = j("Shares", factory=list)


@dataclass(slots=True, kw_only=True)
class VirtualPciFunction(SchemaObject):
    device_instance_path: str = j("DeviceInstancePath", default="")
    virtual_function: int = j("VirtualFunction", "u16", default=0)


@dataclass(slots=True, kw_only=True)
class VirtualPciDevice(SchemaObject):
    functions: list[VirtualPciFunction] = j("Functions", factory=list)
    propagate_numa_affinity: bool | None = j("PropagateNumaAffinity", default=None)


@dataclass(slots=True, kw_only=True)
class Empty(SchemaObject):
    """Devices with no settings (Keyboard, Mouse, Battery ...) that are switched on by being present."""


@dataclass(slots=True, kw_only=True)
class VideoMonitor(SchemaObject):
    horizontal_resolution: int = j("HorizontalResolution", "u16", default=0)
    vertical_resolution: int = j("VerticalResolution", "u16", default=0)
    connection_options: RawJSON | None = j("ConnectionOptions", default=None)


@dataclass(slots=True, kw_only=True)
class Devices(SchemaObject):
    com_ports: dict[str, ComPort] = j("ComPorts", factory=dict)
    scsi: dict[str, Scsi] = j("Scsi", factory=dict)
    virtual_pmem: VirtualPMemController | None = j("VirtualPMem", default=None)
    network_adapters: dict[str, NetworkAdapter] = j("NetworkAdapters", factory=dict)
    video_monitor: VideoMonitor | None = j("VideoMonitor", default=None)
    keyboard: Empty | None = j("Keyboard", default=None)
    mouse: Empty | None = j("Mouse", default=None)
    hv_socket: HvSocket2 | None = j("HvSocket", default=None)
    enhanced_mode_video: Empty | None = j("EnhancedModeVideo", default=None)
    guest_crash_reporting: Empty | None = j("GuestCrashReporting", default=None)
    virtual_smb: VirtualSmb | None = j("VirtualSmb", default=None)
    plan9: Plan9 | None = j("Plan9", default=None)
    battery: Empty | None = j("Battery", default=None)
    virtual_pci: dict[str, VirtualPciDevice] = j("VirtualPci", factory=dict)


@dataclass(slots=True, kw_only=True)
class GuestState(SchemaObject):
    guest_state_file_path: str = j("GuestStateFilePath", default="")
    guest_state_file_type: str = j("GuestStateFileType", default="")
    runtime_state_file_path: str = j("RuntimeStateFilePath", default="")
    force_transient_state: bool = j("ForceTransientState", default=False)


@dataclass(slots=True, kw_only=True)
class RestoreState(SchemaObject):
    save_state_file_path: str = j("SaveStateFilePath", default="")
    template_system_id: str = j("TemplateSystemId", default="")


@dataclass(slots=True, kw_only=True)
class DebugOptions(SchemaObject):
    bugcheck_saved_state_file_name: str = j("BugcheckSavedStateFileName", default="")
    bugcheck_no_crashdump_saved_state_file_name: str = j("BugcheckNoCrashdumpSavedStateFileName", default="")
    triple_fault_saved_state_file_name: str = j("TripleFaultSavedStateFileName", default="")
    firmware_dump_file_name: str = j("FirmwareDumpFileName", default="")


@dataclass(slots=True, kw_only=True)
class GuestConnection(SchemaObject):
    use_vsock: bool = j("UseVsock", default=False)
    use_connected_suspend: bool = j("UseConnectedSuspend", default=False)


@dataclass(slots=True, kw_only=True)
class IsolationSettings(SchemaObject):
    isolation_type: str = j("IsolationType", default="")
    debug_host: str = j("DebugHost", default="")
    debug_port: int = j("DebugPort", "i64", default=0)
    launch_data: str = j("LaunchData", default="")
    hcl_enabled: bool | None = j("HclEnabled", default=None)


@dataclass(slots=True, kw_only=True)
class SecuritySettings(SchemaObject):
    enable_tpm: bool = j("EnableTpm", default=False)
    isolation: IsolationSettings | None = j("Isolation", default=None)


@dataclass(slots=True, kw_only=True)
class VirtualMachine(SchemaObject):
    version: Version | None = j("Version", default=None)
    stop_on_reset: bool = j("StopOnReset", default=False)
    chipset: Chipset | None = j("Chipset", default=None)
    compute_topology: Topology | None = j("ComputeTopology", default=None)
    devices: Devices | None = j("Devices", default=None)
    guest_state: GuestState | None = j("GuestState", default=None)
    restore_state: RestoreState | None = j("RestoreState", default=None)
    registry_changes: RegistryChanges | None = j("RegistryChanges", default=None)
    storage_qos: StorageQoS | None = j("StorageQoS", default=None)
    debug_options: DebugOptions | None = j("DebugOptions", default=None)
    guest_connection: GuestConnection | None = j("GuestConnection", default=None)
    security_settings: SecuritySettings | None = j("SecuritySettings", default=None)
    resource_partition_id: str = j("ResourcePartitionId", default="")
