"""The pod: one UVM and the tasks in it (runhcs-v1's one-pod-per-shim model).

The first task a shim creates decides the pod: a CRI sandbox task creates the pod's UVM and owns it, a
task without CRI annotations gets a UVM of its own; later tasks must be CRI containers of that sandbox.
The UVM goes away with the task that owns it. If it dies first, every live process of the pod ends
(status 255) with the VM's exit reason, and containerd hears a TaskExit for each.

The pod listens to the guest's bridge notifications and hands OOM kills (``OomKilled``) of its tasks'
containers to ``on_oom`` (the task service publishes TaskOOM).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from hcsshim import errdefs
from hcsshim.gcs.connection import OomKill
from hcsshim.shim import network
from hcsshim.shim.host import Host
from hcsshim.shim.process import State
from hcsshim.shim.spec import Role
from hcsshim.shim.task import Task

log = logging.getLogger("hcsshim.shim.pod")


class PodError(Exception):
    """The pod cannot take the request in its state (a task that cannot join, a dead UVM)."""

    kind = errdefs.Kind.FAILED_PRECONDITION


class Pod:
    def __init__(
        self,
        pod_id: str,
        role: Role,
        host: Host,
        on_host_exit: Callable[[str], None],
        on_oom: Callable[[Task], None] | None = None,
    ) -> None:
        self.id = pod_id
        self.role = role
        self.host = host
        self.tasks: dict[str, Task] = {}
        self.dead_reason = ""
        self._on_host_exit = on_host_exit
        self._closing = False
        self._on_oom = on_oom
        # Exits are observed through WaitForProcess; OOM kills only come as notifications.
        host.subscribe(on_oom=self._on_oom_kill)
        self._watch = asyncio.create_task(self._watch_host(), name=f"watch uvm {pod_id}")

    def check_joinable(self, task_id: str, role: Role, sandbox_id: str) -> None:
        """A new task may join only as a CRI container of this pod's running sandbox."""
        if role is not Role.CONTAINER:
            raise PodError(
                f"task {task_id}: this shim already serves {self.id}; only pod containers can join"
            )
        if self.role is not Role.SANDBOX or sandbox_id != self.id:
            raise PodError(f"task {task_id} belongs to sandbox {sandbox_id}, this shim serves {self.id}")
        if self.dead_reason:
            raise PodError(f"pod {self.id}: {self.dead_reason}")
        sandbox = self.tasks.get(self.id)
        if sandbox is None or sandbox.init.state is not State.RUNNING:
            raise PodError(f"sandbox task {self.id} is not running")

    def _on_oom_kill(self, event: OomKill) -> None:
        """The guest's OOM kills (called from the bridge's reader, in order with the responses)."""
        cid = event.container_id
        task = self.tasks.get(cid)
        if task is None:
            log.info("OOM kill in a container this pod does not know", extra={"pod": self.id, "task": cid})
            return
        log.warning("task OOM kill", extra={"pod": self.id, "task": cid})
        if self._on_oom is not None:
            self._on_oom(task)

    async def _watch_host(self) -> None:
        try:
            await self.host.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("waiting for the uvm failed", extra={"pod": self.id, "error": exc})
        if self._closing:
            return
        self.dead_reason = self.host.exit_reason()
        log.error("uvm exited under live tasks", extra={"pod": self.id, "reason": self.dead_reason})
        # The bridge fails pending waits, which normally ends every process; this covers processes
        # whose waiter has not started yet (created but never started).
        for task in list(self.tasks.values()):
            for proc in [task.init, *task.execs.values()]:
                if proc.state is not State.STOPPED:
                    proc.set_exited(255, self.dead_reason)
        self._on_host_exit(self.dead_reason)

    async def close(self) -> None:
        """Terminate the UVM (the owning task was deleted, or the shim is shutting down)."""
        self._closing = True
        self._watch.cancel()
        with contextlib.suppress(BaseException):
            await self._watch
        await network.detach(self.host.id)
        try:
            await self.host.terminate()
        except Exception as exc:
            log.warning("uvm terminate failed", extra={"pod": self.id, "error": exc})
        await network.release(self.host.id)
        log.info("uvm terminated", extra={"pod": self.id})
