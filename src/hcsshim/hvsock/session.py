"""A mux session over a Transport: channels, listeners, credit (stdlib only).

Credit-based flow control means the reader loop only ever appends to a bounded per-channel buffer,
so a stdout nobody reads never blocks the bridge or any other channel. Channel ids carry the
dialer's role in the low bit so both ends can dial without colliding.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import errno
from collections.abc import Callable

from hcsshim.hvsock.codec import (
    MAX_DATA,
    OPEN_BODY,
    U32,
    Frame,
    FrameDecoder,
    Kind,
    MuxProtocolError,
    accept_frame,
    encode_frame,
    open_frame,
    reject_frame,
    window_frame,
)
from hcsshim.hvsock.transports import Transport

DEFAULT_WINDOW = 256 * 1024


class Role(enum.IntEnum):
    HOST = 0
    GUEST = 1


class Channel:
    """One bidirectional byte stream. Reads return b"" at the peer's CLOSE/RESET."""

    def __init__(self, session: MuxSession, cid: int, port: int, window: int) -> None:
        self._session = session
        self.id = cid
        self.port = port
        self._rx = bytearray()
        self._rx_event = asyncio.Event()
        self._rx_eof = False
        self._consumed = 0
        self._credit = window
        self._credit_event = asyncio.Event()
        self._tx_closed = False
        self._reset_by_peer = False
        self._closed = False

    # called by the session
    def _on_data(self, data: bytes) -> None:
        if self._closed:
            # We are gone but the peer may still be sending; keep its credit flowing.
            self._session._send(window_frame(self.id, len(data)))
            return
        if len(self._rx) + len(data) > self._session.window:
            raise MuxProtocolError(f"channel {self.id}: peer exceeded its credit")
        self._rx += data
        self._rx_event.set()

    def _on_eof(self) -> None:
        self._rx_eof = True
        self._rx_event.set()

    def _on_reset(self) -> None:
        self._reset_by_peer = True
        self._tx_closed = True
        self._on_eof()
        self._credit_event.set()

    def _on_window(self, increment: int) -> None:
        self._credit += increment
        self._credit_event.set()

    # application API
    @property
    def at_eof(self) -> bool:
        return self._rx_eof and not self._rx

    async def read(self, n: int = 65536) -> bytes:
        while not self._rx and not self._rx_eof:
            self._rx_event.clear()
            await self._rx_event.wait()
        data = bytes(self._rx[:n])
        del self._rx[:n]
        self._grant(len(data))
        return data

    async def readexactly(self, n: int) -> bytes:
        while len(self._rx) < n:
            if self._rx_eof:
                partial = bytes(self._rx)
                self._rx.clear()
                raise asyncio.IncompleteReadError(partial, n)
            self._rx_event.clear()
            await self._rx_event.wait()
        data = bytes(self._rx[:n])
        del self._rx[:n]
        self._grant(len(data))
        return data

    def _grant(self, n: int) -> None:
        self._consumed += n
        if self._consumed >= self._session.window // 4 and not self._rx_eof:
            self._session._send(window_frame(self.id, self._consumed))
            self._consumed = 0

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._tx_closed or self._session.closed:
                raise ConnectionResetError(f"mux channel {self.id} (port {self.port}) is closed")
            if self._credit <= 0:
                self._credit_event.clear()
                await self._credit_event.wait()
                continue
            n = min(len(view), self._credit, MAX_DATA)
            self._credit -= n
            self._session._send(Frame(Kind.DATA, self.id, bytes(view[:n])))
            view = view[n:]
        await self._session._backpressure()

    def close_write(self) -> None:
        if not self._tx_closed and not self._session.closed:
            self._tx_closed = True
            self._session._send(Frame(Kind.CLOSE, self.id))
        self._tx_closed = True

    def close(self) -> None:
        """Done with both directions. Buffered outgoing data is still delivered first."""
        if self._closed:
            return
        self._closed = True
        if not self._session.closed and not self._reset_by_peer:
            if self._rx_eof:
                self.close_write()
            else:
                self._session._send(Frame(Kind.RESET, self.id))
        self._tx_closed = True
        self._rx.clear()
        self._rx_eof = True
        self._rx_event.set()
        self._credit_event.set()
        self._session._forget(self)


class Listener:
    def __init__(self, session: MuxSession, port: int) -> None:
        self._session = session
        self.port = port
        self._queue: asyncio.Queue[Channel | None] = asyncio.Queue()
        self.closed = False

    async def accept(self) -> Channel:
        ch = await self._queue.get()
        if ch is None:
            self._queue.put_nowait(None)
            raise ConnectionAbortedError(f"mux listener on port {self.port} closed")
        return ch

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._session._listeners.pop(self.port, None)
            self._queue.put_nowait(None)


