"""Container documents (process-isolated and Hyper-V WCOW) and the ComputeSystem root."""

# ruff: noqa: RUF009  -- j() is a dataclasses.field() carrying the Go json tag; it returns a Field, not a shared default
from __future__ import annotations

from dataclasses import dataclass

from hcsshim.schema._codec import RawJSON, SchemaObject, j
from hcsshim.schema.common import HvSocketSystemConfig, Layer, RegistryChanges, StorageQoS, Version
from hcsshim.schema.vm import VirtualMachine


@dataclass(slots=True, kw_only=True)
class GuestOs(SchemaObject):
    host_name: str = j("HostName", default="")


@dataclass(slots=True, kw_only=True)
class Storage(SchemaObject):
    layers: list[Layer] = j("Layers", factory=list)
    path: str = j("Path", default="")
    qos: StorageQoS | None = j("QoS", default=None)
    privileged_container_root_path: str = j("PrivilegedContainerRootPath", default="")


@dataclass(slots=True, kw_only=True)
class MappedDirectory(SchemaObject):
    host_path: str = j("HostPath", default="")
    host_path_type: str = j("HostPathType", default="")
    container_path: str = j("ContainerPath", default="")
    read_only: bool = j("ReadOnly", default=False)


@dataclass(slots=True, kw_only=True)
class MappedPipe(SchemaObject):
    container_pipe_name: str = j("ContainerPipeName", default="")
    host_path: str = j("HostPath", default="")
    host_path_type: str = j("HostPathType", default="")


@dataclass(slots=True, kw_only=True)
class Memory(SchemaObject):
    size_in_mb: int = j("SizeInMB", "u64", default=0)


@dataclass(slots=True, kw_only=True)
class Processor(SchemaObject):
    count: int = j("Count", "i32", default=0)
    maximum: int = j("Maximum", "i32", default=0)
    weight: int = j("Weight", "i32", default=0)


@dataclass(slots=True, kw_only=True)
class Networking(SchemaObject):
    allow_unqualified_dns_query: bool = j("AllowUnqualifiedDnsQuery", default=False)
    dns_search_list: str = j("DnsSearchList", default="")
    network_shared_container_name: str = j("NetworkSharedContainerName", default="")
    namespace: str = j("Namespace", default="")
    network_adapters: list[str] = j("NetworkAdapters", factory=list)


@dataclass(slots=True, kw_only=True)
class HvSocket(SchemaObject):
    config: HvSocketSystemConfig | None = j("Config", default=None)
    enable_power_shell_direct: bool = j("EnablePowerShellDirect", default=False)


@dataclass(slots=True, kw_only=True)
class Device(SchemaObject):
    type: str = j("Type", default="")
    interface_class_guid: str = j("InterfaceClassGuid", default="")
    location_path: str = j("LocationPath", default="")


@dataclass(slots=True, kw_only=True)
class Container(SchemaObject):
    guest_os: GuestOs | None = j("GuestOs", default=None)
    storage: Storage | None = j("Storage", default=None)
    mapped_directories: list[MappedDirectory] = j("MappedDirectories", factory=list)
    mapped_pipes: list[MappedPipe] = j("MappedPipes", factory=list)
    memory: Memory | None = j("Memory", default=None)
    processor: Processor | None = j("Processor", default=None)
    networking: Networking | None = j("Networking", default=None)
    hv_socket: HvSocket | None = j("HvSocket", default=None)
    container_credential_guard: RawJSON | None = j("ContainerCredentialGuard", default=None)
    registry_changes: RegistryChanges | None = j("RegistryChanges", default=None)
    assigned_devices: list[Device] = j("AssignedDevices", factory=list)
    additional_device_namespace: RawJSON | None = j("AdditionalDeviceNamespace", default=None)
    isolation_type: str = j("IsolationType", default="")


@dataclass(slots=True, kw_only=True)
class HostedSystem(SchemaObject):
    schema_version: Version | None = j("SchemaVersion", default=None)
    container: Container | None = j("Container", default=None)


@dataclass(slots=True, kw_only=True)
class ComputeSystem(SchemaObject):
    owner: str = j("Owner", default="")
    schema_version: Version | None = j("SchemaVersion", default=None)
    hosting_system_id: str = j("HostingSystemId", default="")
    hosted_system: HostedSystem | None = j("HostedSystem", default=None)
    container: Container | None = j("Container", default=None)
    virtual_machine: VirtualMachine | None = j("VirtualMachine", default=None)
    should_terminate_on_last_handle_closed: bool = j("ShouldTerminateOnLastHandleClosed", default=False)


@dataclass(slots=True, kw_only=True)
class LCOWHostedContainerSettings(SchemaObject):
    """The LCOW container document the GCS receives (hcsshim's vmHostedContainerSettingsV2)."""

    schema_version: Version | None = j("SchemaVersion", default=None)
    oci_bundle_path: str = j("OciBundlePath", default="")
    oci_specification: RawJSON | None = j("OciSpecification", default=None)
    scratch_dir_path: str = j("ScratchDirPath", default="")
