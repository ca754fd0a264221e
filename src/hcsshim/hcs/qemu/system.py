"""A compute system realized by one QEMU process controlled over QMP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import signal
import time
import uuid
from typing import Any

from qemu.qmp import EventListener, QMPClient, QMPError

from hcsshim import children, procfs, settings
from hcsshim import hvsock as mux
from hcsshim.hcs.errors import (
    ErrAlreadyExists,
    ErrComputeSystemDoesNotExist,
    ErrElementNotFound,
    ErrInvalidData,
    ErrNotSupported,
    ErrVmcomputeAlreadyStopped,
    ErrVmcomputeOperationInvalidState,
    ErrVmcomputeUnexpectedExit,
    HcsError,
)
from hcsshim.hcs.qemu import devices, foreign, stall, template, vsock
from hcsshim.hcs.qemu.accel import Accel, choose
from hcsshim.hcs.qemu.cmdline import Paths, build_argv
from hcsshim.hcs.qemu.config import VmConfig, parse_document
from hcsshim.hcs.qemu.mounts import remove_tree_safely
from hcsshim.hcs.system import (
    ComputeSystem,
    Document,
    ExitInfo,
    StallDiagnosis,
    SystemState,
    document_to_dict,
)

log = logging.getLogger(__name__)

QMP_CONNECT_TIMEOUT = 15.0
QUIT_TIMEOUT = 5.0

# Live systems of this process, for open_compute_system and the already-exists check.
_systems: dict[str, QemuComputeSystem] = {}


def qemu_binary() -> str:
    """The QEMU this process runs (HCSSHIM_QEMU)."""
    return settings.current().qemu


def state_root() -> str:
    """Where every VM of this backend has its directory (HCSSHIM_RUN_DIR/qemu)."""
    return settings.current().qemu_state_dir


def state_dir_for(system_id: str, root: str | None = None) -> str:
    """A short, safe directory name: unix socket paths must stay under 108 bytes."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", system_id)
    if len(safe) > 32 or safe != system_id:
        safe = safe[:20] + "-" + hashlib.sha256(system_id.encode()).hexdigest()[:11]
    return os.path.join(root or state_root(), safe)


PID_FILE = "qemu.pid"
STALE_GRACE = 60.0


def _qemu_alive(pid: int) -> bool:
    return any(b"qemu" in arg for arg in procfs.argv(pid))


