"""One utility VM: a compute system, the mux carrying the HvSocket stand-in, the bridge to the
guest agent, and reference-counted devices that pair a host modify with a guest modify."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from hcsshim import errdefs, settings
from hcsshim import hvsock as mux
from hcsshim.gcs.bridge import BridgeClient
from hcsshim.gcs.connection import ExitCallback, GuestConnection, OomCallback
from hcsshim.hcs import (
    ComputeSystem,
    ErrNotSupported,
    ExitInfo,
    HcsError,
    create_compute_system,
)
from hcsshim.hvsock import clone
from hcsshim.hvsock.abi import (
    BRIDGE_PORT,
    NULL_CONTAINER_ID,
    SCSI_CONTROLLER_GUIDS,
    RequestType,
    scsi_controller_index,
)
from hcsshim.network import guest_network_spec
from hcsshim.schema import requests
from hcsshim.schema.modify import GuestModificationRequest, ModifySettingRequest
from hcsshim.uvm.document import default_lcow_document, uvm_document
from hcsshim.uvm.errors import UvmError
from hcsshim.uvm.plan9 import Plan9Mount, Plan9Names
from hcsshim.uvm.scsi import ScsiMount, ScsiSlots

log = logging.getLogger(__name__)

EXIT_GRACE = 2.0


class _VmTransport:
    """The mux transport of one VM. When the stream ends because QEMU died, the socket EOF and the
    process exit race; this holds the EOF back until the exit is classified (briefly) and fails the
    bridge with the VM's exit reason first, so pending calls report why the VM went away."""

    def __init__(self, inner: mux.Transport, uvm: UtilityVM) -> None:
        self.inner = inner
        self.uvm = uvm

    async def read(self) -> bytes:
        try:
            data = await self.inner.read()
        except OSError:
            await self._stream_ended()
            raise
        if not data:
            await self._stream_ended()
        return data

    async def write(self, data: bytes) -> None:
        try:
            await self.inner.write(data)
        except OSError:
            await self._stream_ended()
            raise

    async def _stream_ended(self) -> None:
        await self.uvm._wait_exit(EXIT_GRACE)
        await self.uvm._fail_bridge()

    def close(self) -> None:
        self.inner.close()


