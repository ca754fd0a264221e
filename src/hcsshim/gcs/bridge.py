"""Host side of the bridge: RPCs to the guest agent over a mux channel.

Responses are matched to requests by id; container notifications (exits, and OOM kills: a body whose
``Type`` is ``OomKilled``, see ``protocol.NOTIFY_OOM``) go to a callback; every call
has a timeout that names the operation; when the guest goes away (or ``fail`` is called because
the VM died) pending and future calls raise BridgeClosedError.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hcsshim.hvsock.abi import BRIDGE_PORT, FIRST_IO_PORT, NULL_CONTAINER_ID, RequestType, ResourceType
from hcsshim.hvsock.session import Channel, Listener, MuxSession

from . import protocol as p
from .protocol import GcsError, Rpc

LOG = logging.getLogger("hcsshim.gcs.bridge")
DEFAULT_TIMEOUT = 120.0

Notification = dict[str, Any]
NotifyCallback = Callable[[Notification], None]


class BridgeError(GcsError):
    """The guest answered with a failure (``result`` is its HRESULT)."""

    def __init__(self, operation: str, result: int, message: str, records: list[dict[str, Any]]) -> None:
        super().__init__(f"guest {operation} failed ({result & 0xFFFFFFFF:#010x}): {message}", result)
        self.operation = operation
        self.records = records


# Their kinds come from the builtin they subclass (hcsshim.errdefs; gcs imports nothing the guest
# could not): a TimeoutError is DeadlineExceeded, a ConnectionError Unavailable.
class BridgeTimeoutError(TimeoutError):
    """A call got no answer in time (the guest is stalled or gone)."""


class BridgeClosedError(ConnectionError):
    """The bridge is gone: the guest hung up, or the VM died."""


@dataclass
class GuestProcess:
    """A process started through ExecuteProcess, with its stdio channels (None when not requested)."""

    container_id: str
    pid: int
    stdin: Channel | None = None
    stdout: Channel | None = None
    stderr: Channel | None = None

    def close(self) -> None:
        for ch in (self.stdin, self.stdout, self.stderr):
            if ch is not None:
                ch.close()


@dataclass
class Negotiated:
    version: int
    capabilities: dict[str, Any] = field(default_factory=dict)


class BridgeClient:
    def __init__(
        self,
        session: MuxSession,
        channel: Channel,
        *,
        notify: NotifyCallback | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.session = session
        self.channel = channel
        self.timeout = timeout
        self._notify = notify
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._write_lock = asyncio.Lock()
        self._failed: str | None = None
        self._ports = itertools.count(FIRST_IO_PORT)
        self._reader = asyncio.create_task(self._read_loop(), name="bridge-read")
        self.negotiated: Negotiated | None = None
        # Set by whoever owns the VM: asked once per stall what the guest is doing when a call times
        # out, so the error says whether the guest kernel or the agent is stuck.
        self.on_timeout: Callable[[], Awaitable[str]] | None = None
        self._diagnosis: tuple[float, asyncio.Future[str]] | None = None

    @classmethod
    async def connect(
        cls,
        session: MuxSession,
        *,
        timeout: float = 60.0,
        notify: NotifyCallback | None = None,
        listener: Listener | None = None,
        call_timeout: float = DEFAULT_TIMEOUT,
    ) -> BridgeClient:
        """Accept the guest's dial on the bridge port, then negotiate the protocol."""
        own = listener is None
        lst = listener or await session.listen(BRIDGE_PORT)
        try:
            ch = await asyncio.wait_for(lst.accept(), timeout)
        except TimeoutError:
            raise BridgeTimeoutError(f"guest did not connect to the bridge within {timeout}s") from None
        finally:
            if own:
                lst.close()
        client = cls(session, ch, notify=notify, timeout=call_timeout)
        try:
            await client.negotiate(timeout=timeout)
        except BaseException:
            await client.close()
            raise
        return client

    # ---- plumbing --------------------------------------------------------------------------

    def set_notify(self, callback: NotifyCallback | None) -> None:
        self._notify = callback

    async def _read_loop(self) -> None:
        decoder = p.Decoder()
        reason = "guest closed the bridge"
        try:
            while data := await self.channel.read():
                for msg in decoder.feed(data):
                    self._on_message(msg)
        except p.ProtocolError as e:
            reason = f"bridge protocol error: {e}"
        except Exception as e:
            reason = f"bridge read failed: {e!r}"
        await self.fail(reason)

    def _on_message(self, msg: p.Message) -> None:
        if msg.kind == p.MsgType.RESPONSE:
            entry = self._pending.pop(msg.id, None)
            if entry is None:
                LOG.warning("bridge response for unknown id %d (%s)", msg.id, p.type_name(msg.type))
                return
            try:
                body = msg.json()
            except GcsError as e:
                entry[1].set_exception(e) if not entry[1].done() else None
                return
            if not entry[1].done():
                entry[1].set_result(body)
        elif msg.type in (p.NOTIFY_CONTAINER, p.NOTIFY_OOM):
            try:
                body = msg.json()
            except GcsError:
                LOG.warning("bridge notification with invalid JSON")
                return
            if self._notify is not None:
                try:
                    self._notify(body)
                except Exception:
                    LOG.exception("bridge notification callback failed")
        else:
            LOG.warning("bridge ignoring message %s", p.type_name(msg.type))

    async def fail(self, reason: str) -> None:
        """Fail pending and future calls (the VM died or the bridge broke)."""
        if self._failed is not None:
            return
        self._failed = reason
        pending, self._pending = self._pending, {}
        for op, fut in pending.values():
            if not fut.done():
                fut.set_exception(BridgeClosedError(f"guest {op} aborted: {reason}"))
        self.channel.close()

    async def close(self) -> None:
        await self.fail("bridge closed by host")
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader

    @property
    def closed(self) -> bool:
        return self._failed is not None

    async def request_raw(
        self,
        msg_type: int,
        body: dict[str, Any] | bytes,
        *,
        operation: str = "",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send one message and return the response body without interpreting ``Result``."""
        op = operation or p.type_name(msg_type)
        if self._failed is not None:
            raise BridgeClosedError(f"guest {op}: bridge is closed ({self._failed})")
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = (op, fut)
        try:
            frame = p.encode(msg_type, msg_id, body)
            async with self._write_lock:
                await self.channel.write(frame)
            t = self.timeout if timeout is None else timeout
            return await asyncio.wait_for(asyncio.shield(fut), t if t > 0 else None)
        except TimeoutError:
            why = await self._diagnose_timeout()
            message = f"guest {op} timed out after {timeout or self.timeout}s"
            raise BridgeTimeoutError(f"{message}; {why}" if why else message) from None
        except ConnectionError as e:
            if isinstance(e, BridgeClosedError):
                raise
            raise BridgeClosedError(f"guest {op}: {e}") from e
        finally:
            self._pending.pop(msg_id, None)

    async def call(
        self, rpc: Rpc, body: dict[str, Any], *, timeout: float | None = None, what: str = ""
    ) -> dict[str, Any]:
        op = p.RPC_NAMES[rpc] + (f" {what}" if what else "")
        resp = await self.request_raw(p.request_type(rpc), body, operation=op, timeout=timeout)
        result = int(resp.get("Result") or 0)
        if result != 0:
            raise BridgeError(
                op, result, str(resp.get("ErrorMessage") or ""), list(resp.get("ErrorRecords") or [])
            )
        return resp

    async def _diagnose_timeout(self, reuse: float = 2.0) -> str:
        """The owner's diagnosis of a stall; calls that time out together share one."""
        if self.on_timeout is None or self._failed is not None:
            return ""
        loop = asyncio.get_running_loop()
        if self._diagnosis is None or loop.time() - self._diagnosis[0] > reuse:
            self._diagnosis = (loop.time(), asyncio.ensure_future(self.on_timeout()))
        try:
            return await asyncio.shield(self._diagnosis[1])
        except Exception as e:
            return f"diagnosing the stall failed: {e}"

    # ---- RPCs ------------------------------------------------------------------------------

    async def negotiate(self, *, timeout: float | None = None) -> Negotiated:
        body = {
            **p.request_base(),
            "MinimumVersion": p.PROTOCOL_VERSION,
            "MaximumVersion": p.PROTOCOL_VERSION,
            # Our extension; an upstream guest ignores the field and never sends NOTIFY_OOM.
            p.OOM_NOTIFICATIONS_REQUEST_KEY: True,
        }
        resp = await self.call(Rpc.NEGOTIATE_PROTOCOL, body, timeout=timeout)
        version = int(resp.get("Version") or 0)
        if version != p.PROTOCOL_VERSION:
            raise GcsError(
                f"guest negotiated unexpected protocol version {version}",
                p.Hresult.VMCOMPUTE_UNSUPPORTED_PROTOCOL_VERSION,
            )
        self.negotiated = Negotiated(version, dict(resp.get("Capabilities") or {}))
        return self.negotiated

    @property
    def oom_notifications(self) -> bool:
        """Whether the guest reports OOM kills (it said so when the protocol was negotiated)."""
        if self.negotiated is None:
            return False
        guest_caps = self.negotiated.capabilities.get("GuestDefinedCapabilities") or {}
        return bool(guest_caps.get(p.OOM_NOTIFICATIONS_CAPABILITY))

    async def create_container(
        self, container_id: str, document: dict[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        """``document``: the LCOW container document (SchemaVersion, OciBundlePath, OciSpecification...)."""
        body = {**p.request_base(container_id), "ContainerConfig": p.any_in_string(document)}
        return await self.call(Rpc.CREATE, body, timeout=timeout, what=container_id)

    async def start_container(self, container_id: str, *, timeout: float | None = None) -> None:
        await self.call(Rpc.START, p.request_base(container_id), timeout=timeout, what=container_id)

    async def shutdown_graceful(self, container_id: str, *, timeout: float | None = None) -> None:
        await self.call(
            Rpc.SHUTDOWN_GRACEFUL, p.request_base(container_id), timeout=timeout, what=container_id
        )

    async def shutdown_forced(self, container_id: str, *, timeout: float | None = None) -> None:
        await self.call(Rpc.SHUTDOWN_FORCED, p.request_base(container_id), timeout=timeout, what=container_id)

    async def execute_process(
        self, container_id: str, params: dict[str, Any], *, timeout: float | None = None
    ) -> GuestProcess:
        """Run a process; ``params`` are upstream ProcessParameters (OciProcess, CreateStd*Pipe, ...).

        Without ``OciProcess`` this starts the container's init process. The stdio channels are
        listened for here and accepted once the guest has dialed them.
        """
        wanted = [bool(params.get(k)) for k in ("CreateStdInPipe", "CreateStdOutPipe", "CreateStdErrPipe")]
        listeners: list[Listener | None] = []
        relay: dict[str, int] = {}
        try:
            for name, want in zip(("StdIn", "StdOut", "StdErr"), wanted, strict=True):
                if want:
                    port = next(self._ports)
                    listeners.append(await self.session.listen(port))
                    relay[name] = port
                else:
                    listeners.append(None)
            body = {
                **p.request_base(container_id),
                "Settings": {"ProcessParameters": p.any_in_string(params), "VsockStdioRelaySettings": relay},
            }
            resp = await self.call(Rpc.EXECUTE_PROCESS, body, timeout=timeout, what=container_id)
            chans: list[Channel | None] = []
            for lst in listeners:
                if lst is None:
                    chans.append(None)
                    continue
                try:
                    chans.append(
                        await asyncio.wait_for(lst.accept(), self.timeout if timeout is None else timeout)
                    )
                except TimeoutError:
                    for ch in chans:
                        if ch is not None:
                            ch.close()
                    raise BridgeTimeoutError(f"guest did not connect stdio port {lst.port}") from None
            return GuestProcess(container_id, int(resp.get("ProcessId") or 0), *chans)
        finally:
            for lst in listeners:
                if lst is not None:
                    lst.close()

    async def wait_process(self, container_id: str, pid: int, *, timeout: float | None = 0) -> int:
        """Exit code of ``pid``. ``timeout=0`` (default) waits for as long as the process runs."""
        body = {**p.request_base(container_id), "ProcessId": pid, "TimeoutInMs": p.INFINITE_WAIT_TIMEOUT}
        resp = await self.call(Rpc.WAIT_FOR_PROCESS, body, timeout=timeout, what=f"{container_id} pid {pid}")
        return int(resp.get("ExitCode") or 0)

    async def signal_process(
        self, container_id: str, pid: int, signal: int, *, timeout: float | None = None
    ) -> None:
        body = {**p.request_base(container_id), "ProcessId": pid, "Options": {"Signal": signal}}
        await self.call(Rpc.SIGNAL_PROCESS, body, timeout=timeout, what=f"{container_id} pid {pid}")

    async def resize_console(
        self, container_id: str, pid: int, height: int, width: int, *, timeout: float | None = None
    ) -> None:
        body = {**p.request_base(container_id), "ProcessId": pid, "Height": height, "Width": width}
        await self.call(Rpc.RESIZE_CONSOLE, body, timeout=timeout, what=f"{container_id} pid {pid}")

    async def get_properties(
        self, container_id: str, property_types: list[str], *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Properties JSON: ``ProcessList`` → [{"ProcessId"}], ``Statistics`` → ``LCOWMetrics``."""
        body = {**p.request_base(container_id), "Query": p.any_in_string({"PropertyTypes": property_types})}
        resp = await self.call(Rpc.GET_PROPERTIES, body, timeout=timeout, what=container_id)
        props = p.parse_any_in_string(resp.get("Properties"), "Properties")
        return props if isinstance(props, dict) else {}

    async def modify_settings(
        self,
        request: dict[str, Any],
        container_id: str = NULL_CONTAINER_ID,
        *,
        timeout: float | None = None,
    ) -> None:
        """``request``: a guest ModificationRequest {ResourceType, RequestType, Settings}."""
        body = {**p.request_base(container_id), "Request": request}
        what = f"{request.get('ResourceType', '')}/{request.get('RequestType', 'Add')}"
        await self.call(Rpc.MODIFY_SETTINGS, body, timeout=timeout, what=what)

    async def update_container(
        self, container_id: str, resources: dict[str, Any], *, timeout: float | None = None
    ) -> None:
        await self.modify_settings(
            {
                "ResourceType": ResourceType.CONTAINER_CONSTRAINTS,
                "RequestType": RequestType.UPDATE,
                "Settings": {"Linux": resources},
            },
            container_id,
            timeout=timeout,
        )

    async def dump_stacks(self, *, timeout: float | None = None) -> str:
        resp = await self.call(Rpc.DUMP_STACKS, p.request_base(), timeout=timeout)
        return str(resp.get("GuestStacks") or "")

    async def delete_container_state(self, container_id: str, *, timeout: float | None = None) -> None:
        await self.call(
            Rpc.DELETE_CONTAINER_STATE, p.request_base(container_id), timeout=timeout, what=container_id
        )
