"""The agent's state: containers, their processes, and the resources the host handed it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import shutil
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hcsshim.gcs import protocol as p
from hcsshim.gcs.protocol import GcsError, Hresult, NotificationType
from hcsshim.hvsock.abi import NULL_CONTAINER_ID, RequestType, ResourceType
from hcsshim.hvsock.session import MuxSession

from . import log, network, oom, spec, stats, storage
from .reaper import REAPER, spawn
from .runc import Runc, Stdio
from .stdio import Relay, dial_ports, resize_tty
from .syscalls import MNT_DETACH, is_mountpoint, mounts_under, umount

LOG = log.get("runtime")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# How long an exited process's output may stay open (held by a descendant) before its exit is reported
# anyway, as containerd's runc shim reports exits without waiting for stdio.
OUTPUT_GRACE = 2.0

Notify = Callable[[str, str], None]
NotifyOom = Callable[[str, int], None]


@dataclass
class Process:
    pid: int
    container: Container | None
    relay: Relay = field(default_factory=Relay)
    exited: asyncio.Future[int] | None = None
    is_init: bool = False
    _watcher: asyncio.Future[None] | None = None

    def watch(
        self,
        on_exit: Callable[[Process, int], None] | None = None,
        before_exit: Callable[[Process], None] | None = None,
        after_reap: Callable[[Process], Awaitable[None]] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.exited = loop.create_future()
        raw = REAPER.wait(self.pid)

        async def finish() -> None:
            code = await raw
            if after_reap is not None:
                await after_reap(self)
            # The host must see all output before it learns the exit code, as upstream guarantees;
            # but a descendant that inherited the pipes must not hold the exit back forever.
            await self.relay.wait_outputs(OUTPUT_GRACE)
            self.relay.close()
            if before_exit is not None:
                before_exit(self)
            assert self.exited is not None
            if not self.exited.done():
                self.exited.set_result(code)
            if on_exit is not None:
                on_exit(self, code)

        self._watcher = asyncio.ensure_future(finish())


@dataclass
class Container:
    id: str
    bundle: str
    spec: dict[str, Any]
    kind: str
    sandbox_id: str
    files_dir: str
    scratch: str
    init: Process
    stdio: Stdio | None
    master: int | None
    processes: dict[int, Process] = field(default_factory=dict)
    started: bool = False
    exit_type: str = NotificationType.UNEXPECTED_EXIT
    shm_dir: str = ""
    owns_bundle: bool = True

    @property
    def cgroups_path(self) -> str:
        return str(self.spec.get("linux", {}).get("cgroupsPath", ""))

    @property
    def terminal(self) -> bool:
        return bool(self.spec.get("process", {}).get("terminal"))

    @property
    def owns_pid_namespace(self) -> bool:
        """A private PID namespace dies with its init; otherwise (the UVM's namespace, or one joined
        by path) the init's exit must take the container's other processes down, as runc's shim does."""
        namespaces = self.spec.get("linux", {}).get("namespaces") or []
        return any(n.get("type") == "pid" and not n.get("path") for n in namespaces)


