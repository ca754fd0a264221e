"""containerd's Task service (registered as both ``containerd.task.v2.Task`` and ``containerd.task.v3.Task``;
the messages are wire-identical) on top of the pod model.

Errors follow containerd's expectations (reference §1.7, §3.5): unknown ids → NotFound, duplicate exec
ids → AlreadyExists, wrong state → FailedPrecondition, unsupported calls → Unimplemented. Events go
through one ordered publisher: TaskCreate before Create returns, TaskStart before the exit watcher
runs, TaskExit after output is drained, TaskDelete last. TaskOOM (the guest reports the container's
OOM kills, see ``hcsshim.gcs.protocol.NOTIFY_OOM``) is never published before the task's TaskStart; the
guest reports a kill that ends the container before its exit, so it normally precedes that TaskExit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal as signals
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import Message

from hcsshim.api.containerd.events import task_pb2 as events
from hcsshim.api.containerd.runc.options import oci_pb2 as runc_options
from hcsshim.api.containerd.task.v2 import shim_pb2 as v2
from hcsshim.api.containerd.types.task import task_pb2 as task_types
from hcsshim.api.runhcs.options import runhcs_pb2
from hcsshim.shim import cgroup
from hcsshim.shim.cgroup import shim_cgroup
from hcsshim.shim.host import HostFactory, Pausable
from hcsshim.shim.io import ProcessIO
from hcsshim.shim.options import options_from_any
from hcsshim.shim.pod import Pod
from hcsshim.shim.process import Process, State
from hcsshim.shim.rootfs import MountSpec
from hcsshim.shim.spec import Role, read_spec, role_and_sandbox
from hcsshim.shim.stats import container_metrics
from hcsshim.shim.task import Task
from hcsshim.ttrpc import Code, Context, MethodTable, Server, TtrpcError
from hcsshim.ttrpc.status import from_exception

log = logging.getLogger("hcsshim.shim.task_service")

SERVICE_V2 = "containerd.task.v2.Task"
SERVICE_V3 = "containerd.task.v3.Task"
_STATUS = {
    State.CREATED: task_types.CREATED,
    State.RUNNING: task_types.RUNNING,
    State.STOPPED: task_types.STOPPED,
}


class EventSink(Protocol):
    def publish(self, topic: str, event: Message, *, namespace: str | None = ...) -> None: ...


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    if seconds is not None:
        ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class TaskService:
    # containerd 1.6-2.2 dial v2 and 2.x may dial v3 of a version-2 shim; the lcow-v2 shim serves v3 only.
    task_services: tuple[str, ...] = (SERVICE_V2, SERVICE_V3)

    def __init__(
        self,
        events_sink: EventSink,
        host_factory: HostFactory,
        *,
        namespace: str,
        default_options: runhcs_pb2.Options | None = None,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.events = events_sink
        self.host_factory = host_factory
        self.namespace = namespace
        self.default_options = default_options
        self.pod: Pod | None = None
        self._lock = asyncio.Lock()
        self._on_shutdown = on_shutdown
        self.shutdown_requested = False

    # ---- plumbing ------------------------------------------------------------------------------

    def publish(self, event: Message) -> None:
        from hcsshim.shim.publisher import topic_for

        self.events.publish(topic_for(event), event, namespace=self.namespace)

    def register(self, server: Server) -> None:
        # v3's messages are wire-identical to v2's: one set of request types decodes both services.
        handlers: dict[str, tuple[type[Message], Callable[[Context, Any], Awaitable[Message]]]] = {
            "State": (v2.StateRequest, self.state),
            "Create": (v2.CreateTaskRequest, self.create),
            "Start": (v2.StartRequest, self.start),
            "Delete": (v2.DeleteRequest, self.delete),
            "Pids": (v2.PidsRequest, self.pids),
            "Pause": (v2.PauseRequest, self.pause),
            "Resume": (v2.ResumeRequest, self.resume),
            "Checkpoint": (v2.CheckpointTaskRequest, self.checkpoint),
            "Kill": (v2.KillRequest, self.kill),
            "Exec": (v2.ExecProcessRequest, self.exec),
            "ResizePty": (v2.ResizePtyRequest, self.resize_pty),
            "CloseIO": (v2.CloseIORequest, self.close_io),
            "Update": (v2.UpdateTaskRequest, self.update),
            "Wait": (v2.WaitRequest, self.wait),
            "Stats": (v2.StatsRequest, self.stats),
            "Connect": (v2.ConnectRequest, self.connect),
            "Shutdown": (v2.ShutdownRequest, self.shutdown),
        }
        table: MethodTable = {name: (req, self._wrap(fn)) for name, (req, fn) in handlers.items()}
        for service in self.task_services:
            server.register(service, table)

    @staticmethod
    def _wrap(
        fn: Callable[[Context, Any], Awaitable[Message]],
    ) -> Callable[[Context, Any], Awaitable[Message]]:
        async def handler(ctx: Context, req: Any) -> Message:
            try:
                return await fn(ctx, req)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Every layer's error carries its kind (hcsshim.errdefs); ttrpc.status maps it.
                err = from_exception(exc)
                if err.code == Code.UNKNOWN:
                    log.exception("task call failed", extra={"method": ctx.method})
                raise err from exc

        return handler

    def _task(self, task_id: str) -> Task:
        return self._located(task_id)[1]

    def _located(self, task_id: str) -> tuple[Pod, Task]:
        found = self._find(task_id)
        if found is None:
            raise TtrpcError(Code.NOT_FOUND, f"task {task_id}: not found")
        return found

    # ---- where tasks live: runhcs-v1's one pod per shim (the lcow-v2 service overrides these) -----

    def _find(self, task_id: str) -> tuple[Pod, Task] | None:
        pod = self.pod
        task = pod.tasks.get(task_id) if pod is not None else None
        return (pod, task) if pod is not None and task is not None else None

    def _pods(self) -> list[Pod]:
        return [self.pod] if self.pod is not None else []

    def pods(self) -> list[Pod]:
        """Every pod this shim serves (shimdiag lists their tasks)."""
        return self._pods()

    def host_pod(self) -> Pod | None:
        """The pod whose host shimdiag's calls go into."""
        return self.pod

    async def _admit(
        self,
        task_id: str,
        spec: dict[str, Any],
        role: Role,
        sandbox_id: str,
        options: runhcs_pb2.Options | None,
    ) -> tuple[Pod, bool]:
        """The pod a new task goes into, and whether this task made it (and so owns its host)."""
        if self.pod is None:
            host = await self.host_factory(task_id, spec, options)
            self.pod = Pod(task_id, role, host, self._on_host_exit, self._on_oom)
            return self.pod, True
        self.pod.check_joinable(task_id, role, sandbox_id)
        return self.pod, False

    async def _drop_pod(self, pod: Pod) -> None:
        """The pod's owning task is gone (deleted, or its create failed): its host goes too."""
        await pod.close()
        if self.pod is pod:
            self.pod = None

    def _on_exit(self, proc: Process) -> None:
        self.publish(
            events.TaskExit(
                container_id=proc.container_id,
                id=proc.exec_id or proc.container_id,
                pid=proc.pid,
                exit_status=proc.exit_status,
                exited_at=timestamp(proc.exited_at),
            )
        )

    def _on_oom(self, task: Task) -> None:
        if task.init.state is State.CREATED:
            task.oom_pending = True  # TaskStart has not been published yet
            return
        self.publish(events.TaskOOM(container_id=task.id))

    def _on_host_exit(self, reason: str) -> None:
        log.error("pod lost its utility VM", extra={"reason": reason})

    # ---- create / start / delete ---------------------------------------------------------------

    async def create(self, ctx: Context, req: v2.CreateTaskRequest) -> v2.CreateTaskResponse:
        if req.checkpoint or req.parent_checkpoint:
            raise TtrpcError(Code.UNIMPLEMENTED, "checkpoint restore is not supported")
        async with self._lock:
            if self._find(req.id) is not None:
                raise TtrpcError(Code.ALREADY_EXISTS, f"task {req.id}: already exists")
            spec = await asyncio.to_thread(read_spec, req.bundle)
            role, sandbox_id = role_and_sandbox(spec, req.id)
            options = options_from_any(req.options if req.HasField("options") else None)
            options = options or self.default_options
            cgroup_path = shim_cgroup(req.options if req.HasField("options") else None)
            if cgroup_path and not self._pods():
                try:
                    # Before anything else runs in this shim, so QEMU or the agent start there too.
                    joined = await asyncio.to_thread(cgroup.join, cgroup_path)
                except cgroup.ShimCgroupError as exc:
                    raise TtrpcError(Code.INVALID_ARGUMENT, str(exc)) from exc
                log.info("shim joined its cgroup", extra={"cgroup": cgroup_path, "dirs": joined})
            process_spec = spec.get("process") or {}
            terminal = bool(req.terminal or process_spec.get("terminal"))
            io = ProcessIO(req.stdin, req.stdout, req.stderr, terminal)
            rootfs = [MountSpec(m.type, m.source, tuple(m.options)) for m in req.rootfs]
            pod, new_pod = await self._admit(req.id, spec, role, sandbox_id, options)
            task = Task(
                req.id,
                req.bundle,
                spec,
                role,
                pod.host,
                io,
                owns_host=new_pod,
                on_exit=self._on_exit,
            )
            try:
                await task.create(rootfs)
            except BaseException:
                if new_pod:
                    await self._drop_pod(pod)
                raise
            pod.tasks[req.id] = task
        self.publish(
            events.TaskCreate(
                container_id=req.id,
                bundle=req.bundle,
                rootfs=list(req.rootfs),
                io=events.TaskIO(
                    stdin=req.stdin, stdout=req.stdout, stderr=req.stderr, terminal=req.terminal
                ),
                checkpoint=req.checkpoint,
                pid=task.init.pid,
            )
        )
        log.info("task created", extra={"task": req.id, "role": role.value or "standalone"})
        return v2.CreateTaskResponse(pid=task.init.pid)

    async def start(self, ctx: Context, req: v2.StartRequest) -> v2.StartResponse:
        task = self._task(req.id)
        proc = task.process(req.exec_id)

        def started(p: Process) -> None:
            if p.is_init:
                self.publish(events.TaskStart(container_id=req.id, pid=p.pid))
                if task.oom_pending:
                    task.oom_pending = False
                    self.publish(events.TaskOOM(container_id=req.id))
            else:
                self.publish(events.TaskExecStarted(container_id=req.id, exec_id=p.exec_id, pid=p.pid))

        if proc.is_init:
            pid = await task.start(started)
        else:
            pid = await proc.start(task.host.bridge, started)
        return v2.StartResponse(pid=pid)

    async def delete(self, ctx: Context, req: v2.DeleteRequest) -> v2.DeleteResponse:
        pod, task = self._located(req.id)
        if req.exec_id:
            proc = await task.remove_exec(req.exec_id)
            self.publish(self._delete_event(proc))
            return self._delete_response(proc)
        proc = task.init
        if proc.state is State.RUNNING:
            raise TtrpcError(Code.FAILED_PRECONDITION, f"task {req.id} is still running")
        if task.owns_host and len(pod.tasks) > 1:
            others = sorted(t for t in pod.tasks if t != req.id)
            raise TtrpcError(Code.FAILED_PRECONDITION, f"sandbox {req.id} still has containers {others}")
        if proc.state is State.CREATED:
            proc.set_exited(255, "deleted before it was started")
        await task.delete()
        del pod.tasks[req.id]
        if task.owns_host:
            await self._drop_pod(pod)
        self.publish(self._delete_event(proc))
        log.info("task deleted", extra={"task": req.id, "status": proc.exit_status})
        return self._delete_response(proc)

    @staticmethod
    def _delete_event(proc: Process) -> events.TaskDelete:
        return events.TaskDelete(
            container_id=proc.container_id,
            pid=proc.pid,
            exit_status=proc.exit_status,
            exited_at=timestamp(proc.exited_at),
            id=proc.exec_id,
        )

    @staticmethod
    def _delete_response(proc: Process) -> v2.DeleteResponse:
        return v2.DeleteResponse(
            pid=proc.pid, exit_status=proc.exit_status, exited_at=timestamp(proc.exited_at)
        )

    # ---- processes -----------------------------------------------------------------------------

    async def exec(self, ctx: Context, req: v2.ExecProcessRequest) -> empty_pb2.Empty:
        task = self._task(req.id)
        if req.exec_id in task.execs:
            raise TtrpcError(Code.ALREADY_EXISTS, f"exec {req.exec_id}: already exists")
        try:
            oci_process = json.loads(req.spec.value or b"{}")
        except ValueError as exc:
            raise TtrpcError(Code.INVALID_ARGUMENT, f"exec {req.exec_id}: process spec: {exc}") from exc
        terminal = bool(req.terminal or oci_process.get("terminal"))
        oci_process["terminal"] = terminal
        task.add_exec(req.exec_id, ProcessIO(req.stdin, req.stdout, req.stderr, terminal), oci_process)
        self.publish(events.TaskExecAdded(container_id=req.id, exec_id=req.exec_id))
        return empty_pb2.Empty()

    async def kill(self, ctx: Context, req: v2.KillRequest) -> empty_pb2.Empty:
        task = self._task(req.id)
        await task.kill(req.exec_id, int(req.signal or signals.SIGTERM), req.all)
        return empty_pb2.Empty()

    async def resize_pty(self, ctx: Context, req: v2.ResizePtyRequest) -> empty_pb2.Empty:
        await self._task(req.id).process(req.exec_id).resize(req.width, req.height)
        return empty_pb2.Empty()

    async def close_io(self, ctx: Context, req: v2.CloseIORequest) -> empty_pb2.Empty:
        proc = self._task(req.id).process(req.exec_id)
        if req.stdin:
            proc.close_stdin()
        return empty_pb2.Empty()

    async def wait(self, ctx: Context, req: v2.WaitRequest) -> v2.WaitResponse:
        proc = self._task(req.id).process(req.exec_id)
        await proc.wait()
        return v2.WaitResponse(exit_status=proc.exit_status, exited_at=timestamp(proc.exited_at))

    async def state(self, ctx: Context, req: v2.StateRequest) -> v2.StateResponse:
        task = self._task(req.id)
        proc = task.process(req.exec_id)
        return v2.StateResponse(
            id=req.id,
            bundle=task.bundle,
            pid=proc.pid,
            status=_STATUS[proc.state],
            stdin=proc.io.stdin_path,
            stdout=proc.io.stdout_path,
            stderr=proc.io.stderr_path,
            terminal=proc.terminal,
            exit_status=proc.exit_status,
            exited_at=timestamp(proc.exited_at) if proc.exited_at is not None else None,
            exec_id=req.exec_id,
        )

    async def pids(self, ctx: Context, req: v2.PidsRequest) -> v2.PidsResponse:
        task = self._task(req.id)
        by_pid = {p.pid: p.exec_id for p in task.execs.values() if p.pid}
        infos = []
        for pid in await task.pids():
            info = task_types.ProcessInfo(pid=pid)
            exec_id = by_pid.get(pid)
            if exec_id:
                # runc's type: containerd on Linux (ctr task ps, CRI) decodes it; runhcs's is a
                # Windows-only registration and makes ``ctr task ps`` fail.
                details = runc_options.ProcessDetails(exec_id=exec_id)
                info.info.CopyFrom(
                    any_pb2.Any(type_url=details.DESCRIPTOR.full_name, value=details.SerializeToString())
                )
            infos.append(info)
        return v2.PidsResponse(processes=infos)

    # ---- whole task ----------------------------------------------------------------------------

    async def pause(self, ctx: Context, req: v2.PauseRequest) -> empty_pb2.Empty:
        system = self._own_system(*self._located(req.id), "pause")
        await system.pause()
        self.publish(events.TaskPaused(container_id=req.id))
        return empty_pb2.Empty()

    async def resume(self, ctx: Context, req: v2.ResumeRequest) -> empty_pb2.Empty:
        system = self._own_system(*self._located(req.id), "resume")
        await system.resume()
        self.publish(events.TaskResumed(container_id=req.id))
        return empty_pb2.Empty()

    def _own_system(self, pod: Pod, task: Task, what: str) -> Pausable:
        # Linux guests cannot freeze one container through the bridge; a task alone in its UVM is paused
        # by pausing the VM, which is exactly that task.
        system = task.host.system
        if not task.owns_host or len(pod.tasks) != 1 or system is None:
            raise TtrpcError(Code.UNIMPLEMENTED, f"{what} is only supported for a task alone in its UVM")
        return system

    async def checkpoint(self, ctx: Context, req: v2.CheckpointTaskRequest) -> empty_pb2.Empty:
        raise TtrpcError(Code.UNIMPLEMENTED, "checkpoint is not supported")

    async def update(self, ctx: Context, req: v2.UpdateTaskRequest) -> empty_pb2.Empty:
        task = self._task(req.id)
        if req.annotations:
            # Nothing here reads a running task's annotations again: changing them would be a no-op.
            raise TtrpcError(
                Code.UNIMPLEMENTED,
                f"Update: annotations {sorted(req.annotations)} cannot change on a running task",
            )
        if not req.HasField("resources") or not req.resources.value:
            return empty_pb2.Empty()  # nothing asked
        if not req.resources.type_url.endswith("LinuxResources"):
            raise TtrpcError(Code.INVALID_ARGUMENT, f"unsupported resources type {req.resources.type_url}")
        try:
            resources = json.loads(req.resources.value)
        except ValueError as exc:
            raise TtrpcError(Code.INVALID_ARGUMENT, f"resources: {exc}") from exc
        await task.host.bridge.update_container(req.id, resources)
        return empty_pb2.Empty()

    async def stats(self, ctx: Context, req: v2.StatsRequest) -> v2.StatsResponse:
        task = self._task(req.id)
        props = await task.host.bridge.get_properties(req.id, ["Statistics"])
        return v2.StatsResponse(stats=container_metrics(props))

    async def connect(self, ctx: Context, req: v2.ConnectRequest) -> v2.ConnectResponse:
        found = self._find(req.id)
        return v2.ConnectResponse(shim_pid=os.getpid(), task_pid=found[1].init.pid if found else 0)

    async def shutdown(self, ctx: Context, req: v2.ShutdownRequest) -> empty_pb2.Empty:
        if self.pod is not None and self.pod.tasks and not req.now:
            return empty_pb2.Empty()
        self.shutdown_requested = True
        if self._on_shutdown is not None:
            # After this response is on the wire: containerd waits for it, then closes.
            asyncio.get_running_loop().call_soon(self._on_shutdown)
        return empty_pb2.Empty()

    async def close(self) -> None:
        """Tear down whatever is left (SIGTERM, or Shutdown with now=true)."""
        for pod in self._pods():
            await self._close_pod(pod)
        log.info("shim closed at %s", time.strftime("%H:%M:%S"))

    async def _close_pod(self, pod: Pod) -> None:
        """Every task of the pod deleted (best effort), then the pod itself."""
        for task in list(pod.tasks.values()):
            try:
                await task.delete()
            except Exception as exc:
                log.warning("task cleanup failed", extra={"task": task.id, "error": exc})
        pod.tasks.clear()
        await self._drop_pod(pod)
