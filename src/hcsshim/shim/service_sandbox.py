"""containerd-shim-lcow-v2's services: containerd's Sandbox API (``containerd.runtime.sandbox.v1.Sandbox``)
and Task API v3 over one utility VM that holds several pods (reference hcsshim-v2.md §1.4-1.8).

- The UVM is built by the V2 pipeline (``builder.build_lcow_uvm_v2``) from the first sandbox's
  annotations and runtime options (``CreateSandboxRequest.options`` = runhcs ``Options``, else the
  runtime handler's options the shim got on ``start``); CreateSandbox creates it, StartSandbox boots it
  (restored from its template when templates are on).
- Every sandbox is a pod in that UVM (``shim.pod_host.PodHost``): StartSandbox attaches its NICs
  (``netns_path``) and starts its sandbox container (own network/IPC/UTS namespaces, cgroup
  ``/pods/<pod>``, bundles ``/run/gcs/pods/<pod>/<container>``). Pod containers are Task v3 Creates with
  CRI's annotations (``io.kubernetes.cri.container-type=container``, ``io.kubernetes.cri.sandbox-id``),
  served by the same task logic as runhcs-v1 (``shim.service_task.TaskService``).
- StopSandbox kills that pod's processes and tears down its sandbox container and NICs; the other pods
  keep running. ShutdownSandbox deletes what is left of the pod; after the last one the UVM is
  terminated and the shim exits once the reply is sent.
- SandboxStatus: ``SANDBOX_READY`` while the pod runs in a live UVM, else ``SANDBOX_NOTREADY``.
- SandboxMetrics: the UVM's own figures (QEMU's CPU time and working set, its assigned memory) as
  upstream's VirtualMachineStatistics; a pod's containers report theirs through Task Stats.
- PingSandbox answers Unimplemented, as upstream's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import signal as signals
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import Message

from hcsshim.api.containerd.sandbox.v1 import sandbox_pb2 as sb
from hcsshim.api.containerd.task.v2 import shim_pb2 as v2
from hcsshim.api.containerd.types import metrics_pb2, platform_pb2
from hcsshim.api.runhcs.options import runhcs_pb2
from hcsshim.network import PodNetwork
from hcsshim.shim import foreign_types
from hcsshim.shim.host import Host
from hcsshim.shim.options import OPTIONS_TYPE, OptionsError, type_matches, unpack_options
from hcsshim.shim.pod import Pod
from hcsshim.shim.pod_host import PodHost, SharedVM, oom_router
from hcsshim.shim.process import State
from hcsshim.shim.service_task import SERVICE_V3, EventSink, TaskService, timestamp
from hcsshim.shim.spec import Role
from hcsshim.shim.stats import pack, vm_statistics
from hcsshim.shim.task import Task
from hcsshim.ttrpc import Code, Context, MethodTable, Server, TtrpcError

log = logging.getLogger("hcsshim.shim.sandbox_service")

SERVICE = sb.DESCRIPTOR.services_by_name["Sandbox"].full_name
OWNER = "containerd-shim-lcow-v2"
READY = "SANDBOX_READY"
NOTREADY = "SANDBOX_NOTREADY"
# upstream: windows.ERROR_INTERNAL_ERROR when the VM exited with an error.
VM_FAILED_STATUS = 1359
STOP_KILL_WAIT = 10.0
POD_SANDBOX_CONFIG = foreign_types.POD_SANDBOX_CONFIG
# Annotations that configure the UVM itself (upstream's io.microsoft.virtualmachine.*, and ours).
VM_ANNOTATIONS = ("io.microsoft.virtualmachine.", "io.hcsshim.virtualmachine.")

# Creates (does not start) the shim's UVM: (uvm id, sandbox annotations, runtime options) ->
# (the VM, its architecture as SandboxOptions says).
VmFactory = Callable[[str, dict[str, str], runhcs_pb2.Options | None], Awaitable[tuple[SharedVM, str]]]


class SandboxState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass
class Sandbox:
    id: str
    bundle: str
    annotations: dict[str, str]
    hostname: str
    netns_path: str
    state: SandboxState = SandboxState.CREATED
    created_at: float | None = None
    exited_at: float | None = None
    exit_status: int = 0
    pod: Pod | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def mark_stopped(self, status: int) -> None:
        if self.state is SandboxState.STOPPED:
            return
        self.state = SandboxState.STOPPED
        self.exit_status = status
        self.exited_at = time.time()
        self.stopped.set()


def pod_sandbox_config(value: any_pb2.Any) -> tuple[str, dict[str, str]]:
    """(hostname, annotations) of the PodSandboxConfig containerd's CRI passes as the sandbox options."""
    try:
        return foreign_types.pod_sandbox_config(value.value)
    except ValueError as exc:
        raise TtrpcError(Code.INVALID_ARGUMENT, f"CreateSandbox: options {value.type_url}: {exc}") from exc


