"""asyncio ttrpc client: many concurrent unary calls over one unix-socket connection."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from hcsshim.api.ttrpc import request_pb2
from hcsshim.ttrpc.address import socket_address
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
from hcsshim.ttrpc.status import Code, ConnectionClosedError, TtrpcError

log = logging.getLogger("hcsshim.ttrpc.client")

M = TypeVar("M", bound=Message)
MetadataInput = Mapping[str, str | Sequence[str]]


def metadata_pairs(metadata: MetadataInput | None) -> list[request_pb2.KeyValue]:
    """Flatten metadata into KeyValue pairs; keys are lower-cased as ttrpc's MD does."""
    pairs: list[request_pb2.KeyValue] = []
    for key, value in (metadata or {}).items():
        values = [value] if isinstance(value, str) else list(value)
        pairs.extend(request_pb2.KeyValue(key=key.lower(), value=v) for v in values)
    return pairs


class Client:
    """One ttrpc connection. Create with :meth:`connect`; every :meth:`call` is independent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str = "") -> None:
        self.address = address
        self._reader = reader
        self._writer = writer
        self._stream_ids = itertools.count(1, 2)
        self._pending: dict[int, asyncio.Future[request_pb2.Response]] = {}
        self._closed_reason: str | None = None
        self._closed = asyncio.get_running_loop().create_future()
        self._read_task = asyncio.create_task(self._read_loop(), name=f"ttrpc-client-read {address}")

    @classmethod
    async def connect(cls, address: str, *, timeout: float | None = None) -> Client:
        path = socket_address(address)
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path, limit=READ_CHUNK)
        log.debug("event=connected address=%s", address)
        return cls(reader, writer, address)

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def wait_closed(self) -> str:
        """Wait until the connection is gone; returns the reason."""
        return await asyncio.shield(self._closed)

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float | None = None,
        metadata: MetadataInput | None = None,
    ) -> M:
        """Send one unary request and wait for its response.

        Raises :class:`TtrpcError` with the server's status, ``DEADLINE_EXCEEDED`` when ``timeout``
        (seconds) elapses, ``RESOURCE_EXHAUSTED`` for a request over 4 MiB (nothing is sent), and
        :class:`ConnectionClosedError` when the connection is or becomes closed.
        """
        if self._closed_reason is not None:
            raise ConnectionClosedError(self._closed_reason)
        envelope = request_pb2.Request(
            service=service,
            method=method,
            payload=request.SerializeToString(),
            metadata=metadata_pairs(metadata),
        )
        if timeout is not None:
            envelope.timeout_nano = max(1, int(timeout * 1e9))
        body = envelope.SerializeToString()
        if len(body) > MAX_MESSAGE_LENGTH:
            err = OversizedMessageError(len(body))
            raise TtrpcError(Code.RESOURCE_EXHAUSTED, str(err))
        # Allocation and write happen with no await in between, so ids hit the wire in increasing order.
        stream_id = next(self._stream_ids)
        if stream_id > 0xFFFFFFFF:
            raise ConnectionClosedError("stream ids exhausted")
        future: asyncio.Future[request_pb2.Response] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = future
        try:
            self._writer.write(encode_frame(stream_id, MessageType.REQUEST, body))
            try:
                async with asyncio.timeout(timeout):
                    await self._writer.drain()
                    response = await future
            except TimeoutError:
                raise TtrpcError(
                    Code.DEADLINE_EXCEEDED, f"{service}/{method}: no response within {timeout}s"
                ) from None
            except (ConnectionError, OSError) as exc:
                self._shutdown(f"write failed: {exc}")
                raise ConnectionClosedError(self._closed_reason or str(exc)) from exc
        finally:
            self._pending.pop(stream_id, None)
        if response.HasField("status") and response.status.code != Code.OK:
            raise TtrpcError.from_status(response.status)
        result = response_type()
        try:
            result.ParseFromString(response.payload)
        except DecodeError as exc:
            raise TtrpcError(Code.INTERNAL, f"{service}/{method}: cannot decode response: {exc}") from exc
        return result

    async def close(self) -> None:
        self._shutdown("client closed")
        self._read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._read_task
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _shutdown(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        self._writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionClosedError(reason))
        self._pending.clear()
        if not self._closed.done():
            self._closed.set_result(reason)
        log.debug("event=closed address=%s reason=%r", self.address, reason)

    async def _read_loop(self) -> None:
        reason = "connection closed by server"
        try:
            failure = await read_frames(self._reader, self._dispatch, log=log, peer=f"address={self.address}")
            reason = failure or reason
        finally:
            self._shutdown(reason)

    def _dispatch(self, item: Frame | OversizedFrame) -> None:
        future = self._pending.get(item.stream_id)
        if isinstance(item, OversizedFrame):
            log.warning(
                "event=oversized_response stream=%d length=%d limit=%d",
                item.stream_id,
                item.length,
                MAX_MESSAGE_LENGTH,
            )
            if future is not None and not future.done():
                future.set_exception(
                    TtrpcError(Code.RESOURCE_EXHAUSTED, str(OversizedMessageError(item.length)))
                )
            return
        if item.type != MessageType.RESPONSE:
            # Unary-only client: server Data/Request frames have no meaning here.
            log.debug("event=ignored_frame stream=%d type=%d", item.stream_id, item.type)
            return
        if future is None or future.done():
            # A response after the caller gave up (timeout or cancel).
            return
        response = request_pb2.Response()
        try:
            response.ParseFromString(item.payload)
        except DecodeError as exc:
            future.set_exception(TtrpcError(Code.INTERNAL, f"cannot decode response envelope: {exc}"))
            return
        future.set_result(response)
