"""asyncio ttrpc server: unary requests on each connection are handled concurrently.

Every request runs in its own task, so a handler that waits (``Wait`` until a process exits) never holds
up other calls on the same connection. Handlers are coroutines; blocking work belongs in
``asyncio.to_thread``. A connection that sends something that is not ttrpc is closed with a logged
reason; nothing a peer sends can stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError, Message

from hcsshim.api.google.rpc import status_pb2
from hcsshim.api.ttrpc import request_pb2
from hcsshim.ttrpc.address import is_abstract, socket_address
from hcsshim.ttrpc.frame import (
    MAX_MESSAGE_LENGTH,
    READ_CHUNK,
    Frame,
    MessageType,
    OversizedFrame,
    OversizedMessageError,
    encode_frame,
    read_frames,
)
from hcsshim.ttrpc.status import Code, TtrpcError

log = logging.getLogger("hcsshim.ttrpc.server")

NAMESPACE_KEY = "containerd-namespace-ttrpc"

# The request type is the message class registered with the handler; Any lets handlers declare it.
Handler = Callable[["Context", Any], Awaitable[Message]]
MethodTable = Mapping[str, tuple[type[Message], Handler]]


@dataclass
class Context:
    """Per-call information handed to a handler."""

    service: str
    method: str
    metadata: dict[str, list[str]] = field(default_factory=dict)
    # In loop.time() / time.monotonic() seconds; None when the caller set no timeout.
    deadline: float | None = None

    @property
    def namespace(self) -> str | None:
        return self.get(NAMESPACE_KEY)

    def get(self, key: str) -> str | None:
        values = self.metadata.get(key.lower())
        return values[0] if values else None

    def time_remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - asyncio.get_running_loop().time()


def _status_response(code: Code, message: str) -> request_pb2.Response:
    return request_pb2.Response(status=TtrpcError(code, message).to_status())


def _peer(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return "?"
    try:
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return "?"
    return f"pid={pid},uid={uid},gid={gid}"


class _Connection:
    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._server = server
        self._reader = reader
        self._writer = writer
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_stream_id = 0
        self.peer = _peer(writer)

    async def serve(self) -> None:
        reason = "eof"
        try:
            failure = await read_frames(self._reader, self._on_frame, log=log, peer=f"peer={self.peer}")
            reason = failure or reason
        except asyncio.CancelledError:
            reason = "server closing"
            raise
        finally:
            self.close(reason)

    def close(self, reason: str) -> None:
        # Go cancels request contexts when the connection goes; handlers see CancelledError.
        for task in self._tasks:
            task.cancel()
        self._writer.close()
        log.debug("event=connection_done peer=%s reason=%r", self.peer, reason)

    async def wait_handlers(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _send(self, stream_id: int, response: request_pb2.Response) -> None:
        if self._writer.is_closing():
            return
        body = response.SerializeToString()
        if len(body) > MAX_MESSAGE_LENGTH:
            err = OversizedMessageError(len(body))
            log.warning("event=oversized_response stream=%d length=%d", stream_id, len(body))
            body = _status_response(Code.RESOURCE_EXHAUSTED, str(err)).SerializeToString()
        self._writer.write(encode_frame(stream_id, MessageType.RESPONSE, body))

    def _fail(self, stream_id: int, code: Code, message: str) -> None:
        log.info(
            "event=request_rejected peer=%s stream=%d code=%s msg=%r",
            self.peer,
            stream_id,
            code.name,
            message,
        )
        self._send(stream_id, _status_response(code, message))

    def _on_frame(self, item: Frame | OversizedFrame) -> None:
        if isinstance(item, OversizedFrame):
            self._fail(item.stream_id, Code.RESOURCE_EXHAUSTED, str(OversizedMessageError(item.length)))
            return
        if item.type == MessageType.DATA:
            # Streaming is not served: no stream is ever open for Data.
            self._fail(item.stream_id, Code.INVALID_ARGUMENT, "StreamID is no longer active")
            return
        if item.type != MessageType.REQUEST:
            log.debug("event=ignored_frame peer=%s stream=%d type=%d", self.peer, item.stream_id, item.type)
            return
        if item.stream_id % 2 == 0:
            self._fail(
                item.stream_id, Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams"
            )
            return
        if item.stream_id <= self._last_stream_id:
            self._fail(item.stream_id, Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment")
            return
        self._last_stream_id = item.stream_id
        request = request_pb2.Request()
        try:
            request.ParseFromString(item.payload)
        except DecodeError as exc:
            self._fail(item.stream_id, Code.INVALID_ARGUMENT, f"unmarshal request error: {exc}")
            return
        task = asyncio.create_task(
            self._handle(item.stream_id, request), name=f"ttrpc {request.service}/{request.method}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, stream_id: int, request: request_pb2.Request) -> None:
        response = await self._server.dispatch(request)
        self._send(stream_id, response)
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.drain()


class Server:
    """Register services, then :meth:`start` on a path or :meth:`start_fd` on an inherited socket."""

    def __init__(self) -> None:
        self._services: dict[str, dict[str, tuple[type[Message], Handler]]] = {}
        self._listeners: list[asyncio.Server] = []
        self._owned_paths: list[tuple[str, int]] = []
        self._connections: set[_Connection] = set()
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._closed: asyncio.Event | None = None

    def register(self, service: str, methods: MethodTable) -> None:
        """Add (or extend) a service: ``{"Method": (RequestType, async handler(ctx, req) -> Message)}``."""
        self._services.setdefault(service, {}).update(methods)

    @property
    def services(self) -> dict[str, list[str]]:
        return {name: sorted(methods) for name, methods in self._services.items()}

    async def start(self, address: str) -> None:
        """Listen on a unix path (``/p``, ``unix:///p``) or an abstract name.

        asyncio replaces a socket file already at the path, so a caller that may find a live server
        there (a shim joining a group) must probe it first.
        """
        path = socket_address(address)
        listener = await asyncio.start_unix_server(self._on_connect, path=path, limit=READ_CHUNK)
        self._listeners.append(listener)
        if not is_abstract(path):
            self._owned_paths.append((path, os.stat(path).st_ino))
        self._ensure_event()
        log.info("event=listening address=%s", address)

    async def start_fd(self, sock: socket.socket | int) -> None:
        """Serve on an already-listening unix socket, e.g. fd 3 passed by the shim's start process."""
        if isinstance(sock, int):
            sock = socket.socket(fileno=sock)
        sock.setblocking(False)
        listener = await asyncio.start_unix_server(self._on_connect, sock=sock, limit=READ_CHUNK)
        self._listeners.append(listener)
        self._ensure_event()
        log.info("event=listening fd=%d name=%r", sock.fileno(), sock.getsockname())

    def _ensure_event(self) -> None:
        if self._closed is None:
            self._closed = asyncio.Event()

    async def wait_closed(self) -> None:
        """Return once :meth:`close` has run."""
        self._ensure_event()
        assert self._closed is not None
        await self._closed.wait()

    async def close(self) -> None:
        """Stop listening, drop every connection (cancelling in-flight handlers) and remove our socket."""
        for listener in self._listeners:
            listener.close()
        for conn in list(self._connections):
            conn.close("server closing")
        for task in list(self._conn_tasks):
            task.cancel()
        if self._conn_tasks:
            await asyncio.gather(*self._conn_tasks, return_exceptions=True)
        for conn in list(self._connections):
            await conn.wait_handlers()
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await listener.wait_closed()
        self._listeners.clear()
        for path, inode in self._owned_paths:
            # Only unlink the socket if it is still ours (a successor may have re-bound the path).
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if stat.S_ISSOCK(st.st_mode) and st.st_ino == inode:
                    os.unlink(path)
        self._owned_paths.clear()
        self._ensure_event()
        assert self._closed is not None
        self._closed.set()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, reader, writer)
        self._connections.add(conn)
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)
        log.debug("event=connection_open peer=%s", conn.peer)
        try:
            await conn.serve()
        except asyncio.CancelledError:
            pass
        except Exception:  # never let one connection take the server down
            log.exception("event=connection_error peer=%s", conn.peer)
        finally:
            self._connections.discard(conn)
            if task is not None:
                self._conn_tasks.discard(task)

    async def dispatch(self, request: request_pb2.Request) -> request_pb2.Response:
        """Run the handler for one decoded Request and build its Response (also usable without IO)."""
        methods = self._services.get(request.service)
        if methods is None:
            return _status_response(Code.UNIMPLEMENTED, f"service {request.service}")
        entry = methods.get(request.method)
        if entry is None:
            return _status_response(Code.UNIMPLEMENTED, f"method {request.method}")
        request_type, handler = entry
        message = request_type()
        try:
            message.ParseFromString(request.payload)
        except DecodeError as exc:
            return _status_response(Code.INVALID_ARGUMENT, f"unmarshal request error: {exc}")
        metadata: dict[str, list[str]] = {}
        for kv in request.metadata:
            metadata.setdefault(kv.key.lower(), []).append(kv.value)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout_nano / 1e9 if request.timeout_nano > 0 else None
        ctx = Context(request.service, request.method, metadata, deadline)
        full = f"/{request.service}/{request.method}"
        timeout_cm = asyncio.timeout_at(deadline)
        try:
            async with timeout_cm:
                result = await handler(ctx, message)
        except TtrpcError as exc:
            return request_pb2.Response(status=exc.to_status())
        except TimeoutError as exc:
            if timeout_cm.expired():
                return _status_response(Code.DEADLINE_EXCEEDED, f"{full}: context deadline exceeded")
            log.exception("event=handler_failed method=%s", full)
            return _status_response(Code.UNKNOWN, str(exc) or type(exc).__name__)
        except Exception as exc:
            log.exception("event=handler_failed method=%s", full)
            return _status_response(Code.UNKNOWN, str(exc) or type(exc).__name__)
        if result is None:
            return _status_response(Code.UNKNOWN, "ttrpc: marshal called with nil")
        return request_pb2.Response(status=status_pb2.Status(), payload=result.SerializeToString())