def read_sandbox_spec(bundle: str) -> dict[str, str]:
    """Annotations of the bundle's ``config.json``: upstream's sandbox spec ``{annotations, devices}``
    (or an OCI spec); containerd's CRI writes none."""
    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise TtrpcError(Code.INVALID_ARGUMENT, f"CreateSandbox: {bundle}/config.json: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("annotations") or {}, dict):
        raise TtrpcError(
            Code.INVALID_ARGUMENT, f"CreateSandbox: {bundle}/config.json: annotations is not a map"
        )
    return {str(k): str(v) for k, v in (data.get("annotations") or {}).items()}


async def _not_a_host(task_id: str, spec: dict[str, Any], options: runhcs_pb2.Options | None) -> Host:
    raise TtrpcError(Code.INTERNAL, f"task {task_id}: lcow-v2 pods get their host from StartSandbox")


class SandboxShimService(TaskService):
    """The Sandbox API and Task v3 over one UVM with a pod per sandbox."""

    task_services = (SERVICE_V3,)

    def __init__(
        self,
        events_sink: EventSink,
        vm_factory: VmFactory,
        *,
        namespace: str,
        uvm_id: str,
        default_options: runhcs_pb2.Options | None = None,
        on_shutdown: Callable[[], None] | None = None,
        log_bundle: str = "",
        relog: Callable[[str], object] | None = None,
    ) -> None:
        super().__init__(
            events_sink,
            _not_a_host,
            namespace=namespace,
            default_options=default_options,
            on_shutdown=on_shutdown,
        )
        self.vm_factory = vm_factory
        self.uvm_id = uvm_id
        self.vm: SharedVM | None = None
        self.architecture = ""
        self.vm_started = False
        self.vm_failed = ""
        # The VM-level annotations the UVM was built with (the first sandbox's).
        self.vm_annotations: dict[str, str] = {}
        self.sandboxes: dict[str, Sandbox] = {}
        self._sandbox_lock = asyncio.Lock()
        self._vm_lock = asyncio.Lock()
        self._register_oom, self._dispatch_oom = oom_router(self._owner_of)
        # The shim logs to the ``log`` FIFO of the bundle it was started in; containerd reads that only
        # while that sandbox lives, so when it goes the log moves to a remaining sandbox's bundle.
        self.log_bundle = log_bundle
        self._relog = relog

    # ---- registration ----------------------------------------------------------------------------

    def register(self, server: Server) -> None:
        super().register(server)
        handlers: dict[str, tuple[type[Message], Callable[[Context, Any], Awaitable[Message]]]] = {
            "CreateSandbox": (sb.CreateSandboxRequest, self.create_sandbox),
            "StartSandbox": (sb.StartSandboxRequest, self.start_sandbox),
            "Platform": (sb.PlatformRequest, self.platform),
            "StopSandbox": (sb.StopSandboxRequest, self.stop_sandbox),
            "WaitSandbox": (sb.WaitSandboxRequest, self.wait_sandbox),
            "SandboxStatus": (sb.SandboxStatusRequest, self.sandbox_status),
            "PingSandbox": (sb.PingRequest, self.ping_sandbox),
            "ShutdownSandbox": (sb.ShutdownSandboxRequest, self.shutdown_sandbox),
            "SandboxMetrics": (sb.SandboxMetricsRequest, self.sandbox_metrics),
        }
        table: MethodTable = {name: (req, self._wrap(fn)) for name, (req, fn) in handlers.items()}
        server.register(SERVICE, table)

    # ---- the pods, for the task logic ------------------------------------------------------------

    def _find(self, task_id: str) -> tuple[Pod, Task] | None:
        for pod in self._pods():
            task = pod.tasks.get(task_id)
            if task is not None:
                return pod, task
        return None

    def _pods(self) -> list[Pod]:
        return [s.pod for s in self.sandboxes.values() if s.pod is not None]

    def host_pod(self) -> Pod | None:
        """A live pod, for shimdiag's calls into the UVM."""
        for s in self.sandboxes.values():
            if s.pod is not None and s.state is SandboxState.RUNNING and not s.pod.dead_reason:
                return s.pod
        return None

    def _owner_of(self, container_id: str) -> str | None:
        for s in self.sandboxes.values():
            if s.pod is not None and (container_id == s.id or container_id in s.pod.tasks):
                return s.id
        return None

    async def _admit(
        self,
        task_id: str,
        spec: dict[str, Any],
        role: Role,
        sandbox_id: str,
        options: runhcs_pb2.Options | None,
    ) -> tuple[Pod, bool]:
        if role is Role.SANDBOX:
            raise TtrpcError(
                Code.UNIMPLEMENTED,
                f"task {task_id}: a sandbox task (io.kubernetes.cri.container-type=sandbox) is not "
                "supported: io.containerd.lcow.v2 starts each pod's sandbox container at StartSandbox",
            )
        if role is Role.STANDALONE:
            raise TtrpcError(
                Code.INVALID_ARGUMENT,
                f'task {task_id}: unsupported container type "": io.containerd.lcow.v2 runs CRI pod '
                "containers (io.kubernetes.cri.container-type=container with io.kubernetes.cri.sandbox-id)",
            )
        s = self.sandboxes.get(sandbox_id)
        if s is None:
            raise TtrpcError(
                Code.NOT_FOUND, f"task {task_id}: sandbox {sandbox_id} is not served by this shim"
            )
        if s.state is not SandboxState.RUNNING or s.pod is None:
            raise TtrpcError(
                Code.FAILED_PRECONDITION, f"task {task_id}: sandbox {sandbox_id} is {s.state.value}"
            )
        if s.pod.dead_reason:
            raise TtrpcError(Code.FAILED_PRECONDITION, f"task {task_id}: {s.pod.dead_reason}")
        return s.pod, False

    async def _drop_pod(self, pod: Pod) -> None:
        await pod.close()

    def _on_host_exit(self, reason: str) -> None:
        if not self.vm_failed:
            log.error("the shim's utility VM exited under live pods", extra={"reason": reason})
        self.vm_failed = reason
        for s in self.sandboxes.values():
            s.mark_stopped(VM_FAILED_STATUS)

    # ---- Sandbox API ------------------------------------------------------------------------------

    def _sandbox(self, sandbox_id: str, what: str) -> Sandbox:
        s = self.sandboxes.get(sandbox_id)
        if s is None:
            raise TtrpcError(Code.NOT_FOUND, f"{what}: sandbox {sandbox_id!r} not found")
        return s

    async def _sandbox_config(
        self, req: sb.CreateSandboxRequest
    ) -> tuple[dict[str, str], str, runhcs_pb2.Options | None]:
        annotations = await asyncio.to_thread(read_sandbox_spec, req.bundle_path) if req.bundle_path else {}
        hostname = ""
        options = self.default_options
        if req.HasField("options") and req.options.type_url:
            if type_matches(req.options.type_url, OPTIONS_TYPE):
                try:
                    options = unpack_options(req.options)
                except OptionsError as exc:
                    raise TtrpcError(Code.INVALID_ARGUMENT, f"CreateSandbox: {exc}") from exc
            elif type_matches(req.options.type_url, POD_SANDBOX_CONFIG):
                hostname, cri_annotations = pod_sandbox_config(req.options)
                annotations.update(cri_annotations)
            else:
                raise TtrpcError(
                    Code.INVALID_ARGUMENT,
                    f"CreateSandbox: options of type {req.options.type_url} are not supported "
                    f"({OPTIONS_TYPE} or {POD_SANDBOX_CONFIG})",
                )
        annotations.update({str(k): str(v) for k, v in req.annotations.items()})
        return annotations, hostname, options

    async def create_sandbox(self, ctx: Context, req: sb.CreateSandboxRequest) -> sb.CreateSandboxResponse:
        if not req.sandbox_id:
            raise TtrpcError(Code.INVALID_ARGUMENT, "CreateSandbox: sandbox_id is empty")
        if req.rootfs:
            raise TtrpcError(
                Code.UNIMPLEMENTED,
                "CreateSandbox: rootfs is not supported (the pod's sandbox container needs none)",
            )
        async with self._sandbox_lock:
            if self.shutdown_requested:
                raise TtrpcError(
                    Code.UNAVAILABLE,
                    f"CreateSandbox {req.sandbox_id}: this shim is shutting down (its last sandbox went)",
                )
            if req.sandbox_id in self.sandboxes:
                raise TtrpcError(
                    Code.ALREADY_EXISTS, f"CreateSandbox: sandbox {req.sandbox_id} already exists"
                )
            if self.vm_failed:
                raise TtrpcError(Code.FAILED_PRECONDITION, f"CreateSandbox: {self.vm_failed}")
            annotations, hostname, options = await self._sandbox_config(req)
            if self.vm is None:
                vm, arch = await self.vm_factory(self.uvm_id, annotations, options)
                vm.subscribe(on_oom=self._dispatch_oom)
                self.vm, self.architecture = vm, arch
                self.vm_annotations = {k: v for k, v in annotations.items() if k.startswith(VM_ANNOTATIONS)}
                log.info("uvm created", extra={"uvm": self.uvm_id, "sandbox": req.sandbox_id})
            else:
                # The UVM was built for the first sandbox; a later one only adds a pod to it, so a VM
                # setting it asks for that the UVM does not have cannot be honoured.
                for key, value in sorted(annotations.items()):
                    if key.startswith(VM_ANNOTATIONS) and self.vm_annotations.get(key) != value:
                        raise TtrpcError(
                            Code.FAILED_PRECONDITION,
                            f"CreateSandbox {req.sandbox_id}: annotation {key}={value!r} differs from the "
                            f"shared UVM {self.uvm_id}'s ({self.vm_annotations.get(key, 'unset')!r})",
                        )
                log.info(
                    "sandbox joins the running uvm", extra={"uvm": self.uvm_id, "sandbox": req.sandbox_id}
                )
            self.sandboxes[req.sandbox_id] = Sandbox(
                req.sandbox_id, req.bundle_path, annotations, hostname, req.netns_path
            )
        return sb.CreateSandboxResponse()

    async def _ensure_vm_started(self) -> SharedVM:
        async with self._vm_lock:
            vm = self.vm
            if vm is None:
                raise TtrpcError(Code.FAILED_PRECONDITION, "StartSandbox: the utility VM is not created")
            if not self.vm_started:
                await vm.start()
                self.vm_started = True
                log.info("uvm started", extra={"uvm": self.uvm_id})
            return vm

    async def start_sandbox(self, ctx: Context, req: sb.StartSandboxRequest) -> sb.StartSandboxResponse:
        s = self._sandbox(req.sandbox_id, "StartSandbox")
        async with self._sandbox_lock:
            if s.state is SandboxState.RUNNING:
                return sb.StartSandboxResponse(created_at=timestamp(s.created_at))
            if s.state is SandboxState.STOPPED:
                raise TtrpcError(Code.FAILED_PRECONDITION, f"StartSandbox: sandbox {s.id} is stopped")
            if self.vm_failed:
                raise TtrpcError(Code.FAILED_PRECONDITION, f"StartSandbox: {self.vm_failed}")
            vm = await self._ensure_vm_started()
            network = await PodNetwork.open(s.netns_path) if s.netns_path else None
            host = PodHost(
                s.id, vm, self._register_oom, bundle=s.bundle, hostname=s.hostname, network=network
            )
            try:
                await host.create_sandbox_container()
            except BaseException:
                await host.terminate()
                raise
            s.pod = Pod(s.id, Role.SANDBOX, host, self._on_host_exit, self._on_oom)
            s.state = SandboxState.RUNNING
            s.created_at = time.time()
        log.info("sandbox started", extra={"sandbox": s.id, "uvm": self.uvm_id})
        return sb.StartSandboxResponse(created_at=timestamp(s.created_at))

    async def platform(self, ctx: Context, req: sb.PlatformRequest) -> sb.PlatformResponse:
        self._sandbox(req.sandbox_id, "Platform")
        if self.vm is None:
            raise TtrpcError(Code.FAILED_PRECONDITION, "Platform: the utility VM is not created")
        return sb.PlatformResponse(platform=platform_pb2.Platform(os="linux", architecture=self.architecture))

    async def _stop(self, s: Sandbox, grace: float) -> None:
        """Kill the pod's processes, then tear down its sandbox container and NICs (the pod's tasks stay
        for Task Delete)."""
        pod = s.pod
        if pod is not None:
            for task in list(pod.tasks.values()):
                for proc in [*task.execs.values(), task.init]:
                    if proc.state is State.RUNNING:
                        with contextlib.suppress(Exception):
                            await proc.kill(int(signals.SIGKILL))
            waits = [p.wait() for t in pod.tasks.values() for p in [t.init, *t.execs.values()] if p.pid]
            if waits:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), grace)
            await pod.close()
        s.mark_stopped(0)

    async def stop_sandbox(self, ctx: Context, req: sb.StopSandboxRequest) -> sb.StopSandboxResponse:
        s = self._sandbox(req.sandbox_id, "StopSandbox")
        async with self._sandbox_lock:
            if s.state is not SandboxState.STOPPED:
                await self._stop(s, float(req.timeout_secs or STOP_KILL_WAIT))
        log.info("sandbox stopped", extra={"sandbox": s.id})
        return sb.StopSandboxResponse()

    async def wait_sandbox(self, ctx: Context, req: sb.WaitSandboxRequest) -> sb.WaitSandboxResponse:
        s = self._sandbox(req.sandbox_id, "WaitSandbox")
        await s.stopped.wait()
        return sb.WaitSandboxResponse(exit_status=s.exit_status, exited_at=timestamp(s.exited_at))

    async def sandbox_status(self, ctx: Context, req: sb.SandboxStatusRequest) -> sb.SandboxStatusResponse:
        s = self._sandbox(req.sandbox_id, "SandboxStatus")
        ready = s.state is SandboxState.RUNNING and s.pod is not None and not s.pod.dead_reason
        resp = sb.SandboxStatusResponse(sandbox_id=s.id, state=READY if ready else NOTREADY)
        if s.created_at is not None:
            resp.created_at.CopyFrom(timestamp(s.created_at))
        if s.exited_at is not None:
            resp.exited_at.CopyFrom(timestamp(s.exited_at))
        if req.verbose:
            resp.info["uvm"] = self.uvm_id
            resp.info["state"] = s.state.value
            resp.info["pods"] = ",".join(sorted(self.sandboxes))
        return resp

    async def ping_sandbox(self, ctx: Context, req: sb.PingRequest) -> sb.PingResponse:
        raise TtrpcError(Code.UNIMPLEMENTED, "PingSandbox is not implemented")

    async def sandbox_metrics(self, ctx: Context, req: sb.SandboxMetricsRequest) -> sb.SandboxMetricsResponse:
        """The UVM's figures, as upstream's (a VirtualMachineStatistics in a Metric): every pod of a
        shared UVM reports the same VM; a pod's containers have their own in Task Stats."""
        s = self._sandbox(req.sandbox_id, "SandboxMetrics")
        if self.vm is None or not self.vm_started or s.state is not SandboxState.RUNNING:
            raise TtrpcError(Code.FAILED_PRECONDITION, f"SandboxMetrics: sandbox {s.id} is not running")
        props = await self.vm.properties()
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        metric = metrics_pb2.Metric(timestamp=now, id=s.id, data=pack(vm_statistics(props)))
        return sb.SandboxMetricsResponse(metrics=metric)

    async def shutdown_sandbox(
        self, ctx: Context, req: sb.ShutdownSandboxRequest
    ) -> sb.ShutdownSandboxResponse:
        s = self._sandbox(req.sandbox_id, "ShutdownSandbox")
        async with self._sandbox_lock:
            if s.state is not SandboxState.STOPPED:
                await self._stop(s, STOP_KILL_WAIT)
            if s.pod is not None:
                for task in list(s.pod.tasks.values()):
                    try:
                        await task.delete()
                    except Exception as exc:
                        log.warning("task cleanup failed", extra={"task": task.id, "error": exc})
                s.pod.tasks.clear()
            self._register_oom(s.id, None)
            del self.sandboxes[s.id]
            last = not self.sandboxes
            if not last and s.bundle and s.bundle == self.log_bundle:
                self._move_log()
            if last:
                self.shutdown_requested = True
                await self._terminate_vm()
        log.info("sandbox shut down", extra={"sandbox": s.id, "last": last})
        if last and self._on_shutdown is not None:
            # After this reply is on the wire.
            asyncio.get_running_loop().call_soon(self._on_shutdown)
        return sb.ShutdownSandboxResponse()

    def _move_log(self) -> None:
        for other in self.sandboxes.values():
            if other.bundle:
                log.info("shim log moves to another sandbox's bundle", extra={"sandbox": other.id})
                self.log_bundle = other.bundle
                if self._relog is not None:
                    self._relog(os.path.join(other.bundle, "log"))
                return

    async def _terminate_vm(self) -> None:
        vm, self.vm = self.vm, None
        if vm is None:
            return
        try:
            await vm.terminate()
        except Exception as exc:
            log.warning("uvm terminate failed", extra={"uvm": self.uvm_id, "error": exc})
        log.info("uvm terminated", extra={"uvm": self.uvm_id})

    # ---- Task API where lcow-v2 differs -----------------------------------------------------------

    async def shutdown(self, ctx: Context, req: v2.ShutdownRequest) -> empty_pb2.Empty:
        # Upstream's is a no-op too: the shim's life is ShutdownSandbox's to end.
        log.info("task Shutdown ignored: ShutdownSandbox of the last sandbox ends this shim")
        return empty_pb2.Empty()

    async def close(self) -> None:
        await super().close()
        for s in self.sandboxes.values():
            s.mark_stopped(0)
        await self._terminate_vm()


