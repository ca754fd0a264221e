"""The mux wire format (stdlib only, sans-IO): many byte channels over one byte stream.

Little-endian frames: a 12-byte header ``kind u8, 0 u8, 0 u16, channel u32, length u32`` and
``length`` payload bytes. Kinds:

- OPEN(port u32, window u32): the dialer asks for a listener on ``port`` and grants initial credit.
- ACCEPT(window u32) / REJECT(reason utf-8): the listener's answer, granting its own credit.
- DATA(bytes): at most the credit the peer granted; credit is bytes.
- WINDOW(increment u32): the receiver consumed that many bytes; the sender may send that much more.
- CLOSE: half-close, the sender writes no more (EOF for the peer's reads).
- RESET: the sender is gone entirely; the peer's writes fail and its reads end after buffered data.

What the kinds mean for a channel's state and credit is ``session.MuxSession``'s business.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

FRAME = struct.Struct("<BBHII")
FRAME_SIZE = FRAME.size
U32 = struct.Struct("<I")
OPEN_BODY = struct.Struct("<II")
MAX_DATA = 32 * 1024
MAX_PAYLOAD = MAX_DATA


class Kind(enum.IntEnum):
    OPEN = 1
    ACCEPT = 2
    REJECT = 3
    DATA = 4
    WINDOW = 5
    CLOSE = 6
    RESET = 7


class MuxProtocolError(Exception):
    """The peer sent bytes that are not a mux stream; the session cannot continue."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    channel: int
    payload: bytes = b""


def encode_frame(frame: Frame) -> bytes:
    if len(frame.payload) > MAX_PAYLOAD:
        raise ValueError(f"mux payload of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}")
    return FRAME.pack(frame.kind, 0, 0, frame.channel, len(frame.payload)) + frame.payload


def open_frame(channel: int, port: int, window: int) -> Frame:
    return Frame(Kind.OPEN, channel, OPEN_BODY.pack(port, window))


def accept_frame(channel: int, window: int) -> Frame:
    return Frame(Kind.ACCEPT, channel, U32.pack(window))


def reject_frame(channel: int, reason: str) -> Frame:
    return Frame(Kind.REJECT, channel, reason.encode()[:1024])


def window_frame(channel: int, increment: int) -> Frame:
    return Frame(Kind.WINDOW, channel, U32.pack(increment))


_FIXED_SIZES = {Kind.OPEN: OPEN_BODY.size, Kind.ACCEPT: 4, Kind.WINDOW: 4, Kind.CLOSE: 0, Kind.RESET: 0}


class FrameDecoder:
    """Incremental decoder. Raises MuxProtocolError on anything that is not a valid frame."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        while len(self._buf) >= FRAME_SIZE:
            kind, r1, r2, channel, length = FRAME.unpack_from(self._buf)
            if kind not in Kind._value2member_map_ or r1 or r2:
                raise MuxProtocolError(f"invalid mux frame header kind={kind} reserved={r1},{r2}")
            k = Kind(kind)
            if length > MAX_PAYLOAD:
                raise MuxProtocolError(f"mux frame payload {length} exceeds {MAX_PAYLOAD}")
            fixed = _FIXED_SIZES.get(k)
            if fixed is not None and length != fixed:
                raise MuxProtocolError(f"mux {k.name} frame with payload {length}, want {fixed}")
            if len(self._buf) < FRAME_SIZE + length:
                break
            out.append(Frame(k, channel, bytes(self._buf[FRAME_SIZE : FRAME_SIZE + length])))
            del self._buf[: FRAME_SIZE + length]
        return out
