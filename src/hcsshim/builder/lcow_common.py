"""Pieces both LCOW pipelines share upstream too (vmutils NUMA, HvSocket service tables, SNP)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hcsshim import annotations as an
from hcsshim.annotations import AnnotationError
from hcsshim.builder.options import (
    BUILD_V25H1_SERVER,
    BuilderError,
    HostInfo,
    join_host_path,
)
from hcsshim.hvsock.abi import BRIDGE_PORT, ENTROPY_PORT, LOG_PORT, SCSI_CONTROLLER_GUIDS
from hcsshim.schema import (
    Attachment,
    Chipset,
    GuestState,
    HvSocketServiceConfig,
    HvSocketSystemConfig,
    IsolationSettings,
    Numa,
    NumaProcessors,
    NumaSetting,
    Range,
    Scsi,
    SecuritySettings,
    Uefi,
    VirtualPciDevice,
    VirtualPciFunction,
)

DEFAULT_BIND_SD = "D:P(A;;FA;;;SY)(A;;FA;;;BA)"
SNP_BIND_SD = "D:P(A;;FA;;;WD)"
SNP_CONNECT_SD = "D:P(A;;FA;;;SY)(A;;FA;;;BA)"
SECURE_BOOT_TEMPLATE_ID = "1734c6e8-3154-4dda-ba5f-a874cc483422"
NUMA_WILDCARD_NODE = 0xFF
# OCI windows.devices idTypes that name a device to assign to the VM over vPCI.
VPCI_DEVICE_ID_TYPES = ("vpci-instance-id", "vpci", "gpu")


def vsock_service_id(port: int) -> str:
    """winio.VsockServiceID: the HvSocket service GUID of a vsock port."""
    return f"{port:08x}-facb-11e6-bd58-64006a7986d3"


def hv_socket_service_table(a: Mapping[str, str]) -> dict[str, HvSocketServiceConfig]:
    """Service-table entries from io.microsoft.virtualmachine.hv-socket.service-table.<GUID>."""
    table: dict[str, HvSocketServiceConfig] = {}
    prefix = an.UVM_HV_SOCKET_CONFIG_PREFIX
    for key in sorted(a):
        if not key.startswith(prefix):
            continue
        value = a[key]
        try:
            service = str(uuid.UUID(key[len(prefix) :]))
        except ValueError:
            raise AnnotationError(key, value, "the key does not end in a GUID") from None
        try:
            table[service] = HvSocketServiceConfig.from_dict(json.loads(value))
        except ValueError as exc:
            raise AnnotationError(key, value, f"not an HvSocketServiceConfig: {exc}") from None
    return table


@dataclass(slots=True)
class NumaInput:
    max_processors_per_node: int = 0
    max_size_per_node: int = 0
    preferred_physical_nodes: tuple[int, ...] = ()
    mapped_physical_nodes: tuple[int, ...] = ()
    processor_counts: tuple[int, ...] = ()
    memory_block_counts: tuple[int, ...] = ()

    @classmethod
    def from_annotations(cls, a: Mapping[str, str]) -> NumaInput:
        return cls(
            max_processors_per_node=an.parse_uint32(a, an.NUMA_MAXIMUM_PROCESSORS_PER_NODE, 0),
            max_size_per_node=an.parse_uint64(a, an.NUMA_MAXIMUM_MEMORY_SIZE_PER_NODE, 0),
            preferred_physical_nodes=tuple(an.parse_csv_uint32(a, an.NUMA_PREFERRED_PHYSICAL_NODES)),
            mapped_physical_nodes=tuple(an.parse_csv_uint32(a, an.NUMA_MAPPED_PHYSICAL_NODES)),
            processor_counts=tuple(an.parse_csv_uint32(a, an.NUMA_COUNT_OF_PROCESSORS)),
            memory_block_counts=tuple(an.parse_csv_uint64(a, an.NUMA_COUNT_OF_MEMORY_BLOCKS)),
        )


def prepare_vnuma(n: NumaInput) -> tuple[Numa | None, NumaProcessors | None]:
    """vmutils.PrepareVNumaTopology: implicit (max per node) or explicit (node list) vNUMA."""
    if n.max_processors_per_node == 0 and not n.mapped_physical_nodes:
        return None, None
    if n.max_processors_per_node > 0:
        if n.max_size_per_node == 0:
            raise BuilderError("vNUMA: max memory size per node must be set with max processors per node")
        numa = Numa(
            max_size_per_node=n.max_size_per_node,
            preferred_physical_nodes=list(n.preferred_physical_nodes),
        )
        return numa, NumaProcessors(count_per_node=Range(max=n.max_processors_per_node))
    count = len(n.mapped_physical_nodes)
    if len(n.processor_counts) != count or len(n.memory_block_counts) != count:
        raise BuilderError("vNUMA: mapped nodes, processor counts and memory block counts differ in length")
    if count > 64:
        raise BuilderError("vNUMA: at most 64 virtual nodes")
    wildcard = [p == NUMA_WILDCARD_NODE for p in n.mapped_physical_nodes]
    if any(wildcard) and not all(wildcard):
        raise BuilderError("vNUMA: wildcard and explicit physical nodes cannot be mixed")
    settings = []
    for i, (phys, cpus, blocks) in enumerate(
        zip(n.mapped_physical_nodes, n.processor_counts, n.memory_block_counts, strict=True)
    ):
        if phys != NUMA_WILDCARD_NODE and phys >= 64:
            raise BuilderError(f"vNUMA: physical node {phys} is out of range")
        if blocks == 0:
            raise BuilderError(f"vNUMA: virtual node {i} has no memory")
        settings.append(
            NumaSetting(
                virtual_node_number=i,
                physical_node_number=phys,
                virtual_socket_number=i,
                count_of_processors=cpus,
                count_of_memory_blocks=blocks,
                memory_backing_type="Physical",
            )
        )
    numa = Numa(
        virtual_node_count=count,
        preferred_physical_nodes=list(n.preferred_physical_nodes),
        settings=settings,
    )
    return numa, None


def validate_numa(
    numa: Numa, host: HostInfo, allow_overcommit: bool, processors: int, memory_mb: int
) -> None:
    """A vNUMA topology needs a recent host and physical memory, and must add up to the VM's size."""
    if host.build < BUILD_V25H1_SERVER:
        raise BuilderError("vNUMA needs Windows build 26100 or later")
    if allow_overcommit:
        raise BuilderError("vNUMA supports only Physical memory backing type")
    if not numa.settings:
        return
    if sum(s.count_of_processors for s in numa.settings) != processors:
        raise BuilderError("vNUMA: processor counts do not add up to the VM's processor count")
    if sum(s.count_of_memory_blocks for s in numa.settings) != memory_mb:
        raise BuilderError("vNUMA: memory block counts do not add up to the VM's memory size")