async def create_shared_vm(
    uvm_id: str, annotations: dict[str, str], options: runhcs_pb2.Options | None
) -> tuple[SharedVM, str]:
    """The shim's UVM from the V2 pipeline over the boot files (annotation, options, then the image
    cache), from its template when templates are on; created, not started."""
    import dataclasses

    from hcsshim.builder import BootFiles, SandboxOptions, build_lcow_uvm_v2, resolve_boot_files_root
    from hcsshim.schema import ComputeSystem
    from hcsshim.shim.host import pool_config, runtime_options, templates_enabled
    from hcsshim.uvm.document import boot_file_names, boot_files_path
    from hcsshim.uvm.template import create_uvm

    ropts = runtime_options(options)
    if not ropts.sandbox_platform:
        ropts = dataclasses.replace(ropts, sandbox_platform="linux/amd64")
    root = resolve_boot_files_root(ropts, annotations, boot_files_path())

    def build() -> tuple[ComputeSystem, SandboxOptions]:
        # The scan and the builder (a tenth of a second of CPU on a busy host) in one thread hop.
        boot = BootFiles(root=root, files=boot_file_names(root))
        return build_lcow_uvm_v2(owner=OWNER, annotations=annotations, options=ropts, boot_files=boot)

    document, sandbox_options = await asyncio.to_thread(build)
    spec = {"annotations": annotations}
    vm = await create_uvm(
        uvm_id, document, templates=templates_enabled(spec, options), pool=pool_config(spec, options)
    )
    return vm, sandbox_options.architecture
