"""Properties queries (PropertyQuery) and the results HCS returns (Properties)."""

# ruff: noqa: RUF009  -- j() is a dataclasses.field() carrying the Go json tag; it returns a Field, not a shared default
from __future__ import annotations

from dataclasses import dataclass

from hcsshim.schema._codec import RawJSON, SchemaObject, j
from hcsshim.schema.common import Version

# PropertyType values (property_type.go).
PT_MEMORY = "Memory"
PT_GUEST_MEMORY = "GuestMemory"
PT_STATISTICS = "Statistics"
PT_PROCESS_LIST = "ProcessList"
PT_TERMINATE_ON_LAST_HANDLE_CLOSED = "TerminateOnLastHandleClosed"
PT_SHARED_MEMORY_REGION = "SharedMemoryRegion"
PT_CONTAINER_CREDENTIAL_GUARD = "ContainerCredentialGuard"
PT_GUEST_CONNECTION = "GuestConnection"
PT_IC_HEARTBEAT_STATUS = "ICHeartbeatStatus"
PT_PROCESSOR_TOPOLOGY = "ProcessorTopology"
PT_CPU_GROUP = "CpuGroup"
PT_SYSTEM_GUID = "SystemGUID"


@dataclass(slots=True, kw_only=True)
class PropertyQuery(SchemaObject):
    property_types: list[str] = j("PropertyTypes", factory=list)
    queries: dict[str, RawJSON] = j("Queries", factory=dict)


@dataclass(slots=True, kw_only=True)
class VmMemory(SchemaObject):
    available_memory: int = j("AvailableMemory", "i32", default=0)
    available_memory_buffer: int = j("AvailableMemoryBuffer", "i32", default=0)
    reserved_memory: int = j("ReservedMemory", "u64", default=0)
    assigned_memory: int = j("AssignedMemory", "u64", default=0)
    slp_active: bool = j("SlpActive", default=False)
    balancing_enabled: bool = j("BalancingEnabled", default=False)
    dm_operation_in_progress: bool = j("DmOperationInProgress", default=False)


@dataclass(slots=True, kw_only=True)
class MemoryInformationForVm(SchemaObject):
    virtual_node_count: int = j("VirtualNodeCount", "u32", default=0)
    virtual_machine_memory: VmMemory | None = j("VirtualMachineMemory", default=None)
    virtual_nodes: list[RawJSON] = j("VirtualNodes", factory=list)


@dataclass(slots=True, kw_only=True)
class ProcessorStats(SchemaObject):
    total_runtime_100ns: int = j("TotalRuntime100ns", "u64", default=0)
    runtime_user_100ns: int = j("RuntimeUser100ns", "u64", default=0)
    runtime_kernel_100ns: int = j("RuntimeKernel100ns", "u64", default=0)


@dataclass(slots=True, kw_only=True)
class MemoryStats(SchemaObject):
    memory_usage_commit_bytes: int = j("MemoryUsageCommitBytes", "u64", default=0)
    memory_usage_commit_peak_bytes: int = j("MemoryUsageCommitPeakBytes", "u64", default=0)
    memory_usage_private_working_set_bytes: int = j("MemoryUsagePrivateWorkingSetBytes", "u64", default=0)


@dataclass(slots=True, kw_only=True)
class StorageStats(SchemaObject):
    read_count_normalized: int = j("ReadCountNormalized", "u64", default=0)
    read_size_bytes: int = j("ReadSizeBytes", "u64", default=0)
    write_count_normalized: int = j("WriteCountNormalized", "u64", default=0)
    write_size_bytes: int = j("WriteSizeBytes", "u64", default=0)


@dataclass(slots=True, kw_only=True)
class Statistics(SchemaObject):
    # Go marshals time.Time as RFC 3339 text; it is kept as the string HCS sent.
    timestamp: str = j("Timestamp", default="")
    container_start_time: str = j("ContainerStartTime", default="")
    uptime_100ns: int = j("Uptime100ns", "u64", default=0)
    processor: ProcessorStats | None = j("Processor", default=None)
    memory: MemoryStats | None = j("Memory", default=None)
    storage: StorageStats | None = j("Storage", default=None)


@dataclass(slots=True, kw_only=True)
class ProcessDetails(SchemaObject):
    process_id: int = j("ProcessId", "i32", default=0)
    image_name: str = j("ImageName", default="")
    create_timestamp: str = j("CreateTimestamp", default="")
    user_time_100ns: int = j("UserTime100ns", "i32", default=0)
    kernel_time_100ns: int = j("KernelTime100ns", "i32", default=0)
    memory_commit_bytes: int = j("MemoryCommitBytes", "i32", default=0)
    memory_working_set_private_bytes: int = j("MemoryWorkingSetPrivateBytes", "i32", default=0)
    memory_working_set_shared_bytes: int = j("MemoryWorkingSetSharedBytes", "i32", default=0)


@dataclass(slots=True, kw_only=True)
class GuestConnectionInfo(SchemaObject):
    supported_schema_versions: list[Version] = j("SupportedSchemaVersions", factory=list)
    protocol_version: int = j("ProtocolVersion", "i32", default=0)
    guest_defined_capabilities: RawJSON | None = j("GuestDefinedCapabilities", default=None)


@dataclass(slots=True, kw_only=True)
class Properties(SchemaObject):
    id: str = j("Id", default="")
    system_type: str = j("SystemType", default="")
    runtime_os_type: str = j("RuntimeOsType", default="")
    name: str = j("Name", default="")
    owner: str = j("Owner", default="")
    runtime_id: str = j("RuntimeId", default="")
    system_guid: str = j("SystemGUID", default="")
    runtime_template_id: str = j("RuntimeTemplateId", default="")
    state: str = j("State", default="")
    stopped: bool = j("Stopped", default=False)
    exit_type: str = j("ExitType", default="")
    memory: MemoryInformationForVm | None = j("Memory", default=None)
    statistics: Statistics | None = j("Statistics", default=None)
    process_list: list[ProcessDetails] = j("ProcessList", factory=list)
    terminate_on_last_handle_closed: bool = j("TerminateOnLastHandleClosed", default=False)
    hosting_system_id: str = j("HostingSystemId", default="")
    shared_memory_region_info: list[RawJSON] = j("SharedMemoryRegionInfo", factory=list)
    guest_connection_info: GuestConnectionInfo | None = j("GuestConnectionInfo", default=None)
    property_responses: dict[str, RawJSON] = j("PropertyResponses", factory=dict)
    lcow_metrics: RawJSON | None = j("LCOWMetrics", default=None)
