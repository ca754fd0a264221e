"""Hot add and remove: the host ModifySettingRequest, its resource paths, and the guest requests.

Guest request types carry the JSON names of hcsshim's internal/protocol/guestresource; several of them
have no json tag there, so their keys are the Go field names (``ContainerID``, ``NamespaceID`` ...).
"""

# ruff: noqa: RUF009  -- j() is a dataclasses.field() carrying the Go json tag; it returns a Field, not a shared default
from __future__ import annotations

from dataclasses import dataclass

from hcsshim.schema._codec import RawJSON, SchemaObject, j
from hcsshim.schema.common import Layer

# RequestType and guest ResourceType values: hcsshim.hvsock.abi (the guest reads them too).

# Host resource paths (internal/hcs/resourcepaths).
MEMORY_RESOURCE_PATH = "VirtualMachine/ComputeTopology/Memory/SizeInMB"
CPU_GROUP_RESOURCE_PATH = "VirtualMachine/ComputeTopology/Processor/CpuGroup"
CPU_LIMITS_RESOURCE_PATH = "VirtualMachine/ComputeTopology/Processor/Limits"
PLAN9_SHARE_RESOURCE_PATH = "VirtualMachine/Devices/Plan9/Shares"
VSMB_SHARE_RESOURCE_PATH = "VirtualMachine/Devices/VirtualSmb/Shares"


def scsi_resource_path(controller_guid: str, lun: int) -> str:
    return f"VirtualMachine/Devices/Scsi/{controller_guid}/Attachments/{lun}"


def vpmem_controller_resource_path(device: int) -> str:
    return f"VirtualMachine/Devices/VirtualPMem/Devices/{device}"


def vpmem_device_resource_path(device: int, mapping: int) -> str:
    return f"VirtualMachine/Devices/VirtualPMem/Devices/{device}/Mappings/{mapping}"


def network_resource_path(nic_id: str) -> str:
    return f"VirtualMachine/Devices/NetworkAdapters/{nic_id}"


def virtual_pci_resource_path(vmbus_guid: str) -> str:
    return f"VirtualMachine/Devices/VirtualPci/{vmbus_guid}"


def serial_resource_path(port: int) -> str:
    return f"VirtualMachine/Devices/ComPorts/{port}"


def hv_socket_service_resource_path(service_guid: str) -> str:
    return f"VirtualMachine/Devices/HvSocket/HvSocketConfig/ServiceTable/{service_guid}"


@dataclass(slots=True, kw_only=True)
class GuestModificationRequest(SchemaObject):
    """guestrequest.ModificationRequest: what the GCS receives in ModifySettings."""

    request_type: str = j("RequestType", default="")
    resource_type: str = j("ResourceType", default="")
    settings: RawJSON | None = j("Settings", default=None)


@dataclass(slots=True, kw_only=True)
class ModifySettingRequest(SchemaObject):
    resource_path: str = j("ResourcePath", default="")
    request_type: str = j("RequestType", default="")
    settings: RawJSON | None = j("Settings", default=None)
    guest_request: RawJSON | None = j("GuestRequest", default=None)


@dataclass(slots=True, kw_only=True)
class ProcessorLimits(SchemaObject):
    limit: int = j("Limit", "u64", default=0)
    weight: int = j("Weight", "u64", default=0)
    reservation: int = j("Reservation", "u64", default=0)
    maximum_frequency_mhz: int = j("MaximumFrequencyMHz", "u32", default=0)


@dataclass(slots=True, kw_only=True)
class DeviceVerityInfo(SchemaObject):
    ext4_size_in_bytes: int = j("Ext4SizeInBytes", "i64", default=0)
    version: int = j("Version", "i64", default=0)
    algorithm: str = j("Algorithm", default="")
    super_block: bool = j("SuperBlock", default=False)
    root_digest: str = j("RootDigest", default="")
    salt: str = j("Salt", default="")
    block_size: int = j("BlockSize", "i64", default=0)


@dataclass(slots=True, kw_only=True)
class SCSIDevice(SchemaObject):
    controller: int = j("Controller", "u8", default=0)
    lun: int = j("Lun", "u8", default=0)


