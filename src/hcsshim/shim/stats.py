"""Task.Stats as containerd's Linux CRI reads it.

containerd (1.6 to 2.x) decodes the Any with typeurl and accepts only the cgroups Metrics types, under
their bare proto names ``io.containerd.cgroups.v1.Metrics`` and ``io.containerd.cgroups.v2.Metrics``;
upstream hcsshim's ``containerd.runhcs.stats.v1.Statistics`` is a Windows-host type that Linux
containerd cannot resolve. The guest (cgroup v2 in the UVM) sends its v2 figures beside upstream's
v1-shaped ``LCOWMetrics``; a guest without them (cgroup v1, or an upstream GCS) gets the v1 type.

The VM's own figures (QEMU's RSS, the guest's memory) are not a container's cgroup and stay out of
this answer; ``vm_statistics`` gives them upstream's shape for the Sandbox API's SandboxMetrics.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from hcsshim.api.cgroups.v1 import metrics_pb2 as cgroups_v1
from hcsshim.api.cgroups.v2 import metrics_pb2 as cgroups_v2
from hcsshim.api.runhcs.stats import stats_pb2
from hcsshim.gcs.protocol import CGROUP_V2_METRICS_KEY


def _pack(message: Message) -> any_pb2.Any:
    return any_pb2.Any(type_url=message.DESCRIPTOR.full_name, value=message.SerializeToString())


def container_metrics(properties: dict[str, Any]) -> any_pb2.Any:
    """The Stats Any from a guest's ``Statistics`` properties."""
    v2 = properties.get(CGROUP_V2_METRICS_KEY)
    if isinstance(v2, dict):
        metrics2 = cgroups_v2.Metrics()
        json_format.ParseDict(v2, metrics2, ignore_unknown_fields=True)
        return _pack(metrics2)
    metrics1 = cgroups_v1.Metrics()
    json_format.ParseDict(properties.get("LCOWMetrics") or {}, metrics1, ignore_unknown_fields=True)
    return _pack(metrics1)


def vm_statistics(properties: dict[str, Any]) -> stats_pb2.VirtualMachineStatistics:
    """Upstream's ``VirtualMachineStatistics`` from a compute system's properties (HCS schema2:
    ``Statistics.Processor.TotalRuntime100ns``, ``Statistics.Memory``, ``Memory.VirtualMachineMemory``)."""
    statistics = properties.get("Statistics") or {}
    processor = statistics.get("Processor") or {}
    memory = statistics.get("Memory") or {}
    vm_memory = (properties.get("Memory") or {}).get("VirtualMachineMemory") or {}
    return stats_pb2.VirtualMachineStatistics(
        processor=stats_pb2.VirtualMachineProcessorStatistics(
            total_runtime_ns=int(processor.get("TotalRuntime100ns") or 0) * 100
        ),
        memory=stats_pb2.VirtualMachineMemoryStatistics(
            working_set_bytes=int(memory.get("MemoryUsagePrivateWorkingSetBytes") or 0),
            vm_memory=stats_pb2.VirtualMachineMemory(
                available_memory=int(vm_memory.get("AvailableMemory") or 0),
                available_memory_buffer=int(vm_memory.get("AvailableMemoryBuffer") or 0),
                reserved_memory=int(vm_memory.get("ReservedMemory") or 0),
                assigned_memory=int(vm_memory.get("AssignedMemory") or 0),
                slp_active=bool(vm_memory.get("SlpActive")),
                balancing_enabled=bool(vm_memory.get("BalancingEnabled")),
                dm_operation_in_progress=bool(vm_memory.get("DmOperationInProgress")),
            ),
        ),
    )


def pack(message: Message) -> any_pb2.Any:
    """An Any under the bare full proto name (containerd's typeurl registry resolves those)."""
    return _pack(message)