class UtilityVM:
    def __init__(self, uvm_id: str, system: ComputeSystem, document: dict[str, Any]) -> None:
        self.id = uvm_id
        self.system = system
        self.document = document
        self.session: mux.MuxSession | None = None
        self.connection: GuestConnection | None = None
        self._bridge: BridgeClient | None = None
        self._exit_task: asyncio.Task[None] | None = None
        self._on_guest_exit: ExitCallback | None = None
        self._on_guest_oom: OomCallback | None = None
        self._lock = asyncio.Lock()
        devices = document.get("VirtualMachine", {}).get("Devices", {})
        controllers: dict[int, str] = {}
        taken: set[tuple[int, int]] = set()
        for pos, (guid, ctrl) in enumerate((devices.get("Scsi") or {}).items()):
            index = scsi_controller_index(guid, pos)
            controllers[index] = guid
            taken |= {(index, int(lun)) for lun in (ctrl.get("Attachments") or {})}
        self.scsi = ScsiSlots(controllers, taken)
        shares = (devices.get("Plan9") or {}).get("Shares") or []
        self.plan9 = Plan9Names({str(s.get("Name")) for s in shares})
        self.machine_id = ""
        # Called once start() has the guest ready (the warm pool refills from here, so that
        # refilling never competes with the start that emptied it).
        self.on_ready: list[Callable[[], None]] = []

    # ---- lifetime --------------------------------------------------------------------------------

    @classmethod
    async def create(
        cls, uvm_id: str, document: Any = None, *, annotations: dict[str, str] | None = None
    ) -> UtilityVM:
        """Create (not start) the VM from `document`, or from the default LCOW document."""
        if document is None:
            document = default_lcow_document(uvm_id, annotations)
        doc = uvm_document(document, uvm_id)
        system = await create_compute_system(f"{uvm_id}@vm", doc)
        return cls(uvm_id, system, doc)

    @property
    def guest_log(self) -> list[str]:
        """The agent's last log lines (its log channel), newest last."""
        return self.connection.guest_log if self.connection is not None else []

    # Where a container's bundle and spec go in the guest: the agent's default root (/run/gcs/c).
    bundle_root = ""

    def adjust_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A container spec as this guest runs it: in the pod's own network namespace, never a host path."""
        return guest_network_spec(spec)

    def subscribe(self, *, on_exit: ExitCallback | None = None, on_oom: OomCallback | None = None) -> None:
        """Where the guest's container exits and OOM kills go (typed events from the connection)."""
        self._on_guest_exit, self._on_guest_oom = on_exit, on_oom
        if self.connection is not None:
            self.connection.subscribe(on_exit=on_exit, on_oom=on_oom)

    @property
    def oom_notifications(self) -> bool:
        """Whether the guest reports OOM kills (negotiated)."""
        return self.connection is not None and self.connection.oom_notifications

    @property
    def bridge(self) -> BridgeClient:
        if self._bridge is None:
            raise UvmError(
                self.id,
                "bridge",
                "the guest connection is not established (start() first)",
                kind=errdefs.Kind.FAILED_PRECONDITION,
            )
        return self._bridge

    async def start(self, timeout: float | None = None) -> None:
        """Boot, accept the guest's mux session and negotiate the bridge within `timeout` (default:
        HCSSHIM_TIMEOUT_GCSCONNECTION)."""
        if timeout is None:
            timeout = settings.current().gcs_connection_timeout
        try:
            transport = await self.system.open_guest_transport()
        except ErrNotSupported as e:
            raise UvmError(
                self.id,
                "start",
                f"no guest transport: {e}",
                kind=errdefs.Kind.NOT_IMPLEMENTED,
            ) from e
        address = self.system.hvsocket_address  # for messages
        self.session = mux.MuxSession(_VmTransport(transport, self), mux.Role.HOST).start()
        connection = self.connection = GuestConnection(self.session, self.id)
        connection.subscribe(on_exit=self._on_guest_exit, on_oom=self._on_guest_oom)
        # Listen before the guest can dial (upstream: PrepareConnection before Start).
        await connection.listen(guest_log=True)
        await self.system.start()
        self._exit_task = asyncio.create_task(self._on_exit())
        before = (lambda: self._send_identity(timeout)) if self.restored else None
        connect = asyncio.ensure_future(connection.connect(timeout, before=before))
        exited = asyncio.ensure_future(self.system.wait())
        try:
            await asyncio.wait({connect, exited}, timeout=timeout + 1, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            connection.close_listener()
        if connect.done() and not connect.cancelled() and connect.exception() is None:
            self._bridge = connect.result()
            self._bridge.on_timeout = self.diagnose_stall
            log.info("uvm ready", extra={"id": self.id})
            for callback in self.on_ready:
                callback()
            return
        err = connect.exception() if connect.done() and not connect.cancelled() else None
        connect.cancel()
        await asyncio.wait({connect})  # its outcome is in `err`; a cancel of start() still propagates
        broken = err is not None and not isinstance(err, TimeoutError)
        info = await self._wait_exit(EXIT_GRACE) if broken else self.system.exit_info
        if info is not None:
            why = f"{info.reason} ({info.error})"
            tail = str((info.details or {}).get("console_tail", ""))[-600:]
            qemu_log = str((info.details or {}).get("qemu_log", "")).strip()[-400:]
            raise UvmError(
                self.id,
                "start",
                f"the VM exited before the guest agent connected: {why}; console tail: {tail!r}"
                + (f"; QEMU's log: {qemu_log!r}" if qemu_log else ""),
                kind=errdefs.Kind.UNAVAILABLE,
            )
        console = self._console_tail()
        await self.terminate()
        timed_out = err is None or isinstance(err, TimeoutError)
        what = f"timed out after {timeout:.0f}s" if timed_out else f"failed: {err}"
        # A stalled agent is DeadlineExceeded; one that failed says its own kind (Unavailable if none).
        kind = errdefs.Kind.DEADLINE_EXCEEDED if timed_out or err is None else errdefs.kind_of(err)
        raise UvmError(
            self.id,
            "start",
            f"waiting for the guest agent to dial and negotiate the bridge {what} "
            f"(mux port 0x{BRIDGE_PORT:x} over {address}); console tail: {console[-600:]!r}",
            kind=errdefs.Kind.UNAVAILABLE if kind is errdefs.Kind.UNKNOWN else kind,
        ) from err

    @property
    def restored(self) -> bool:
        """Created from a template (VirtualMachine.RestoreState) rather than booted."""
        return bool((self.document.get("VirtualMachine") or {}).get("RestoreState"))

    async def _send_identity(self, timeout: float) -> None:
        """A clone's agent waits for its identity (hvsock/clone.py) before it dials the bridge."""
        assert self.session is not None
        ch = await self.session.dial(clone.RESUME_PORT, timeout=timeout)
        try:
            identity = clone.Identity(
                seed=os.urandom(clone.SEED_BYTES),
                realtime_ns=time.time_ns(),
                hostname=self.hostname(),
                machine_id=uuid.uuid4().hex,
            )
            await ch.write(clone.encode_identity(identity))
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = await asyncio.wait_for(ch.read(), timeout)
                if not chunk:
                    break
                answer += chunk
        finally:
            ch.close()
        error = clone.decode_ack(answer)
        if error:
            raise UvmError(
                self.id,
                "start",
                f"the clone refused its identity: {error}",
                kind=errdefs.Kind.FAILED_PRECONDITION,
            )
        self.machine_id = identity.machine_id

    def hostname(self) -> str:
        """The guest's host name as its kernel command line sets it (image_init's hcsshim.hostname)."""
        lkd = ((self.document.get("VirtualMachine") or {}).get("Chipset") or {}).get(
            "LinuxKernelDirect"
        ) or {}
        for arg in str(lkd.get("KernelCmdLine") or "").split():
            if arg.startswith("hcsshim.hostname="):
                return arg.partition("=")[2]
        return "uvm"

    async def save_as_template(self, directory: str, ready_timeout: float = 60.0) -> None:
        """Quiesce the agent (it answers, then waits for a clone's host once this host hangs up) and
        save the VM into `directory`; the VM is left paused, for the caller to terminate."""
        nonce = secrets.token_hex(8)
        await self.bridge.modify_settings(clone.prepare_request(nonce))
        bridge, self._bridge = self._bridge, None
        assert self.session is not None and bridge is not None and self.connection is not None
        # Only the transport goes: a bridge close would reach the agent first and make it redial.
        await self.session.aclose("hung up for the template save")
        await bridge.close()
        self.connection.stop_log()
        marker = clone.ready_line(nonce)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_timeout
        while marker not in await asyncio.to_thread(self._console_tail):
            if self.system.exit_info is not None or loop.time() > deadline:
                raise UvmError(
                    self.id,
                    "save_as_template",
                    f"the agent did not report {marker!r} on the console within {ready_timeout:.0f}s "
                    f"({self.exit_reason()}); console tail: {self._console_tail()[-600:]!r}",
                    kind=errdefs.Kind.UNAVAILABLE
                    if self.system.exit_info is not None
                    else errdefs.Kind.DEADLINE_EXCEEDED,
                )
            await asyncio.sleep(0.05)
        await self.system.save({"SaveType": "AsTemplate", "SaveStateFilePath": directory})

    async def diagnose_stall(self) -> str:
        """Why a bridge call to this VM timed out, as the compute system sees the guest."""
        if self.system.exit_info is not None:
            return ""  # a dead VM fails the bridge with its exit reason instead
        diagnosis = await self.system.diagnose_stall()
        return diagnosis.verdict

    def _console_tail(self) -> str:
        path = self.system.console_path
        if not path:
            return ""
        try:
            with open(path, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    async def properties(self) -> dict[str, Any]:
        """The compute system's properties (HCS schema2: Statistics, Memory, the backend's own)."""
        return await self.system.properties()

    def exit_reason(self) -> str:
        info = self.system.exit_info
        if info is None:
            return f"utility VM {self.id}: connection to the guest lost"
        return f"utility VM {self.id} exited: {info.reason}" + (f" ({info.error})" if info.error else "")

    async def _wait_exit(self, grace: float) -> ExitInfo | None:
        """The exit info if the VM stops within `grace` (a broken stream usually means it just did)."""
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(self.system.wait()), grace)
        return None

    async def _fail_bridge(self) -> None:
        if self._bridge is not None:
            with contextlib.suppress(Exception):
                await self._bridge.fail(self.exit_reason())

    async def _on_exit(self) -> None:
        info = await self.system.wait()
        reason = self.exit_reason()
        log.log(
            logging.WARNING if info.unexpected else logging.INFO,
            "uvm exited",
            extra={"id": self.id, "reason": reason},
        )
        await self._fail_bridge()
        if self.connection is not None:
            self.connection.stop_log()
        if self.session is not None:
            with contextlib.suppress(Exception):
                await self.session.aclose(reason)

    async def terminate(self) -> None:
        await self.system.terminate()
        if self._exit_task is not None:
            await asyncio.wait({self._exit_task})  # _on_exit handles its own errors
        elif self.session is not None:
            with contextlib.suppress(Exception):
                await self.session.aclose("terminated")

    async def wait(self) -> ExitInfo:
        info = await self.system.wait()
        if self._exit_task is not None:
            await asyncio.wait({self._exit_task})
        return info

    async def close(self) -> None:
        await self.terminate()

    # ---- processes in the UVM itself ----------------------------------------------------------------

    async def exec_in_uvm(
        self, args: list[str], *, timeout: float = 60.0, env: dict[str, str] | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run a command in the UVM (not in a container) and collect its output (diagnostics, service
        VM work); ``env`` is its whole environment (default: the guest's PATH only)."""
        params: dict[str, Any] = {"CommandArgs": args, "CreateStdOutPipe": True, "CreateStdErrPipe": True}
        if env:
            params["Environment"] = dict(env)
        proc = await self.bridge.execute_process(NULL_CONTAINER_ID, params)

        async def drain(ch: Any) -> bytes:
            chunks: list[bytes] = []
            while data := await ch.read():
                chunks.append(data)
            return b"".join(chunks)

        out, err = await asyncio.wait_for(asyncio.gather(drain(proc.stdout), drain(proc.stderr)), timeout)
        code = await self.bridge.wait_process(NULL_CONTAINER_ID, proc.pid, timeout=timeout)
        return int(code), out, err

    # ---- guest modify --------------------------------------------------------------------------------

    async def guest_modify(self, resource_type: str, request_type: str, settings: dict[str, Any]) -> Any:
        request = {"ResourceType": resource_type, "RequestType": request_type, "Settings": settings}
        return await self.bridge.modify_settings(request)

    async def guest_request(self, request: GuestModificationRequest) -> Any:
        return await self.bridge.modify_settings(request.to_dict())

    async def modify(self, request: ModifySettingRequest) -> None:
        """One ModifySettingRequest as HCS applies it: for an add, the host half and then its
        GuestRequest, the host half removed again when the guest's fails; for a remove, the guest half
        first, so the guest lets go before the device goes."""
        host = request.to_dict()
        guest = host.pop("GuestRequest", None)
        if request.request_type == RequestType.REMOVE:
            if guest is not None:
                await self.bridge.modify_settings(guest)
            await self.system.modify(host)
            return
        await self.system.modify(host)
        if guest is None:
            return
        try:
            await self.bridge.modify_settings(guest)
        except BaseException:
            if request.request_type == RequestType.ADD:
                with contextlib.suppress(HcsError):
                    await self.system.modify({**host, "RequestType": RequestType.REMOVE})
            raise

    # ---- SCSI --------------------------------------------------------------------------------------

    async def add_scsi(
        self,
        host_path: str,
        read_only: bool = True,
        *,
        options: list[str] | None = None,
        block_dev: bool = False,
    ) -> ScsiMount:
        """Attach a VHD and mount it in the guest at /run/mounts/scsi/<c>_<l>_0 (ref-counted). With
        ``block_dev`` the file is a raw disk (PassThru) and the guest mounts nothing: the disk's
        block device is bind-mounted at that path instead (upstream's BlockDev)."""
        host_path = os.path.abspath(host_path)
        async with self._lock:
            existing = self.scsi.by_path.get(host_path)
            if existing is not None:
                if existing.read_only != read_only:
                    raise UvmError(
                        self.id,
                        "add_scsi",
                        f"{host_path} is already attached with ro={existing.read_only}",
                        kind=errdefs.Kind.ALREADY_EXISTS,
                    )
                existing.refs += 1
                return existing
            try:
                index, guid, lun = self.scsi.allocate()
            except LookupError as e:
                raise UvmError(self.id, "add_scsi", str(e), kind=errdefs.Kind.FAILED_PRECONDITION) from e
            m = ScsiMount(host_path, index, guid, lun, read_only)
            request = requests.scsi_add(
                index,
                lun,
                host_path,
                read_only=read_only,
                options=[] if block_dev else options or (["ro"] if read_only else []),
                controller_guid=guid,
                disk_type="PassThru" if block_dev else "VirtualDisk",
                block_dev=block_dev,
            )
            try:
                await self.modify(request)
            except BaseException:
                self.scsi.release(index, lun)
                raise
            self.scsi.by_path[host_path] = m
            return m

    async def remove_scsi(self, host_path: str) -> None:
        host_path = os.path.abspath(host_path)
        async with self._lock:
            m = self.scsi.by_path.get(host_path)
            if m is None:
                raise UvmError(
                    self.id, "remove_scsi", f"{host_path} is not attached", kind=errdefs.Kind.NOT_FOUND
                )
            m.refs -= 1
            if m.refs > 0:
                return
            await self.guest_request(requests.scsi_unmount(m.controller, m.lun, read_only=m.read_only))
            await self.modify(requests.scsi_remove(m.controller, m.lun, controller_guid=m.controller_guid))
            self.scsi.release(m.controller, m.lun)
            del self.scsi.by_path[host_path]

    # ---- Plan9 -------------------------------------------------------------------------------------

    async def add_plan9(self, host_path: str, read_only: bool = True) -> str:
        """Share a host directory; returns its guest path /run/mounts/plan9/<n> (ref-counted)."""
        host_path = os.path.abspath(host_path)
        async with self._lock:
            existing = self.plan9.by_path.get(host_path)
            if existing is not None:
                if existing.read_only != read_only:
                    raise UvmError(
                        self.id,
                        "add_plan9",
                        f"{host_path} is already shared with ro={existing.read_only}",
                        kind=errdefs.Kind.ALREADY_EXISTS,
                    )
                existing.refs += 1
                return existing.guest_path
            m = Plan9Mount(host_path, self.plan9.next_name(), read_only)
            await self.modify(requests.plan9_add(m.name, host_path, read_only=read_only))
            self.plan9.by_path[host_path] = m
            return m.guest_path

    async def remove_plan9(self, host_path: str) -> None:
        host_path = os.path.abspath(host_path)
        async with self._lock:
            m = self.plan9.by_path.get(host_path)
            if m is None:
                raise UvmError(
                    self.id, "remove_plan9", f"{host_path} is not shared", kind=errdefs.Kind.NOT_FOUND
                )
            m.refs -= 1
            if m.refs > 0:
                return
            await self.modify(requests.plan9_remove(m.name, read_only=m.read_only))
            del self.plan9.by_path[host_path]

    # ---- network adapters --------------------------------------------------------------------------

    async def add_network_adapter(
        self, nic_id: str, host_settings: dict[str, Any], guest_settings: dict[str, Any]
    ) -> None:
        """Hot-add a NIC (host half: NetworkAdapter settings, for qemu with its ``Tap``), then tell the
        guest (LCOWNetworkAdapter) to configure it; the host half is undone if the guest fails."""
        async with self._lock:
            await self.modify(requests.nic_add(nic_id, host_settings, guest_settings))

    async def remove_network_adapter(
        self, nic_id: str, namespace_id: str, host_settings: dict[str, Any]
    ) -> None:
        """Guest first (it lets go of the interface), then the device, as upstream removes NICs."""
        async with self._lock:
            await self.modify(requests.nic_remove(nic_id, namespace_id, host_settings))

    # ---- VPMem -------------------------------------------------------------------------------------

    async def add_vpmem(self, host_path: str) -> str:
        raise UvmError(
            self.id,
            "add_vpmem",
            "VPMem is not supported by the qemu backend; use add_scsi",
            kind=errdefs.Kind.NOT_IMPLEMENTED,
        )


__all__ = ["SCSI_CONTROLLER_GUIDS", "UtilityVM"]
