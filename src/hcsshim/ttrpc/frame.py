"""Sans-IO codec for ttrpc frames, shared by the client and the server.

A frame is a 10-byte big-endian header ``length u32 | stream id u32 | type u8 | flags u8`` followed by
``length`` payload bytes. Payloads are capped at 4 MiB. Because that cap is far below 16 MiB, the first
header byte of every valid frame is zero; the decoder uses that (and the known message types) to tell a
merely oversized frame, which is skipped and reported so the peer can be answered, from garbage, which is
a :class:`ProtocolError` after which the connection cannot be resynchronised. :func:`read_frames` is
the one asyncio piece: the read loop the client and the server share.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

HEADER_LENGTH = 10
MAX_MESSAGE_LENGTH = 4 << 20
# Bytes asked of the socket per read (and the StreamReader limit of both ends).
READ_CHUNK = 256 * 1024
# A length whose top byte is set can only come from a peer that does not speak ttrpc.
_GARBAGE_LENGTH = 1 << 24

_HEADER = struct.Struct(">IIBB")


class MessageType(enum.IntEnum):
    REQUEST = 0x01
    RESPONSE = 0x02
    DATA = 0x03


class Flag(enum.IntFlag):
    REMOTE_CLOSED = 0x01
    REMOTE_OPEN = 0x02
    NO_DATA = 0x04


class ProtocolError(Exception):
    """The byte stream is not ttrpc; the connection must be closed."""


class OversizedMessageError(ValueError):
    """A payload is larger than :data:`MAX_MESSAGE_LENGTH`; nothing was encoded."""

    def __init__(self, length: int, limit: int = MAX_MESSAGE_LENGTH) -> None:
        super().__init__(f"message length {length} exceed maximum message size of {limit}")
        self.length = length
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Frame:
    stream_id: int
    type: int
    flags: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame whose payload exceeded the limit; the decoder discards the payload bytes itself."""

    stream_id: int
    type: int
    flags: int
    length: int


def encode_header(length: int, stream_id: int, msg_type: int, flags: int = 0) -> bytes:
    return _HEADER.pack(length, stream_id, msg_type, flags)


def encode_frame(
    stream_id: int, msg_type: int, payload: bytes, flags: int = 0, *, max_length: int = MAX_MESSAGE_LENGTH
) -> bytes:
    """Header + payload as one buffer, so a single write can never interleave with another frame."""
    if len(payload) > max_length:
        raise OversizedMessageError(len(payload), max_length)
    if not 0 <= stream_id <= 0xFFFFFFFF:
        raise ValueError(f"stream id {stream_id} out of range")
    return _HEADER.pack(len(payload), stream_id, msg_type, flags) + payload


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes as they arrive, get back complete frames.

    After a :class:`ProtocolError` the decoder is poisoned and raises again on every feed.
    """

    def __init__(self, max_length: int = MAX_MESSAGE_LENGTH) -> None:
        self._max = max_length
        self._buf = bytearray()
        self._skip = 0
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame | OversizedFrame]:
        if self._error is not None:
            raise self._error
        self._buf += data
        out: list[Frame | OversizedFrame] = []
        while True:
            if self._skip:
                n = min(self._skip, len(self._buf))
                del self._buf[:n]
                self._skip -= n
                if self._skip:
                    return out
            if len(self._buf) < HEADER_LENGTH:
                return out
            length, stream_id, msg_type, flags = _HEADER.unpack_from(self._buf)
            if length >= _GARBAGE_LENGTH or msg_type not in _KNOWN_TYPES:
                self._error = ProtocolError(
                    f"invalid frame header {bytes(self._buf[:HEADER_LENGTH]).hex()}"
                    f" (length={length} type={msg_type:#x})"
                )
                self._buf.clear()
                raise self._error
            if length > self._max:
                del self._buf[:HEADER_LENGTH]
                self._skip = length
                out.append(OversizedFrame(stream_id, msg_type, flags, length))
                continue
            if len(self._buf) < HEADER_LENGTH + length:
                return out
            payload = bytes(self._buf[HEADER_LENGTH : HEADER_LENGTH + length])
            del self._buf[: HEADER_LENGTH + length]
            out.append(Frame(stream_id, msg_type, flags, payload))


_KNOWN_TYPES = frozenset(int(t) for t in MessageType)


async def read_frames(
    reader: asyncio.StreamReader,
    on_frame: Callable[[Frame | OversizedFrame], None],
    *,
    log: logging.Logger,
    peer: str,
) -> str | None:
    """Decode frames from ``reader`` and hand each to ``on_frame`` until the stream ends.

    Returns None at end of stream, else why reading stopped: a protocol error (logged as a warning
    naming ``peer``, e.g. ``"address=/run/x.sock"``) or a failed read.
    """
    decoder = FrameDecoder()
    try:
        while data := await reader.read(READ_CHUNK):
            for item in decoder.feed(data):
                on_frame(item)
    except ProtocolError as exc:
        reason = f"protocol error: {exc}"
        log.warning("event=connection_closed %s reason=%r", peer, reason)
        return reason
    except (ConnectionError, OSError) as exc:
        return f"read failed: {exc}"
    return None