def sweep_stale_state(root: str) -> None:
    """Remove state left by a process that died without cleaning up (its QEMU died with it, by
    PDEATHSIG): any state dir whose QEMU is gone. A dir still being set up has no pid yet; it is
    left alone for STALE_GRACE seconds."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(root, name)
        if foreign.owner_gone(path) and not any(s.state_dir == path for s in _systems.values()):
            # An adopted clone's QEMU outlives its owner (it is not its child): kill it here.
            foreign.kill_parked(path)
        try:
            with open(os.path.join(path, PID_FILE)) as f:
                alive = _qemu_alive(int(f.read().strip() or 0))
        except (OSError, ValueError):
            try:
                alive = time.time() - os.stat(path).st_mtime < STALE_GRACE
            except OSError:
                continue
        if not alive and not any(s.state_dir == path for s in _systems.values()):
            left = remove_tree_safely(path)
            log.info("removed stale state", extra={"path": path, "left": left})


def _tail(path: str, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class QemuComputeSystem(ComputeSystem):
    def __init__(self, system_id: str, cfg: VmConfig, state_dir: str) -> None:
        self.id = system_id
        self.cfg = cfg
        self.runtime_id = str(uuid.uuid4())
        self.state_dir = state_dir
        self.paths = Paths(
            qmp=os.path.join(state_dir, "qmp.sock"),
            mux=os.path.join(state_dir, "mux.sock"),
            console=os.path.join(state_dir, "console.log"),
            plan9_root=os.path.join(state_dir, "plan9"),
        )
        self.accel: Accel | None = None
        self.qmp = QMPClient(f"hcsshim-{system_id}")
        # The QEMU process: our child, or a parked clone's QEMU adopted from another process.
        self.proc: asyncio.subprocess.Process | foreign.ForeignProcess | None = None
        self.devices = devices.DeviceSet(self)
        self._state = SystemState.CREATED
        self._exit: ExitInfo | None = None
        self._exited = asyncio.Event()
        self._stopping_reason: str | None = None
        self._shutdown_event: dict[str, Any] | None = None
        self._panicked = False
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at = 0.0
        self._op_lock = asyncio.Lock()
        self.stalls: list[str] = []
        # HvSocket stand-in (hcs/qemu/vsock.py): vsock where the host has vhost-vsock, else virtio-serial.
        self.vsock_host: vsock.VsockHost | None = None
        self.hvsocket_decision = vsock.Decision(vsock.TRANSPORT_VIRTIO_SERIAL, "not decided yet")

    # ---- creation ------------------------------------------------------------------------------

    @classmethod
    async def create(cls, system_id: str, document: Document) -> QemuComputeSystem:
        op = "CreateComputeSystem"
        doc = document_to_dict(document, system_id, op)
        if system_id in _systems:
            raise ErrAlreadyExists(op, system_id, "a compute system with this id already exists")
        cfg = await asyncio.to_thread(parse_document, doc, system_id, op)  # stats and reads files
        await asyncio.to_thread(sweep_stale_state, os.path.dirname(state_dir_for(system_id)))
        state_dir = state_dir_for(system_id)
        if os.path.exists(state_dir):
            left = await asyncio.to_thread(remove_tree_safely, state_dir)  # left over by a process that died
            if left:
                raise ErrAlreadyExists(op, system_id, f"state directory {state_dir} is still in use: {left}")
        if system_id in _systems:  # created by a concurrent call while this one awaited
            raise ErrAlreadyExists(op, system_id, "a compute system with this id already exists")
        system = cls(system_id, cfg, state_dir)
        _systems[system_id] = system
        try:
            await system._launch()
        except BaseException as e:
            await system._kill_and_cleanup()
            _systems.pop(system_id, None)
            if isinstance(e, HcsError):
                raise
            if isinstance(e, (OSError, QMPError, TimeoutError)):
                raise ErrInvalidData(op, system_id, f"starting QEMU failed: {e}") from e
            raise
        return system

    @classmethod
    async def adopt(cls, system_id: str, document: Document, directory: str) -> QemuComputeSystem:
        """Take over the paused clone parked in `directory` (parked.py) as system `system_id`: the
        directory is renamed to the system's state directory (atomic: of two adopters one gets it,
        the other ErrElementNotFound), then its QEMU is watched and driven as if created here.
        `document` must be the clone's document (same template key as the one it was parked with).
        On any failure the clone is killed and nothing is left."""
        op = "AdoptComputeSystem"
        doc = document_to_dict(document, system_id, op)
        if system_id in _systems:
            raise ErrAlreadyExists(op, system_id, "a compute system with this id already exists")
        cfg = await asyncio.to_thread(parse_document, doc, system_id, op)
        if not cfg.restore_dir:
            raise ErrInvalidData(op, system_id, "only a clone (VirtualMachine.RestoreState) can be adopted")
        state_dir = state_dir_for(system_id)
        await asyncio.to_thread(sweep_stale_state, os.path.dirname(state_dir))
        if os.path.exists(state_dir):
            left = await asyncio.to_thread(remove_tree_safely, state_dir)
            if left:
                raise ErrAlreadyExists(op, system_id, f"state directory {state_dir} is still in use: {left}")
        await asyncio.to_thread(os.makedirs, os.path.dirname(state_dir), 0o700, True)
        if system_id in _systems:
            raise ErrAlreadyExists(op, system_id, "a compute system with this id already exists")
        try:
            await asyncio.to_thread(os.rename, directory, state_dir)
        except FileNotFoundError:
            raise ErrElementNotFound(op, system_id, f"{directory} was taken by another process") from None
        except OSError as e:
            raise ErrInvalidData(op, system_id, f"claiming {directory}: {e}") from e
        system = cls(system_id, cfg, state_dir)
        _systems[system_id] = system
        try:
            await system._adopt()
        except BaseException as e:
            if system.proc is None:  # never pinned: kill it by its parking record
                await asyncio.to_thread(foreign.kill_parked, state_dir)
            await system._kill_and_cleanup()
            _systems.pop(system_id, None)
            if isinstance(e, HcsError):
                raise
            if isinstance(e, (OSError, QMPError, TimeoutError)):
                raise ErrInvalidData(op, system_id, f"adopting the parked clone failed: {e}") from e
            raise
        return system

    async def _adopt(self) -> None:
        op = "AdoptComputeSystem"
        parked = await asyncio.to_thread(foreign.read_parked, self.state_dir)
        pid, origin = (parked or {}).get("pid"), (parked or {}).get("origin")
        if not isinstance(pid, int) or not isinstance(origin, str):
            raise ErrInvalidData(op, self.id, f"{self.state_dir} holds no parked clone")
        self.hvsocket_decision = vsock.choose(self.id)
        if self.hvsocket_decision.transport != vsock.TRANSPORT_VIRTIO_SERIAL:
            raise ErrNotSupported(op, self.id, "a parked clone is reached over virtio-serial, not vsock")
        try:
            proc = foreign.ForeignProcess.open(pid, origin)
        except ProcessLookupError as e:
            raise ErrVmcomputeUnexpectedExit(op, self.id, f"the parked QEMU is gone: {e}") from None
        self.proc = proc
        proc.watch()
        self.accel = await choose(qemu_binary(), self.cfg.kernel)
        await asyncio.to_thread(foreign.join_own_cgroup, pid)
        await asyncio.to_thread(foreign.match_own_scheduling, pid)
        await asyncio.to_thread(foreign.write_owner, self.state_dir)
        await asyncio.wait_for(self.qmp.connect(self.paths.qmp), QMP_CONNECT_TIMEOUT)
        status = await self.execute(op, "query-status")
        run_state = status.get("status", "") if isinstance(status, dict) else ""
        if run_state not in ("paused", "prelaunch"):
            raise ErrInvalidData(op, self.id, f"the parked clone is {run_state!r}, not paused")
        log.info("adopted a parked clone", extra={"id": self.id, "pid": pid, "parked_in": origin})
        await self._created()

    async def _launch(self) -> None:
        os.makedirs(self.paths.plan9_root, mode=0o700)
        self.accel = await choose(qemu_binary(), self.cfg.kernel)
        if self.cfg.template_dir or self.cfg.restore_dir:
            ok, why = template.supported(self.accel.qemu_version)
            if not ok:
                raise ErrNotSupported("CreateComputeSystem", self.id, why)
        argv = build_argv(qemu_binary(), self.id, self.cfg, self.paths, self.accel.spec)
        # vsock (hcs/qemu/vsock.py): reserve a CID, listen, add the device and the kernel parameter.
        self.hvsocket_decision, self.vsock_host = vsock.setup(self.id)
        if self.vsock_host is not None:
            argv = self.vsock_host.apply(argv)
        await self.qmp.start_server(self.paths.qmp)
        stderr = open(os.path.join(self.state_dir, "qemu.log"), "wb")  # noqa: SIM115 - handed to the child
        try:
            # A shim that dies must not leave a VM running nobody can reach.
            self.proc = await children.spawn(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                pass_fds=(self.vsock_host.vhost_fd,) if self.vsock_host is not None else (),
            )
        finally:
            stderr.close()
        with open(os.path.join(self.state_dir, PID_FILE), "w") as f:
            f.write(str(self.proc.pid))
        log.info(
            "qemu started",
            extra={
                "id": self.id,
                "pid": self.proc.pid,
                "qemu": str(self.accel.qemu_version),
                "accel": self.accel.spec,
                "why": self.accel.why,
            },
        )
        waiter = asyncio.ensure_future(self.proc.wait())
        accept = asyncio.ensure_future(asyncio.wait_for(self.qmp.accept(), QMP_CONNECT_TIMEOUT))
        try:
            done, _ = await asyncio.wait({waiter, accept}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # create() was cancelled: create() kills QEMU; leave no waiters behind
            waiter.cancel()
            accept.cancel()
            raise
        if accept not in done:
            accept.cancel()
            await asyncio.wait({accept})
            raise ErrVmcomputeUnexpectedExit(
                "CreateComputeSystem",
                self.id,
                f"QEMU exited with {self.proc.returncode} before QMP: {_tail(self._qemu_log)[-800:]}",
            )
        waiter.cancel()
        accept.result()
        if self.cfg.restore_dir:
            await template.restore(self._qmp_execute, self.id, self.cfg, self._qemu_running)
            log.info("restored from template", extra={"id": self.id, "template": self.cfg.restore_dir})
        await self._created()

    async def _created(self) -> None:
        """QEMU runs paused and answers QMP: attach the document's shares and start watching it."""
        for name, cfg_share in ((s.name, s) for s in self.cfg.plan9):
            await self.devices.add_plan9_share(name, cfg_share.path, cfg_share.read_only)
        self.devices.load_boot_disks()
        self._tasks.append(asyncio.create_task(self._watch_events()))
        self._tasks.append(asyncio.create_task(self._watch_process()))
        self._tasks.append(asyncio.create_task(self._watch_console()))

    async def _qmp_execute(self, cmd: str, args: dict[str, Any] | None) -> Any:
        return await self.execute("Template", cmd, args)

    def _qemu_running(self) -> bool:
        return self._proc_alive()

    def _proc_alive(self) -> bool:
        if isinstance(self.proc, foreign.ForeignProcess):
            return self.proc.running
        return self.proc is not None and self.proc.returncode is None

    @property
    def _qemu_log(self) -> str:
        return os.path.join(self.state_dir, "qemu.log")

    # ---- watching --------------------------------------------------------------------------------

    async def _watch_events(self) -> None:
        listener = EventListener(("SHUTDOWN", "GUEST_PANICKED", "STOP", "RESUME"))
        self.qmp.register_listener(listener)
        try:
            async for event in listener:
                name = event["event"]
                raw = event.get("data")
                data: dict[str, Any] = raw if isinstance(raw, dict) else {}
                log.info("qemu event", extra={"id": self.id, "event": name, "data": data})
                if name == "SHUTDOWN":
                    self._shutdown_event = data
                elif name == "GUEST_PANICKED":
                    self._panicked = True
        finally:
            self.qmp.remove_listener(listener)

    async def _watch_console(self, every: float = 1.0) -> None:
        """Surface the guest kernel's own stall reports (soft lockup, RCU stall, hung task) in our log
        as they appear, before any call times out because of them."""
        offset = 0
        while True:
            await asyncio.sleep(every)
            size = await asyncio.to_thread(stall._size, self.paths.console)
            if size <= offset:
                continue
            # Reading and scanning up to a MiB of console is work for a thread, not for the loop.
            lines = await asyncio.to_thread(
                stall.stall_lines_in, self.paths.console, max(offset, size - (1 << 20))
            )
            offset = size
            for line in lines:
                self.stalls.append(line)
                log.error("guest kernel reports a stall", extra={"id": self.id, "console": line})

    async def diagnose_stall(self) -> StallDiagnosis:
        if self._exited.is_set() or self._state not in (SystemState.RUNNING, SystemState.PAUSED):
            reason = self._exit.reason if self._exit else self._state.value
            return StallDiagnosis("unknown", f"the VM is not running ({reason})")
        if self._state == SystemState.PAUSED:
            return StallDiagnosis("alive", "the VM is paused")
        quiet = "quiet" in self.cfg.cmdline.partition(" -- ")[0].split()
        diagnosis = await stall.diagnose(
            self.paths.console,
            lambda cmd, args: self.execute("DiagnoseStall", cmd, args),
            console_level=4 if quiet else 7,
        )
        log.error(
            "guest stall diagnosed",
            extra={
                "id": self.id,
                "kernel": diagnosis.kernel,
                "verdict": diagnosis.verdict,
                "console_tail": diagnosis.console_tail[-2000:],
                "task_dump": diagnosis.task_dump[-16000:],
            },
        )
        return diagnosis

    async def _watch_process(self) -> None:
        assert self.proc is not None
        rc = await self.proc.wait()
        console = _tail(self.paths.console)
        qemu_log = _tail(self._qemu_log, 1000)
        if settings.current().debug_qemu:
            log.warning("qemu log", extra={"id": self.id, "log": qemu_log})
        self._exit = self._classify_exit(rc, console, qemu_log)
        log.log(
            logging.WARNING if self._exit.unexpected else logging.INFO,
            "qemu exited",
            extra={"id": self.id, "rc": rc, "reason": self._exit.reason},
        )
        self._state = SystemState.STOPPED
        await self._cleanup()
        self._exited.set()

    def _classify_exit(self, rc: int | None, console: str, qemu_log: str) -> ExitInfo:
        details: dict[str, Any] = {"console_tail": console[-2000:], "qemu_log": qemu_log}
        if self._stopping_reason is not None:
            return ExitInfo(reason=self._stopping_reason, exit_code=rc, details=details)
        panic = re.search(r"Kernel panic[^\n]*", console)
        if self._panicked or panic:
            what = panic.group(0).strip() if panic else "guest panicked"
            return ExitInfo(reason="guest panic", exit_code=rc, error=what, details=details)
        if rc is not None and rc < 0:
            sig = signal.Signals(-rc).name
            hint = " (killed from outside the shim, or by the OOM killer)" if sig == "SIGKILL" else ""
            return ExitInfo(f"qemu killed by {sig}", exit_code=rc, error=f"{sig}{hint}", details=details)
        ev = self._shutdown_event or {}
        if ev.get("reason") == "guest-shutdown":
            return ExitInfo(reason="guest shut down", exit_code=rc, details=details)
        if ev.get("reason") == "guest-reset":
            return ExitInfo("guest reset", exit_code=rc, error="guest rebooted (-no-reboot)", details=details)
        status = "an unknown status (an adopted QEMU: not our child)" if rc is None else f"status {rc}"
        error = qemu_log.strip()[-300:] or f"exit {status}"
        return ExitInfo(f"qemu exited with {status}", exit_code=rc, error=error, details=details)

    async def _cleanup(self) -> None:
        with contextlib.suppress(Exception):
            await self.qmp.disconnect()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await self.devices.release_all()
        if self.vsock_host is not None:  # vsock: release the CID and the listener
            self.vsock_host.close()
        left = await asyncio.to_thread(remove_tree_safely, self.state_dir)
        if left:
            log.error("state left behind", extra={"id": self.id, "paths": left})
        _systems.pop(self.id, None)

    async def _kill_and_cleanup(self) -> None:
        if self.proc is not None and self._proc_alive():
            self.proc.kill()
            await self.proc.wait()
        if isinstance(self.proc, foreign.ForeignProcess):
            self.proc.close()
        await self._cleanup()

    # ---- operations ---------------------------------------------------------------------------

    def _require(self, op: str, *states: SystemState) -> None:
        if self._state == SystemState.STOPPED:
            reason = self._exit.reason if self._exit else "stopped"
            raise ErrVmcomputeAlreadyStopped(op, self.id, f"the system has stopped: {reason}")
        if self._state not in states:
            raise ErrVmcomputeOperationInvalidState(op, self.id, f"not valid in state {self._state.value}")

    async def execute(self, op: str, cmd: str, args: dict[str, Any] | None = None) -> Any:
        try:
            return await self.qmp.execute(cmd, args)
        except QMPError as e:
            if (self.proc is not None and not self._proc_alive()) or self._exited.is_set():
                raise ErrVmcomputeUnexpectedExit(op, self.id, f"QEMU exited during {cmd}") from e
            raise HcsError(op, self.id, f"QMP {cmd} failed: {e}") from e

    async def start(self) -> None:
        async with self._op_lock:
            self._require("Start", SystemState.CREATED)
            await self.execute("Start", "cont")
            self._started_at = time.monotonic()
            self._state = SystemState.RUNNING

    async def pause(self) -> None:
        async with self._op_lock:
            self._require("Pause", SystemState.RUNNING)
            await self.execute("Pause", "stop")
            self._state = SystemState.PAUSED

    async def resume(self) -> None:
        async with self._op_lock:
            self._require("Resume", SystemState.PAUSED)
            await self.execute("Resume", "cont")
            self._state = SystemState.RUNNING

    async def save(self, options: Document) -> None:
        opts = document_to_dict(options, self.id, "Save")
        template.check_save_options(opts, self.cfg, self.id)
        async with self._op_lock:
            self._require("Save", SystemState.RUNNING, SystemState.PAUSED)
            if self._state == SystemState.RUNNING:
                await self.execute("Save", "stop")
                self._state = SystemState.PAUSED
            await template.save(self._qmp_execute, self.id, self.cfg, self._qemu_running)
            log.info("saved as a template", extra={"id": self.id, "dir": self.cfg.template_dir})

    async def shutdown(self) -> None:
        async with self._op_lock:
            self._require("Shutdown", SystemState.RUNNING, SystemState.PAUSED)
            self._stopping_reason = "shutdown requested"
            await self.execute("Shutdown", "system_powerdown")

    async def terminate(self) -> None:
        if self._exited.is_set():
            return
        if self._stopping_reason is None or self._stopping_reason == "shutdown requested":
            self._stopping_reason = "terminated"
        with contextlib.suppress(HcsError):
            await asyncio.wait_for(self.execute("Terminate", "quit"), QUIT_TIMEOUT)
        try:
            await asyncio.wait_for(self._exited.wait(), QUIT_TIMEOUT)
        except TimeoutError:
            if self.proc is not None and self._proc_alive():
                self.proc.kill()
            await self._exited.wait()

    async def wait(self) -> ExitInfo:
        await self._exited.wait()
        assert self._exit is not None
        return self._exit

    async def modify(self, request: Document) -> None:
        req = document_to_dict(request, self.id, "Modify")
        async with self._op_lock:
            self._require("Modify", SystemState.CREATED, SystemState.RUNNING, SystemState.PAUSED)
            await self.devices.modify(req)

    async def properties(self, query: Document | None = None) -> dict[str, Any]:
        props: dict[str, Any] = {
            "Id": self.id,
            "SystemType": "VirtualMachine",
            "RuntimeOsType": "Linux",
            "Owner": self.cfg.owner,
            "RuntimeId": self.runtime_id,
            "State": self._state.value,
            "Stopped": self._state == SystemState.STOPPED,
            "Backend": {
                "Name": "qemu",
                "Accelerator": self.accel.spec if self.accel else "",
                "AcceleratorReason": self.accel.why if self.accel else "",
                "QemuVersion": str(self.accel.qemu_version) if self.accel else "",
                "ProcessId": self.proc.pid if self.proc else 0,
                "RssBytes": self.rss_bytes(),
                "StateDir": self.state_dir,
                "ConsoleLog": self.paths.console,
                "Rootfs": self.cfg.rootfs,
                # vsock (hcs/qemu/vsock.py): which HvSocket stand-in this VM uses, and why.
                "HvSocketTransport": self.hvsocket_decision.transport,
                "HvSocketTransportReason": self.hvsocket_decision.reason,
                **(
                    {"GuestCid": self.vsock_host.cid, "VsockPort": self.vsock_host.port}
                    if self.vsock_host is not None
                    else {}
                ),
            },
        }
        if self._exit is not None:
            props["ExitType"] = "UnexpectedExit" if self._exit.unexpected else "GracefulExit"
        if self._started_at:
            rss = self.rss_bytes()
            props["Statistics"] = {
                "Uptime100ns": int((time.monotonic() - self._started_at) * 1e7),
                # The VMM process's CPU time stands in for HCS's VM runtime (all vCPU threads and
                # device emulation are QEMU's), its RSS for the VM's working set.
                "Processor": {"TotalRuntime100ns": self.cpu_time_100ns()},
                "Memory": {"MemoryUsageCommitBytes": rss, "MemoryUsagePrivateWorkingSetBytes": rss},
            }
        props["Memory"] = {"VirtualMachineMemory": {"AssignedMemory": self.cfg.memory_mb * 256}}
        return props

    def cpu_time_100ns(self) -> int:
        """QEMU's user + system CPU time, in HCS's 100 ns units (0 once it is gone)."""
        if self.proc is None or not self._proc_alive():
            return 0
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return ticks * 10_000_000 // os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        if self.proc is None or not self._proc_alive():
            return 0
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    @property
    def state(self) -> SystemState:
        return self._state

    @property
    def exit_info(self) -> ExitInfo | None:
        return self._exit

    async def open_guest_transport(self) -> mux.Transport:
        if self.vsock_host is not None:
            # vsock (hcs/qemu/vsock.py): the backend listens; the guest connects after boot.
            return self.vsock_host.transport()
        # virtio-serial: QEMU's chardev is a listening unix socket from creation on.
        return await mux.connect_unix(self.paths.mux)

    @property
    def console_path(self) -> str:
        return self.paths.console

    @property
    def hvsocket_address(self) -> str | None:
        if self.vsock_host is not None:  # vsock: `vsock:<guest cid>:<host port>`
            return self.vsock_host.address
        return f"unix:{self.paths.mux}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


async def template_key(document: Document) -> str:
    """The template key of the VM `document` describes (hcs/qemu/template.py); raises
    ErrNotSupported where this QEMU cannot restore clones."""
    cfg = await asyncio.to_thread(
        lambda: parse_document(document_to_dict(document, "", "TemplateKey"), "", "TemplateKey")
    )
    accel = await choose(qemu_binary(), cfg.kernel)
    ok, why = template.supported(accel.qemu_version)
    if not ok:
        raise ErrNotSupported("TemplateKey", "", why)
    return await asyncio.to_thread(template.fingerprint, cfg, qemu_binary(), accel.spec, accel.qemu_version)


def open_system(system_id: str) -> QemuComputeSystem:
    system = _systems.get(system_id)
    if system is None:
        raise ErrComputeSystemDoesNotExist("OpenComputeSystem", system_id, "no such compute system")
    return system


def unsupported(op: str, system_id: str, what: str) -> ErrNotSupported:
    return ErrNotSupported(op, system_id, f"{what} is not supported by the qemu backend")
