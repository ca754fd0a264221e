"""Which shim a process is: the binary's name, its runtime name and where its serve mode and host
factory live. The manager, server and task service are shared; only these differ."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from hcsshim.shim.host import HostFactory


@dataclass(frozen=True)
class ShimKind:
    binary: str
    runtime: str
    # ``python -m <module> ... serve`` runs the server.
    module: str
    # ``module:function`` of the HostFactory that creates a pod's host.
    host_factory: str
    # ``module:function(task_id)`` that ``delete`` runs to tear down a host whose shim is gone.
    cleanup: str

    def factory(self) -> HostFactory:
        module, _, name = self.host_factory.partition(":")
        factory: HostFactory = getattr(importlib.import_module(module), name)
        return factory

    def cleanup_host(self, task_id: str) -> None:
        module, _, name = self.cleanup.partition(":")
        getattr(importlib.import_module(module), name)(task_id)


RUNHCS_V1 = ShimKind(
    binary="containerd-shim-runhcs-v1",
    runtime="io.containerd.runhcs.v1",
    module="hcsshim.cli.shim_runhcs_v1",
    host_factory="hcsshim.shim.host:create_uvm",
    cleanup="hcsshim.shim.manager:kill_uvm",
)

PROCESS_V2 = ShimKind(
    binary="containerd-shim-process-v2",
    runtime="io.containerd.process.v2",
    module="hcsshim.cli.shim_process_v2",
    host_factory="hcsshim.shim.local:create_local_host",
    cleanup="hcsshim.shim.local:cleanup",
)
