"""The bridge server: reads requests from the host, runs them concurrently, writes responses.

The agent dials the host's bridge port. If the bridge breaks (the host closed it, or sent bytes
that lost framing) the agent keeps its containers and dials again, queueing exit notifications
meanwhile, so one bad frame never takes the guest down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from hcsshim.gcs import protocol as p
from hcsshim.gcs.protocol import GcsError, Hresult, Rpc
from hcsshim.hvsock import clone
from hcsshim.hvsock.abi import BRIDGE_PORT, NULL_CONTAINER_ID
from hcsshim.hvsock.session import Channel, MuxSession

from . import log, portforward
from .runtime import Host

LOG = log.get("bridge")
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class BridgeServer:
    def __init__(self, host: Host, session: MuxSession) -> None:
        self.host = host
        self.session = session
        host.session = session
        host.notify = self._notify
        host.notify_oom = self._notify_oom
        # Set by a host that asked for OOM notifications when it negotiated (protocol.NOTIFY_OOM).
        self.oom_notifications = False
        self._channel: Channel | None = None
        self._write_lock = asyncio.Lock()
        self._pending: list[bytes] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.shutdown_requested = asyncio.Event()
        self._negotiated = False
        # Set by the host's template prepare request (hvsock/clone.py): on hang-up, wait to be cloned.
        self.template_nonce: str | None = None
        self._handlers: dict[int, Handler] = {
            Rpc.NEGOTIATE_PROTOCOL: self._negotiate,
            Rpc.CREATE: self._create,
            Rpc.START: self._start,
            Rpc.SHUTDOWN_GRACEFUL: self._shutdown_graceful,
            Rpc.SHUTDOWN_FORCED: self._shutdown_forced,
            Rpc.EXECUTE_PROCESS: self._execute_process,
            Rpc.WAIT_FOR_PROCESS: self._wait_for_process,
            Rpc.SIGNAL_PROCESS: self._signal_process,
            Rpc.RESIZE_CONSOLE: self._resize_console,
            Rpc.GET_PROPERTIES: self._get_properties,
            Rpc.MODIFY_SETTINGS: self._modify_settings,
            Rpc.DUMP_STACKS: self._dump_stacks,
            Rpc.DELETE_CONTAINER_STATE: self._delete_container_state,
            Rpc.UPDATE_CONTAINER: self._update_container,
        }

    async def serve_forever(self, redial_delay: float = 0.2) -> None:
        # Port forwarding into pod namespaces (guest/portforward.py), before the host can ask for it.
        network = getattr(self.host, "network", None)
        if network is not None:
            forwarder = asyncio.create_task(portforward.serve(self.session, network))
            self._tasks.add(forwarder)
            forwarder.add_done_callback(self._tasks.discard)
        while not self.session.closed and not self.shutdown_requested.is_set():
            try:
                # Short timeout: an OPEN written before the host end of a virtio port connected is lost.
                ch = await self.session.dial(BRIDGE_PORT, timeout=5)
            except (ConnectionRefusedError, TimeoutError) as e:
                LOG.debug("bridge dial failed", extra={"error": str(e)})
                await asyncio.sleep(redial_delay)
                continue
            except ConnectionError:
                return
            LOG.info("bridge connected")
            await self.serve_channel(ch)
            LOG.info("bridge disconnected")

    async def serve_channel(self, ch: Channel) -> None:
        self._channel = ch
        self._negotiated = False
        decoder = p.Decoder()
        for frame in self._pending:
            await self._write(frame)
        self._pending.clear()
        try:
            while True:
                data = await ch.read()
                if not data:
                    return
                try:
                    messages = decoder.feed(data)
                except p.ProtocolError as e:
                    LOG.warning("bridge framing lost", extra={"error": str(e)})
                    await self._write(
                        p.encode(
                            p.response_type(e.msg_type),
                            e.msg_id,
                            p.error_response(
                                GcsError(f"invalid bridge message: {e}", Hresult.VMCOMPUTE_INVALID_JSON)
                            ),
                        )
                    )
                    return
                for msg in messages:
                    self._dispatch(msg)
        finally:
            self._channel = None
            ch.close()

    def _dispatch(self, msg: p.Message) -> None:
        if msg.kind != p.MsgType.REQUEST:
            LOG.warning("ignoring non-request message", extra={"type": p.type_name(msg.type), "id": msg.id})
            return
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: p.Message) -> None:
        rpc = p.rpc_of(msg.type)
        name = p.RPC_NAMES.get(rpc, f"{rpc:#x}")
        activity = ""
        try:
            body = msg.json()
            activity = str(body.get("ActivityId") or "")
            handler = self._handlers.get(rpc)
            if handler is None:
                raise GcsError(
                    f"bridge: unknown message type {msg.type:#x}", Hresult.VMCOMPUTE_UNKNOWN_MESSAGE
                )
            if not self._negotiated and rpc != Rpc.NEGOTIATE_PROTOCOL:
                raise GcsError(f"{name} before protocol negotiation", Hresult.VMCOMPUTE_UNKNOWN_MESSAGE)
            LOG.debug("request", extra={"rpc": name, "id": msg.id, "cid": body.get("ContainerId", "")})
            resp = await handler(body)
            resp = {**p.response_base(activity), **resp}
        except GcsError as e:
            LOG.info(
                "request failed",
                extra={"rpc": name, "id": msg.id, "error": str(e), "result": hex(e.result & 0xFFFFFFFF)},
            )
            resp = p.error_response(e, activity)
        except Exception as e:
            LOG.exception("request crashed", extra={"rpc": name, "id": msg.id})
            resp = p.error_response(GcsError(f"{name}: {type(e).__name__}: {e}", _crash_result(e)), activity)
        try:
            frame = p.encode(p.response_type(msg.type), msg.id, resp)
        except GcsError as e:
            frame = p.encode(p.response_type(msg.type), msg.id, p.error_response(e, activity))
        await self._write(frame)

    async def _write(self, frame: bytes) -> None:
        async with self._write_lock:
            ch = self._channel
            if ch is None:
                return
            with contextlib.suppress(ConnectionError):
                await ch.write(frame)

    def _notify(self, cid: str, kind: str) -> None:
        self._send_notification(p.encode(p.NOTIFY_CONTAINER, 0, p.container_notification(cid, kind)))

    def _notify_oom(self, cid: str, kills: int) -> None:
        if not self.oom_notifications:
            return  # an upstream host would take any unknown notification as a fatal bridge error
        self._send_notification(p.encode(p.NOTIFY_OOM, 0, p.oom_notification(cid, kills)))

    def _send_notification(self, frame: bytes) -> None:
        if self._channel is None:
            self._pending.append(frame)
            return
        task = asyncio.create_task(self._write(frame))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- handlers ---------------------------------------------------------------------------

    async def _negotiate(self, body: dict[str, Any]) -> dict[str, Any]:
        lo, hi = int(body.get("MinimumVersion") or 0), int(body.get("MaximumVersion") or 0)
        if hi < p.PROTOCOL_VERSION or lo > p.PROTOCOL_VERSION:
            raise GcsError(
                f"unsupported protocol versions {lo}..{hi}", Hresult.VMCOMPUTE_UNSUPPORTED_PROTOCOL_VERSION
            )
        self._negotiated = True
        self.oom_notifications = bool(body.get(p.OOM_NOTIFICATIONS_REQUEST_KEY))
        return {"Version": p.PROTOCOL_VERSION, "Capabilities": p.capabilities()}

    async def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        cid = str(body.get("ContainerId") or "")
        config = p.parse_any_in_string(body.get("ContainerConfig"), "ContainerConfig")
        if not isinstance(config, dict):
            raise GcsError("ContainerConfig is not an object", Hresult.VMCOMPUTE_INVALID_JSON)
        if cid == NULL_CONTAINER_ID:
            return {}  # the UVM "create" (UvmConfig) is accepted and ignored, as the Linux GCS does
        c = await self.host.create_container(cid, config)
        return {"SelectedProtocolVersion": p.PROTOCOL_VERSION, p.INIT_PROCESS_ID_KEY: c.init.pid}

    async def _start(self, body: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _shutdown_graceful(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._shutdown(body, graceful=True)

    async def _shutdown_forced(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._shutdown(body, graceful=False)

    async def _shutdown(self, body: dict[str, Any], graceful: bool) -> dict[str, Any]:
        cid = str(body.get("ContainerId") or "")
        if cid == NULL_CONTAINER_ID:
            self.shutdown_requested.set()
            return {}
        await self.host.shutdown_container(cid, graceful)
        return {}

    async def _execute_process(self, body: dict[str, Any]) -> dict[str, Any]:
        cid = str(body.get("ContainerId") or "")
        settings = body.get("Settings") or {}
        params = p.parse_any_in_string(settings.get("ProcessParameters"), "ProcessParameters") or {}
        if not isinstance(params, dict):
            raise GcsError("ProcessParameters is not an object", Hresult.VMCOMPUTE_INVALID_JSON)
        relay = settings.get("VsockStdioRelaySettings") or {}
        ports = (
            int(relay.get("StdIn") or 0) if params.get("CreateStdInPipe") else None,
            int(relay.get("StdOut") or 0) if params.get("CreateStdOutPipe") else None,
            int(relay.get("StdErr") or 0) if params.get("CreateStdErrPipe") else None,
        )
        if params.get("CreateInUtilityVM") or cid == NULL_CONTAINER_ID:
            pid = await self.host.exec_external(params, ports)
        else:
            c = self.host.container(cid)
            oci_process = params.get("OciProcess")
            if oci_process is None:
                pid = await self.host.start_init(c, ports)
            else:
                pid = await self.host.exec_in_container(c, oci_process, ports)
        return {"ProcessId": pid}

    async def _wait_for_process(self, body: dict[str, Any]) -> dict[str, Any]:
        code = await self.host.wait_process(
            str(body.get("ContainerId") or ""),
            int(body.get("ProcessId") or 0),
            int(body.get("TimeoutInMs", p.INFINITE_WAIT_TIMEOUT)),
        )
        return {"ExitCode": code & 0xFFFFFFFF}

    async def _signal_process(self, body: dict[str, Any]) -> dict[str, Any]:
        options = body.get("Options") or {}
        await self.host.signal_process(
            str(body.get("ContainerId") or ""),
            int(body.get("ProcessId") or 0),
            int(options.get("Signal") or 0),
        )
        return {}

    async def _resize_console(self, body: dict[str, Any]) -> dict[str, Any]:
        self.host.resize_console(
            str(body.get("ContainerId") or ""),
            int(body.get("ProcessId") or 0),
            int(body.get("Height") or 0),
            int(body.get("Width") or 0),
        )
        return {}

    async def _get_properties(self, body: dict[str, Any]) -> dict[str, Any]:
        query = p.parse_any_in_string(body.get("Query"), "Query") or {}
        props = await self.host.get_properties(str(body.get("ContainerId") or ""), query)
        return {"Properties": p.any_in_string(props)}

    async def _modify_settings(self, body: dict[str, Any]) -> dict[str, Any]:
        request = body.get("Request")
        if not isinstance(request, dict):
            raise GcsError("ModifySettings has no Request object", Hresult.VMCOMPUTE_INVALID_JSON)
        if request.get("ResourceType") == clone.TEMPLATE_RESOURCE_TYPE:
            return self._prepare_template(request)
        await self.host.modify_settings(str(body.get("ContainerId") or ""), request)
        return {}

    def _prepare_template(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            nonce = clone.parse_prepare(request)
        except clone.CloneProtocolError as e:
            raise GcsError(str(e), Hresult.E_INVALIDARG) from e
        if self.host.containers:
            # A clone would inherit processes its host knows nothing about.
            raise GcsError(
                f"cannot prepare as a template: {len(self.host.containers)} container(s) exist",
                Hresult.VMCOMPUTE_INVALID_STATE,
            )
        self.template_nonce = nonce
        LOG.info("prepared as a template; waiting for the host to hang up", extra={"nonce": nonce})
        return {}

    async def _dump_stacks(self, body: dict[str, Any]) -> dict[str, Any]:
        stacks = self.host.dump_stacks()
        # The whole response must fit in one bridge message, after JSON escaping (newlines double).
        while len(p.dumps({"GuestStacks": stacks})) > p.MAX_MESSAGE_SIZE - 1024:
            stacks = stacks[: len(stacks) * 3 // 4] + "\n... (truncated)"
        return {"GuestStacks": stacks}

    async def _delete_container_state(self, body: dict[str, Any]) -> dict[str, Any]:
        await self.host.delete_container_state(str(body.get("ContainerId") or ""))
        return {}

    async def _update_container(self, body: dict[str, Any]) -> dict[str, Any]:
        resources = p.parse_any_in_string(body.get("Resources"), "Resources") or {}
        await self.host.update_container(str(body.get("ContainerId") or ""), resources)
        return {}


def _crash_result(e: Exception) -> int:
    """The HRESULT of a failure that was not a GcsError: what its type says, so the host still sees
    NotFound for a missing file or DeadlineExceeded for a timeout, E_FAIL otherwise."""
    if isinstance(e, TimeoutError):
        return Hresult.VMCOMPUTE_TIMEOUT
    if isinstance(e, OSError):
        return p.hresult_of_errno(e.errno)
    if isinstance(e, NotImplementedError):
        return Hresult.E_NOTIMPL
    return Hresult.E_FAIL