class MuxSession:
    """Drives the mux over a Transport. Call start() (or use ``async with``)."""

    def __init__(self, transport: Transport, role: Role, *, window: int = DEFAULT_WINDOW) -> None:
        self._transport = transport
        self.role = role
        self.window = window
        self._decoder = FrameDecoder()
        self._channels: dict[int, Channel] = {}
        self._listeners: dict[int, Listener] = {}
        self._dials: dict[int, asyncio.Future[Channel]] = {}
        self._next = 1
        self._out: collections.deque[bytes] = collections.deque()
        self._out_bytes = 0
        self._out_event = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = False
        self.close_reason = ""
        self._done = asyncio.Event()
        self.on_close: Callable[[str], None] | None = None

    def start(self) -> MuxSession:
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="mux-read"),
            asyncio.create_task(self._write_loop(), name="mux-write"),
        ]
        return self

    async def __aenter__(self) -> MuxSession:
        return self.start() if not self._tasks else self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def listen(self, port: int) -> Listener:
        if self.closed:
            raise ConnectionAbortedError(f"mux session closed: {self.close_reason}")
        if port in self._listeners:
            raise OSError(errno.EADDRINUSE, f"mux port {port} already has a listener")
        listener = Listener(self, port)
        self._listeners[port] = listener
        return listener

    async def dial(self, port: int, timeout: float | None = None) -> Channel:
        if self.closed:
            raise ConnectionAbortedError(f"mux session closed: {self.close_reason}")
        cid = (self._next << 1) | int(self.role)
        self._next += 1
        fut: asyncio.Future[Channel] = asyncio.get_running_loop().create_future()
        self._dials[cid] = fut
        self._send(open_frame(cid, port, self.window))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._dials.pop(cid, None)

    async def wait_closed(self) -> None:
        await self._done.wait()

    async def aclose(self, reason: str = "closed locally") -> None:
        self._shutdown(reason)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def flush(self) -> None:
        await self._drained.wait()

    # internals
    def _send(self, frame: Frame) -> None:
        if self.closed:
            return
        data = encode_frame(frame)
        self._out.append(data)
        self._out_bytes += len(data)
        self._drained.clear()
        self._out_event.set()

    async def _backpressure(self) -> None:
        # Credit already bounds what one channel queues; this only keeps the total queue from
        # growing without bound when the transport itself is slow.
        while self._out_bytes > 4 * self.window and not self.closed:
            await self._drained.wait()

    def _forget(self, ch: Channel) -> None:
        self._channels.pop(ch.id, None)

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._out:
                    self._drained.set()
                    self._out_event.clear()
                    await self._out_event.wait()
                    continue
                batch = []
                size = 0
                while self._out and size < 256 * 1024:
                    b = self._out.popleft()
                    batch.append(b)
                    size += len(b)
                await self._transport.write(b"".join(batch))
                self._out_bytes -= size
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._shutdown(f"write failed: {e}")

    async def _read_loop(self) -> None:
        reason = "peer closed the transport"
        try:
            while True:
                data = await self._transport.read()
                if not data:
                    break
                for frame in self._decoder.feed(data):
                    self._dispatch(frame)
        except asyncio.CancelledError:
            raise
        except MuxProtocolError as e:
            reason = f"protocol error: {e}"
        except Exception as e:
            reason = f"read failed: {e!r}"
        self._shutdown(reason)

    def _dispatch(self, f: Frame) -> None:
        if f.kind is Kind.OPEN:
            port, window = OPEN_BODY.unpack(f.payload)
            listener = self._listeners.get(port)
            if f.channel in self._channels:
                raise MuxProtocolError(f"OPEN for channel {f.channel} already in use")
            if listener is None:
                self._send(reject_frame(f.channel, f"no listener on port {port}"))
                return
            ch = Channel(self, f.channel, port, window)
            self._channels[f.channel] = ch
            self._send(accept_frame(f.channel, self.window))
            listener._queue.put_nowait(ch)
            return
        if f.kind is Kind.ACCEPT or f.kind is Kind.REJECT:
            fut = self._dials.get(f.channel)
            if fut is None or fut.done():
                if f.kind is Kind.ACCEPT:
                    # The dialer gave up (timeout); tell the listener side.
                    self._send(Frame(Kind.RESET, f.channel))
                return
            if f.kind is Kind.ACCEPT:
                (window,) = U32.unpack(f.payload)
                ch = Channel(self, f.channel, 0, window)
                self._channels[f.channel] = ch
                fut.set_result(ch)
            else:
                fut.set_exception(ConnectionRefusedError(f.payload.decode(errors="replace")))
            return
        ch_or_none = self._channels.get(f.channel)
        if ch_or_none is None:
            # Frames for a channel we already forgot (closed locally) are expected and harmless.
            return
        ch = ch_or_none
        if f.kind is Kind.DATA:
            ch._on_data(f.payload)
        elif f.kind is Kind.WINDOW:
            ch._on_window(U32.unpack(f.payload)[0])
        elif f.kind is Kind.CLOSE:
            ch._on_eof()
        elif f.kind is Kind.RESET:
            ch._on_reset()
            self._forget(ch)

    def _shutdown(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        for ch in list(self._channels.values()):
            ch._on_reset()
        self._channels.clear()
        for fut in self._dials.values():
            if not fut.done():
                fut.set_exception(ConnectionAbortedError(f"mux session closed: {reason}"))
        for listener in list(self._listeners.values()):
            listener.close()
        self._transport.close()
        self._drained.set()
        self._done.set()
        if self.on_close is not None:
            self.on_close(reason)