def parse_vpci_id(device_id: str) -> tuple[str, int]:
    """vpci.GetDeviceInfoFromPath: an optional trailing ``/<n>`` is the virtual function index."""
    head, sep, tail = device_id.rpartition("/")
    if sep and tail.isdigit():
        return head, int(tail)
    return device_id, 0


def vpci_device_ids(devices: Iterable[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """``(instance path, virtual function)`` of each assignable device of an OCI ``windows.devices`` list."""
    return [
        parse_vpci_id(str(dev.get("id", "")))
        for dev in devices
        if str(dev.get("idType", "")) in VPCI_DEVICE_ID_TYPES
    ]


def vpci_devices(ids: Iterable[tuple[str, int]], host: HostInfo, numa: bool) -> dict[str, VirtualPciDevice]:
    """Assigned devices keyed by a VMBus GUID derived from the device (upstream draws a random one)."""
    out: dict[str, VirtualPciDevice] = {}
    for instance, index in ids:
        key = str(uuid.uuid5(uuid.NAMESPACE_URL, f"vpci:{instance}/{index}"))
        if key in out:
            raise BuilderError(f"device {instance} with index {index} is specified multiple times")
        out[key] = VirtualPciDevice(
            functions=[VirtualPciFunction(device_instance_path=instance, virtual_function=index)],
            propagate_numa_affinity=True if host.build >= BUILD_V25H1_SERVER and numa else None,
        )
    return out


def scsi_controllers(count: int) -> dict[str, Scsi]:
    return {guid: Scsi() for guid in SCSI_CONTROLLER_GUIDS[:count]}


def launch_data(policy: str) -> str:
    """Isolation.LaunchData: base64(sha256(base64-decoded policy))."""
    try:
        raw = base64.b64decode(policy, validate=True)
    except (binascii.Error, ValueError):
        raise AnnotationError(an.LCOW_SECURITY_POLICY, policy, "not base64") from None
    return base64.b64encode(hashlib.sha256(raw).digest()).decode()


@dataclass(slots=True)
class ConfidentialParts:
    chipset: Chipset
    security: SecuritySettings
    guest_state: GuestState
    rootfs: Attachment
    hv_socket: HvSocketSystemConfig
    files_to_copy: list[tuple[str, str]]


def confidential_parts(
    a: Mapping[str, str],
    policy: str,
    boot_root: str,
    bundle: str,
    service_table: dict[str, HvSocketServiceConfig],
) -> ConfidentialParts:
    """The SNP document pieces (builder/vm/lcow/confidential.go)."""
    vmgs = an.parse_string(a, an.LCOW_GUEST_STATE_FILE, "kernel.vmgs")
    verity_vhd = an.parse_string(a, an.DM_VERITY_ROOTFS_VHD, "rootfs.vhd")
    if not bundle:
        raise BuilderError("a confidential VM needs a bundle path for its guest state and rootfs copies")
    bundle_vmgs = join_host_path(bundle, vmgs)
    bundle_rootfs = join_host_path(bundle, "rootfs.vhd")
    table = dict(service_table)
    extra_ports = an.parse_csv_uint32(a, an.EXTRA_VSOCK_PORTS)
    for port in (ENTROPY_PORT, LOG_PORT, BRIDGE_PORT, BRIDGE_PORT + 1, *extra_ports):
        table[vsock_service_id(port)] = HvSocketServiceConfig(
            allow_wildcard_binds=True,
            bind_security_descriptor=SNP_BIND_SD,
            connect_security_descriptor=SNP_CONNECT_SD,
        )
    return ConfidentialParts(
        chipset=Chipset(
            uefi=Uefi(apply_secure_boot_template="Apply", secure_boot_template_id=SECURE_BOOT_TEMPLATE_ID)
        ),
        security=SecuritySettings(
            enable_tpm=False,
            isolation=IsolationSettings(
                isolation_type="SecureNestedPaging",
                launch_data=launch_data(policy),
                hcl_enabled=an.parse_optional_bool(a, an.LCOW_HCL_ENABLED),
            ),
        ),
        guest_state=GuestState(
            guest_state_file_path=bundle_vmgs, guest_state_file_type="FileMode", force_transient_state=True
        ),
        rootfs=Attachment(type="VirtualDisk", path=bundle_rootfs, read_only=True),
        hv_socket=HvSocketSystemConfig(
            default_bind_security_descriptor=SNP_BIND_SD,
            default_connect_security_descriptor=SNP_CONNECT_SD,
            service_table=table,
        ),
        files_to_copy=[
            (join_host_path(boot_root, vmgs), bundle_vmgs),
            (join_host_path(boot_root, verity_vhd), bundle_rootfs),
        ],
    )