@dataclass(slots=True, kw_only=True)
class LCOWMappedVirtualDisk(SchemaObject):
    mount_path: str = j("MountPath", default="")
    lun: int = j("Lun", "u8", default=0)
    controller: int = j("Controller", "u8", default=0)
    partition: int = j("Partition", "u64", default=0)
    read_only: bool = j("ReadOnly", default=False)
    encrypted: bool = j("Encrypted", default=False)
    options: list[str] = j("Options", factory=list)
    block_dev: bool = j("BlockDev", default=False)
    verity_info: DeviceVerityInfo | None = j("VerityInfo", default=None)
    ensure_filesystem: bool = j("EnsureFilesystem", default=False)
    filesystem: str = j("Filesystem", default="")


@dataclass(slots=True, kw_only=True)
class LCOWMappedDirectory(SchemaObject):
    mount_path: str = j("MountPath", default="")
    port: int = j("Port", "i32", default=0)
    share_name: str = j("ShareName", default="")
    read_only: bool = j("ReadOnly", default=False)


@dataclass(slots=True, kw_only=True)
class LCOWVPMemMappingInfo(SchemaObject):
    device_offset_in_bytes: int = j("DeviceOffsetInBytes", "u64", default=0)
    device_size_in_bytes: int = j("DeviceSizeInBytes", "u64", default=0)


@dataclass(slots=True, kw_only=True)
class LCOWMappedVPMemDevice(SchemaObject):
    device_number: int = j("DeviceNumber", "u32", default=0)
    mount_path: str = j("MountPath", default="")
    mapping_info: LCOWVPMemMappingInfo | None = j("MappingInfo", default=None)
    verity_info: DeviceVerityInfo | None = j("VerityInfo", default=None)


@dataclass(slots=True, kw_only=True)
class LCOWMappedVPCIDevice(SchemaObject):
    vmbus_guid: str = j("VMBusGUID", default="")


@dataclass(slots=True, kw_only=True)
class LCOWCombinedLayers(SchemaObject):
    container_id: str = j("ContainerID", default="")
    container_root_path: str = j("ContainerRootPath", default="")
    layers: list[Layer] = j("Layers", factory=list)
    scratch_path: str = j("ScratchPath", default="")


@dataclass(slots=True, kw_only=True)
class LCOWIPConfig(SchemaObject):
    ip_address: str = j("IPAddress", default="")
    prefix_length: int = j("PrefixLength", "u8", default=0)


@dataclass(slots=True, kw_only=True)
class LCOWRoute(SchemaObject):
    next_hop: str = j("NextHop", default="")
    destination_prefix: str = j("DestinationPrefix", default="")
    metric: int = j("Metric", "u16", default=0)


@dataclass(slots=True, kw_only=True)
class LCOWNetworkAdapter(SchemaObject):
    namespace_id: str = j("NamespaceID", default="")
    id: str = j("ID", default="")
    mac_address: str = j("MacAddress", default="")
    dns_suffix: str = j("DNSSuffix", default="")
    dns_server_list: str = j("DNSServerList", default="")
    encap_overhead: int = j("EncapOverhead", "u16", default=0)
    vpci_assigned: bool = j("VPCIAssigned", default=False)
    ip_configs: list[LCOWIPConfig] = j("IPConfigs", factory=list)
    routes: list[LCOWRoute] = j("Routes", factory=list)
    policy_based_routing: bool = j("PolicyBasedRouting", default=False)
    enable_low_metric: bool = j("EnableLowMetric", default=False)


@dataclass(slots=True, kw_only=True)
class LCOWContainerConstraints(SchemaObject):
    """OCI WindowsResources / LinuxResources as raw JSON: Go always writes both (value structs)."""

    windows: RawJSON = j("Windows", factory=dict)
    linux: RawJSON = j("Linux", factory=dict)

    def to_dict(self) -> dict[str, RawJSON]:
        # Value-typed structs are never omitted by Go's omitempty.
        return {"Windows": self.windows or {}, "Linux": self.linux or {}}


@dataclass(slots=True, kw_only=True)
class ConfidentialOptions(SchemaObject):
    enforcer_type: str = j("EnforcerType", default="")
    encoded_security_policy: str = j("EncodedSecurityPolicy", default="")
    encoded_uvm_reference: str = j("EncodedUVMReference", default="")
    encoded_uvm_hash_envelope_reference: str = j("EncodedUVMHashEnvelopeReference", default="")


@dataclass(slots=True, kw_only=True)
class SecurityPolicyFragment(SchemaObject):
    fragment: str = j("Fragment", default="")
    media_type: str = j("MediaType", default="")