class Host:
    def __init__(
        self,
        root: str,
        runc_binary: str,
        cgroup_parent: str = "",
        sysfs_root: str = "",
        modules: storage.ModuleGate | None = None,
        cgroup_root: str = stats.CGROUP_ROOT,
    ) -> None:
        self.root = root
        self.sysfs_root = sysfs_root
        # /init may still be loading modules (hcsshim.modules=async): mounts and runc wait for them.
        self.modules = modules or storage.ModuleGate()
        self.runc = Runc(runc_binary, os.path.join(root, "runc"))
        self.cgroup_parent = cgroup_parent
        self.containers: dict[str, Container] = {}
        self.external: dict[int, Process] = {}
        self.session: MuxSession | None = None
        self.notify: Notify = lambda cid, kind: None
        self.notify_oom: NotifyOom = lambda cid, kills: None
        self.oom = oom.OomWatcher(lambda cid, kills: self.notify_oom(cid, kills), cgroup_root)
        self.network = network.NetworkNamespaces(sysfs_root)
        self._lock = asyncio.Lock()

    # ---- containers -------------------------------------------------------------------------

    def container(self, cid: str) -> Container:
        c = self.containers.get(cid)
        if c is None:
            raise GcsError(f"container {cid} not found", Hresult.VMCOMPUTE_SYSTEM_NOT_FOUND)
        return c

    async def create_container(self, cid: str, settings: dict[str, Any]) -> Container:
        if not _ID.match(cid) or cid == NULL_CONTAINER_ID:
            raise GcsError(f"invalid container id {cid!r}", Hresult.E_INVALIDARG)
        version = settings.get("SchemaVersion") or {}
        if (int(version.get("Major") or 0), int(version.get("Minor") or 0)) < (2, 1):
            raise GcsError(f"invalid schema version: {version}", Hresult.VMCOMPUTE_INVALID_JSON)
        oci = settings.get("OciSpecification")
        if not isinstance(oci, dict):
            raise GcsError("container document has no OciSpecification", Hresult.E_INVALIDARG)
        # The sandbox's tmpfs, overlay rootfs and runc's cgroups may need modules /init loads late.
        await self.modules.wait(f"create container {cid}")
        async with self._lock:
            if cid in self.containers:
                raise GcsError(f"container {cid} already exists", Hresult.VMCOMPUTE_SYSTEM_ALREADY_EXISTS)
            kind, sid = spec.container_kind(oci, cid)
            pod: spec.PodInfo | None = None
            if kind == "container":
                sandbox = self.containers.get(sid)
                if sandbox is None or sandbox.kind != "sandbox":
                    raise GcsError(f"sandbox {sid} for container {cid} not found", Hresult.ERROR_NOT_FOUND)
                pod = spec.PodInfo(sid, sandbox.files_dir, sandbox.init.pid, sandbox.spec.get("hostname", ""))
            bundle = settings.get("OciBundlePath") or os.path.join(self.root, "c", cid)
            owns_bundle = not os.path.exists(os.path.join(bundle, "config.json"))
            await asyncio.to_thread(os.makedirs, bundle, exist_ok=True)
            files_dir = pod.files_dir if pod is not None else os.path.join(bundle, "pod")
            shm_dir = ""
            try:
                if kind == "sandbox":
                    shm_dir = os.path.join(files_dir, "shm")
                    await asyncio.to_thread(storage.mount_tmpfs, shm_dir, spec.shm_size_kb(oci))
                elif pod is not None:
                    shm_dir = os.path.join(pod.files_dir, "shm")
                netns = ""
                if kind != "container" and (ns_id := spec.network_namespace_id(oci)):
                    netns = self.network.path_for(ns_id)
                final = spec.adjust(
                    oci,
                    cid,
                    kind,
                    files_dir,
                    pod=pod,
                    shm_dir=shm_dir,
                    cgroup_parent=self.cgroup_parent,
                    netns_path=netns,
                )
                await asyncio.to_thread(_write_json, os.path.join(bundle, "config.json"), final)
                terminal = bool(final["process"].get("terminal"))
                stdio = None if terminal else Stdio.pipes(True, True, True)
                try:
                    pid, master = await self.runc.create(cid, bundle, stdio, terminal)
                except BaseException:
                    if stdio:
                        stdio.close_all()
                    raise
            except BaseException:
                await asyncio.to_thread(
                    _undo_create,
                    shm_dir if kind == "sandbox" else "",
                    bundle if owns_bundle and settings.get("OciBundlePath") is None else "",
                )
                raise
            init = Process(pid, None, is_init=True)
            c = Container(
                cid,
                bundle,
                final,
                kind,
                sid,
                files_dir,
                settings.get("ScratchDirPath") or "",
                init,
                stdio,
                master,
                shm_dir=shm_dir if kind == "sandbox" else "",
                owns_bundle=owns_bundle,
            )
            init.container = c
            c.processes[pid] = init
            self.containers[cid] = c
            init.watch(self._init_exited, self._init_exiting, self._init_reaped)
            LOG.info("container created", extra={"cid": cid, "kind": kind, "pid": pid, "bundle": bundle})
            return c

    def _init_exiting(self, proc: Process) -> None:
        # Runs before the exit is visible to the host (wait response, exit notification): a kill that
        # ended the container is reported ahead of the exit. The cgroup still exists until runc delete.
        assert proc.container is not None
        self.oom.check(proc.container.id)
        self.oom.unwatch(proc.container.id)

    async def _init_reaped(self, proc: Process) -> None:
        c = proc.container
        assert c is not None
        if c.owns_pid_namespace:
            return
        try:
            await self.runc.kill(c.id, signal.SIGKILL, all_processes=True)
        except GcsError as e:
            LOG.info("kill of the remaining processes failed", extra={"cid": c.id, "error": str(e)})

    def _init_exited(self, proc: Process, code: int) -> None:
        c = proc.container
        assert c is not None
        LOG.info("container exited", extra={"cid": c.id, "code": code, "type": c.exit_type})
        for other in list(c.processes.values()):
            if other is not proc and other.exited is not None and not other.exited.done():
                other.relay.close()
        self.notify(c.id, c.exit_type)

    async def start_init(self, c: Container, ports: tuple[int | None, int | None, int | None]) -> int:
        if c.started:
            raise GcsError(f"container {c.id} already started", Hresult.VMCOMPUTE_INVALID_STATE)
        assert self.session is not None
        chans = await dial_ports(self.session, *ports)
        if c.terminal:
            assert c.master is not None
            c.init.relay.start_tty(c.master, chans[0], chans[1])
            c.master = None  # the relay owns it now
            if chans[2] is not None:
                chans[2].close()
        else:
            assert c.stdio is not None
            c.init.relay.start_pipes(chans, (c.stdio.stdin, c.stdio.stdout, c.stdio.stderr))
            c.stdio.stdin = c.stdio.stdout = c.stdio.stderr = None
        c.started = True
        # The baseline is read before the workload runs, so an early kill is not mistaken for history.
        self.oom.watch(c.id, c.cgroups_path)
        try:
            await self.runc.start(c.id)
        except BaseException:
            self.oom.unwatch(c.id)
            raise
        return c.init.pid

    async def exec_in_container(
        self, c: Container, process: dict[str, Any], ports: tuple[int | None, int | None, int | None]
    ) -> int:
        if c.init.exited is not None and c.init.exited.done():
            raise GcsError(f"container {c.id} is not running", Hresult.VMCOMPUTE_INVALID_STATE)
        assert self.session is not None
        process = dict(process)
        process.setdefault("cwd", "/")
        process.setdefault("user", c.spec.get("process", {}).get("user", {"uid": 0, "gid": 0}))
        if "rlimits" not in process and c.spec.get("process", {}).get("rlimits"):
            process["rlimits"] = c.spec["process"]["rlimits"]
        terminal = bool(process.get("terminal"))
        chans = await dial_ports(self.session, *ports)
        stdio = (
            None
            if terminal
            else Stdio.pipes(chans[0] is not None, chans[1] is not None, chans[2] is not None)
        )
        try:
            pid, master = await self.runc.exec(c.id, process, c.bundle, stdio)
        except BaseException:
            if stdio:
                stdio.close_all()
            for ch in chans:
                if ch is not None:
                    ch.close()
            raise
        proc = Process(pid, c)
        if master is not None:
            proc.relay.start_tty(master, chans[0], chans[1])
            if chans[2] is not None:
                chans[2].close()
        else:
            assert stdio is not None
            proc.relay.start_pipes(chans, (stdio.stdin, stdio.stdout, stdio.stderr))
        c.processes[pid] = proc
        proc.watch()
        return pid

    async def exec_external(
        self, params: dict[str, Any], ports: tuple[int | None, int | None, int | None]
    ) -> int:
        """A process in the UVM itself (CreateInUtilityVM), e.g. for shimdiag exec."""
        assert self.session is not None
        args = params.get("CommandArgs") or _split_command_line(params.get("CommandLine") or "")
        if not args:
            raise GcsError("process has no command", Hresult.E_INVALIDARG)
        env = {str(k): str(v) for k, v in (params.get("Environment") or {}).items()} or {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        }
        cwd = params.get("WorkingDirectory") or "/"
        chans = await dial_ports(self.session, *ports)
        proc: Process
        if params.get("EmulateConsole"):
            master, slave = pty.openpty()
            try:
                pid = _spawn_in(cwd, args, env, slave, slave, slave, setsid=True)
            finally:
                os.close(slave)
            proc = Process(pid, None)
            proc.relay.start_tty(master, chans[0], chans[1])
            if chans[2] is not None:
                chans[2].close()
        else:
            st = Stdio.pipes(chans[0] is not None, chans[1] is not None, chans[2] is not None)
            try:
                pid = _spawn_in(cwd, args, env, st.child[0], st.child[1], st.child[2], setsid=True)
            finally:
                st.close_child()
            proc = Process(pid, None)
            proc.relay.start_pipes(chans, (st.stdin, st.stdout, st.stderr))
        self.external[pid] = proc
        proc.watch()
        return pid

    def process(self, cid: str, pid: int) -> Process:
        proc = self.external.get(pid) if cid == NULL_CONTAINER_ID else self.container(cid).processes.get(pid)
        if proc is None:
            raise GcsError(f"process {pid} not found in {cid}", Hresult.ERROR_NOT_FOUND)
        return proc

    async def wait_process(self, cid: str, pid: int, timeout_ms: int) -> int:
        proc = self.process(cid, pid)
        assert proc.exited is not None
        timeout = None if timeout_ms == p.INFINITE_WAIT_TIMEOUT else timeout_ms / 1000
        try:
            return await asyncio.wait_for(asyncio.shield(proc.exited), timeout)
        except TimeoutError:
            raise GcsError(
                f"process {pid} did not exit within {timeout_ms} ms", Hresult.VMCOMPUTE_TIMEOUT
            ) from None

    async def signal_process(self, cid: str, pid: int, sig: int) -> None:
        proc = self.process(cid, pid)
        if proc.exited is not None and proc.exited.done():
            raise GcsError(f"process {pid} has already exited", Hresult.ERROR_NOT_FOUND)
        sig = sig or signal.SIGKILL
        c = proc.container
        if c is not None and proc.is_init:
            if sig == signal.SIGKILL:
                c.exit_type = NotificationType.FORCED_EXIT
            elif sig == signal.SIGTERM:
                c.exit_type = NotificationType.GRACEFUL_EXIT
            try:
                await self.runc.kill(c.id, sig)
            except GcsError as e:
                # runc's words for an init that just exited, or a container removed underneath us.
                if "not running" in str(e) or "does not exist" in str(e):
                    raise GcsError(f"process {pid}: {e}", Hresult.ERROR_NOT_FOUND) from None
                raise
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            raise GcsError(f"process {pid} not found", Hresult.ERROR_NOT_FOUND) from None

    def resize_console(self, cid: str, pid: int, height: int, width: int) -> None:
        proc = self.process(cid, pid)
        c = proc.container
        try:
            if c is not None and proc.is_init and c.master is not None:
                # Created, not started: the console exists from runc create, as with runc's shim.
                resize_tty(c.master, height, width)
                return
            proc.relay.resize(height, width)
        except OSError as e:
            raise GcsError(f"resize console of process {pid}: {e}", Hresult.E_INVALIDARG) from None

    async def shutdown_container(self, cid: str, graceful: bool) -> None:
        c = self.container(cid)
        if c.init.exited is not None and c.init.exited.done():
            return
        c.exit_type = NotificationType.GRACEFUL_EXIT if graceful else NotificationType.FORCED_EXIT
        if not c.started:
            # A created-but-never-started init is parked in runc's exec fifo; only KILL ends it.
            await self.runc.kill(c.id, signal.SIGKILL)
            return
        await self.runc.kill(c.id, signal.SIGTERM if graceful else signal.SIGKILL, all_processes=not graceful)

    async def delete_container_state(self, cid: str) -> None:
        c = self.container(cid)
        if c.kind == "sandbox" and any(
            o.sandbox_id == cid and o.kind == "container" for o in self.containers.values()
        ):
            raise GcsError(f"sandbox {cid} still has containers", Hresult.VMCOMPUTE_INVALID_STATE)
        if c.init.exited is None or not c.init.exited.done():
            with contextlib.suppress(GcsError):
                await self.runc.kill(c.id, signal.SIGKILL, all_processes=True)
            if c.init.exited is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(c.init.exited), 10)
        errors = []
        try:
            await self.runc.delete(cid)
        except GcsError as e:
            errors.append(str(e))
        for proc in c.processes.values():
            proc.relay.close()
        if c.stdio:
            c.stdio.close_all()
        if c.master is not None:
            with contextlib.suppress(OSError):
                os.close(c.master)
            c.master = None
        self.oom.unwatch(cid)
        # Unmounts and the removal of a scratch or bundle of any size stay off the event loop.
        await asyncio.to_thread(self._remove_files, c)
        del self.containers[cid]
        LOG.info("container state deleted", extra={"cid": cid})
        if errors:
            raise GcsError("; ".join(errors))

    def _remove_files(self, c: Container) -> None:
        if c.shm_dir:
            for mp in mounts_under(c.shm_dir):
                with contextlib.suppress(OSError):
                    umount(mp, MNT_DETACH)
        stats.remove_cgroup_dirs(c.cgroups_path, self.cgroup_parent)
        if c.scratch:
            shutil.rmtree(c.scratch, ignore_errors=True)
        self._remove_bundle(c)

    def _remove_bundle(self, c: Container) -> None:
        if mounts_under(c.bundle):
            # A rootfs overlay the host mounted via CombinedLayers stays until the host removes it;
            # only remove what we wrote.
            for name in ("config.json", "pod"):
                path = os.path.join(c.bundle, name)
                if name == "pod":
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
            return
        if c.owns_bundle:
            shutil.rmtree(c.bundle, ignore_errors=True)
        else:
            shutil.rmtree(os.path.join(c.bundle, "pod"), ignore_errors=True)

    async def get_properties(self, cid: str, query: dict[str, Any]) -> dict[str, Any]:
        if cid == NULL_CONTAINER_ID:
            raise GcsError("getPropertiesV2 is not supported against the UVM", Hresult.E_NOTIMPL)
        c = self.container(cid)
        props: dict[str, Any] = {}
        for kind in query.get("PropertyTypes") or []:
            if kind == "ProcessList":
                try:
                    pids = await self.runc.ps(cid)
                except GcsError:
                    pids = []
                props["ProcessList"] = [{"ProcessId": pid} for pid in pids]
            elif kind in ("Statistics", "Memory"):
                props["LCOWMetrics"] = stats.metrics(c.cgroups_path)
                v2 = stats.metrics_v2(c.cgroups_path)
                if v2 is not None:
                    props[p.CGROUP_V2_METRICS_KEY] = v2
            else:
                raise GcsError(f"property type {kind!r} is not supported", Hresult.E_NOTIMPL)
        return props

    async def update_container(self, cid: str, resources: dict[str, Any]) -> None:
        c = self.container(cid)
        if not resources:
            return
        await self.runc.update(c.id, resources)

    async def modify_settings(self, cid: str, request: dict[str, Any]) -> None:
        rtype = request.get("ResourceType") or ""
        action = request.get("RequestType") or RequestType.ADD
        settings = request.get("Settings") or {}
        if not isinstance(settings, dict):
            raise GcsError("ModifySettings Settings must be an object", Hresult.VMCOMPUTE_INVALID_JSON)
        if cid != NULL_CONTAINER_ID:
            if rtype == ResourceType.CONTAINER_CONSTRAINTS and action == RequestType.UPDATE:
                other = sorted(k for k, v in settings.items() if k != "Linux" and v)
                if other:
                    raise GcsError(
                        f"ContainerConstraints {other} are not supported on Linux", Hresult.E_NOTIMPL
                    )
                await self.update_container(cid, settings.get("Linux") or {})
                return
            raise GcsError(f"invalid container modify {rtype}/{action}", Hresult.E_INVALIDARG)
        handlers: dict[tuple[str, str], Callable[[], Any]] = {
            (ResourceType.MAPPED_VIRTUAL_DISK, RequestType.ADD): lambda: storage.add_mapped_virtual_disk(
                settings, self.sysfs_root
            ),
            # Mounts, unmounts and sysfs writes can block (a settling disk, a busy 9p export):
            # they run in a thread so the bridge keeps answering meanwhile.
            (ResourceType.MAPPED_VIRTUAL_DISK, RequestType.REMOVE): lambda: _off_loop(
                storage.remove_mount, settings
            ),
            (ResourceType.SCSI_DEVICE, RequestType.REMOVE): lambda: _off_loop(
                storage.eject_scsi, settings, self.sysfs_root
            ),
            (ResourceType.VPMEM_DEVICE, RequestType.ADD): lambda: _off_loop(storage.add_vpmem, settings),
            (ResourceType.VPMEM_DEVICE, RequestType.REMOVE): lambda: _off_loop(
                storage.remove_mount, settings
            ),
            (ResourceType.MAPPED_DIRECTORY, RequestType.ADD): lambda: _off_loop(storage.add_plan9, settings),
            (ResourceType.MAPPED_DIRECTORY, RequestType.REMOVE): lambda: _off_loop(
                storage.remove_mount, settings
            ),
            (ResourceType.COMBINED_LAYERS, RequestType.ADD): lambda: _off_loop(
                storage.add_combined_layers, settings
            ),
            (ResourceType.COMBINED_LAYERS, RequestType.REMOVE): lambda: _off_loop(
                storage.remove_combined_layers, settings
            ),
            (ResourceType.NETWORK, RequestType.ADD): lambda: self.network.add_adapter(settings),
            (ResourceType.NETWORK, RequestType.REMOVE): lambda: self.network.remove_adapter(settings),
        }
        # Not here, so refused with E_NOTIMPL naming it: PodCgroupMemoryLimit (this agent sets no memory
        # limit on the pods cgroup; the host never asks), VPCIDevice, SecurityPolicy, HvSocket ...
        handler = handlers.get((rtype, action))
        if handler is None:
            raise GcsError(f"unsupported modify request {rtype}/{action}", Hresult.E_NOTIMPL)
        if action == RequestType.ADD:
            await self.modules.wait(f"{rtype} {action}")
        try:
            result = handler()
            if asyncio.iscoroutine(result):
                await result
        except OSError as e:
            raise GcsError(f"{rtype} {action}: {e}", p.hresult_of_errno(e.errno)) from None

    def dump_stacks(self) -> str:
        out = []
        for tid, frame in sys._current_frames().items():
            out.append(f"thread {tid}:\n" + "".join(traceback.format_stack(frame)))
        for task in asyncio.all_tasks():
            out.append(f"task {task.get_name()}:\n" + "".join(_task_stack(task)))
        return "\n".join(out)

    async def shutdown(self) -> None:
        """Kill every container and forget its state (the UVM is going away)."""
        for cid in list(self.containers):
            c = self.containers[cid]
            c.exit_type = NotificationType.FORCED_EXIT
        for cid in sorted(self.containers, key=lambda i: self.containers[i].kind == "sandbox"):
            try:
                await self.delete_container_state(cid)
            except Exception as e:
                LOG.warning("cleanup failed", extra={"cid": cid, "error": str(e)})
                self.containers.pop(cid, None)
        for proc in self.external.values():
            if proc.exited is not None and not proc.exited.done():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        self.oom.close()
        await self.network.close()


