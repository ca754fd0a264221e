"""WCOW container documents (internal/hcsoci createWindowsContainerDocument).

A process-isolated container ("Argon") is a ComputeSystem HCS creates directly; a Hyper-V isolated
one ("Xenon") is a HostedSystem sent to the GCS inside its utility VM. The container body is the same
except for the processor ceiling (host CPUs vs the UVM's) and where the layers live.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hcsshim import annotations as an
from hcsshim.annotations import AnnotationError
from hcsshim.builder.options import BuilderError, HostInfo
from hcsshim.oci import Spec
from hcsshim.schema import (
    ComputeSystem,
    Container,
    GuestOs,
    HostedSystem,
    Layer,
    MappedDirectory,
    MappedPipe,
    Memory,
    Networking,
    Processor,
    Storage,
    StorageQoS,
    Version,
)

PIPE_PREFIX = "\\\\.\\pipe\\"


def _cpu_limits(spec: Spec, max_count: int) -> tuple[int, int, int]:
    """ConvertCPULimits: count, limit and weight are mutually exclusive."""
    a = spec.annotations
    count = an.parse_int32(a, an.CONTAINER_PROCESSOR_COUNT, 0) or max(spec.windows_cpu_count() or 0, 0)
    limit = an.parse_int32(a, an.CONTAINER_PROCESSOR_LIMIT, 0) or max(spec.windows_cpu_maximum() or 0, 0)
    weight = an.parse_int32(a, an.CONTAINER_PROCESSOR_WEIGHT, 0) or max(spec.windows_cpu_shares() or 0, 0)
    if sum(1 for v in (count, limit, weight) if v > 0) > 1:
        raise BuilderError(
            f"invalid spec - Windows Container CPU Count: '{count}', Limit: '{limit}', "
            f"and Weight: '{weight}' are mutually exclusive"
        )
    if count > 0:
        count = min(count, max_count)
    return count, limit, weight


def _container_body(
    spec: Spec,
    layers: Sequence[Layer],
    *,
    max_cpu: int,
    host_cpu: int,
    uvm_cpu: int | None,
    scale_cpu_limits_to_sandbox: bool,
    network_namespace: str,
) -> Container:
    if spec.windows is None:
        raise BuilderError("cannot create HCS container document - OCI spec Windows section is missing")
    c = Container(storage=Storage())
    assert c.storage is not None
    if spec.hostname:
        c.guest_os = GuestOs(host_name=spec.hostname)
    count, limit, weight = _cpu_limits(spec, max_cpu)
    if uvm_cpu and scale_cpu_limits_to_sandbox and limit > 0:
        limit = min(max(limit * host_cpu // uvm_cpu, 1), 10000)
    c.processor = Processor(count=count, maximum=limit, weight=weight)
    memory_mb = an.parse_uint64(spec.annotations, an.CONTAINER_MEMORY_SIZE_IN_MB, 0) or (
        (spec.windows_memory_limit() or 0) // (1024 * 1024)
    )
    if memory_mb > 0:
        c.memory = Memory(size_in_mb=memory_mb)
    bps = an.parse_int32(spec.annotations, an.CONTAINER_STORAGE_QOS_BANDWIDTH_MAXIMUM, 0) or max(
        spec.windows_storage_bps() or 0, 0
    )
    iops = an.parse_int32(spec.annotations, an.CONTAINER_STORAGE_QOS_IOPS_MAXIMUM, 0) or max(
        spec.windows_storage_iops() or 0, 0
    )
    if bps > 0 or iops > 0:
        c.storage.qos = StorageQoS(bandwidth_maximum=bps, iops_maximum=iops)
    network = spec.windows.get("network")
    if isinstance(network, dict):
        c.networking = Networking(
            namespace=network_namespace or str(network.get("networkNamespace") or ""),
            allow_unqualified_dns_query=bool(network.get("allowUnqualifiedDNSQuery", False)),
            dns_search_list=",".join(network.get("DNSSearchList") or []),
            network_shared_container_name=str(network.get("networkSharedContainerName") or ""),
        )
    root = (spec.root or {}).get("path", "")
    c.storage.path = str(root)
    c.storage.layers = list(layers)
    for mount in spec.mounts:
        source, destination = str(mount.get("source", "")), str(mount.get("destination", ""))
        options = mount.get("options") or []
        if source.startswith(PIPE_PREFIX):
            c.mapped_pipes.append(
                MappedPipe(container_pipe_name=destination.removeprefix(PIPE_PREFIX), host_path=source)
            )
        elif mount.get("type", "") in ("", "bind"):
            c.mapped_directories.append(
                MappedDirectory(host_path=source, container_path=destination, read_only="ro" in options)
            )
    return c


def build_wcow_process_container_document(
    container_id: str,
    spec: Spec | Mapping[str, Any],
    *,
    owner: str,
    layers: Sequence[Layer] = (),
    network_namespace: str = "",
    host: HostInfo | None = None,
) -> ComputeSystem:
    """A process-isolated WCOW container: the ComputeSystem HCS creates directly."""
    host = host or HostInfo()
    s = spec if isinstance(spec, Spec) else Spec.from_dict(dict(spec))
    _check_annotations(s)
    body = _container_body(
        s,
        layers,
        max_cpu=host.logical_processor_count,
        host_cpu=host.logical_processor_count,
        uvm_cpu=None,
        scale_cpu_limits_to_sandbox=False,
        network_namespace=network_namespace,
    )
    return ComputeSystem(
        owner=owner,
        schema_version=Version(major=2, minor=1),
        should_terminate_on_last_handle_closed=True,
        container=body,
    )


def build_wcow_hyperv_container_document(
    container_id: str,
    spec: Spec | Mapping[str, Any],
    *,
    uvm_processor_count: int,
    layers: Sequence[Layer] = (),
    network_namespace: str = "",
    scale_cpu_limits_to_sandbox: bool = False,
    host: HostInfo | None = None,
) -> HostedSystem:
    """A Hyper-V isolated WCOW container: the HostedSystem the UVM's GCS creates."""
    host = host or HostInfo()
    s = spec if isinstance(spec, Spec) else Spec.from_dict(dict(spec))
    _check_annotations(s)
    if uvm_processor_count <= 0:
        raise BuilderError("a Hyper-V container needs its utility VM's processor count")
    body = _container_body(
        s,
        layers,
        max_cpu=uvm_processor_count,
        host_cpu=host.logical_processor_count,
        uvm_cpu=uvm_processor_count,
        scale_cpu_limits_to_sandbox=scale_cpu_limits_to_sandbox,
        network_namespace=network_namespace,
    )
    return HostedSystem(schema_version=Version(major=2, minor=1), container=body)


def _check_annotations(spec: Spec) -> None:
    for key in (an.CONTAINER_PROCESSOR_COUNT, an.CONTAINER_PROCESSOR_LIMIT, an.CONTAINER_PROCESSOR_WEIGHT):
        an.parse_int32(spec.annotations, key, 0)
    limit = an.parse_int32(spec.annotations, an.CONTAINER_PROCESSOR_LIMIT, 0)
    if limit and not 1 <= limit <= 10000:
        raise AnnotationError(
            an.CONTAINER_PROCESSOR_LIMIT, spec.annotations[an.CONTAINER_PROCESSOR_LIMIT], "1..10000"
        )
