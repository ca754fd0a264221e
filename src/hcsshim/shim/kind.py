"""Which shim a process is: the binary's name, its runtime name, its serve module, and the functions that
create a pod's host and clean up after a dead one. The manager, server and task service are shared;
only these differ."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hcsshim.api.runhcs.options import runhcs_pb2
    from hcsshim.shim.host import Host, HostFactory


@dataclass(frozen=True)
class ShimKind:
    binary: str
    runtime: str
    # ``python -m <module> ... serve`` runs the server.
    module: str
    # Creates a pod's (or a standalone task's) host.
    host_factory: HostFactory
    # What ``delete`` runs (with the task id) to tear down a host whose shim is gone.
    cleanup: Callable[[str], None]
    # The upstream V2 model: the Sandbox API beside Task v3, pods made by CreateSandbox/StartSandbox
    # (shim.manager_v2, shim.service_sandbox) instead of by the first task.
    sandbox_api: bool = False


# The factories live in modules that import the builder, the bridge and the compute backend; ``start``
# and ``delete`` import this module and must stay cheap, so these wrappers import on first call.
async def _create_uvm(uvm_id: str, spec: dict[str, Any], options: runhcs_pb2.Options | None) -> Host:
    from hcsshim.shim.host import create_uvm

    return await create_uvm(uvm_id, spec, options)


def _kill_uvm(task_id: str) -> None:
    from hcsshim.shim.manager import kill_uvm

    kill_uvm(task_id)


async def _create_local_host(host_id: str, spec: dict[str, Any], options: runhcs_pb2.Options | None) -> Host:
    from hcsshim.shim.local import create_local_host

    return await create_local_host(host_id, spec, options)


def _cleanup_local_host(host_id: str) -> None:
    from hcsshim.shim.local import cleanup

    cleanup(host_id)


RUNHCS_V1 = ShimKind(
    binary="containerd-shim-runhcs-v1",
    runtime="io.containerd.runhcs.v1",
    module="hcsshim.cli.shim_runhcs_v1",
    host_factory=_create_uvm,
    cleanup=_kill_uvm,
)

PROCESS_V2 = ShimKind(
    binary="containerd-shim-process-v2",
    runtime="io.containerd.process.v2",
    module="hcsshim.cli.shim_process_v2",
    host_factory=_create_local_host,
    cleanup=_cleanup_local_host,
)


async def _no_task_host(host_id: str, spec: dict[str, Any], options: runhcs_pb2.Options | None) -> Host:
    from hcsshim import errdefs

    raise errdefs.NotImplementedKind(
        f"task {host_id}: io.containerd.lcow.v2 makes pods with CreateSandbox/StartSandbox, not with a task"
    )


LCOW_V2 = ShimKind(
    binary="containerd-shim-lcow-v2",
    runtime="io.containerd.lcow.v2",
    module="hcsshim.cli.shim_lcow_v2",
    host_factory=_no_task_host,
    # Not used: lcow-v2's delete (shim.manager_v2) finds the UVM of the sandbox's bundle.
    cleanup=_kill_uvm,
    sandbox_api=True,
)