def _task_stack(task: asyncio.Task[Any]) -> list[str]:
    return [
        f'  File "{f.f_code.co_filename}", line {f.f_lineno}, in {f.f_code.co_name}\n'
        for f in task.get_stack()
    ]


def _split_command_line(line: str) -> list[str]:
    import shlex

    return shlex.split(line)


def _spawn_in(
    cwd: str,
    args: list[str],
    env: dict[str, str],
    fd0: int | None,
    fd1: int | None,
    fd2: int | None,
    setsid: bool,
) -> int:
    # posix_spawn has no chdir action in 3.11; run through the shell-free ``env -C`` is not portable,
    # so change directory around the spawn (the agent never relies on its own cwd).
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return spawn(args, stdin=fd0, stdout=fd1, stderr=fd2, env=env, setsid=setsid)
    finally:
        os.chdir(old)


def _off_loop(func: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    return asyncio.to_thread(func, *args)


def _write_json(path: str, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f)


def _undo_create(shm_dir: str, bundle: str) -> None:
    """What a failed create leaves: the sandbox's /dev/shm mount and a bundle it made itself."""
    if shm_dir and is_mountpoint(shm_dir):
        umount(shm_dir, MNT_DETACH)
    if bundle:
        shutil.rmtree(bundle, ignore_errors=True)
