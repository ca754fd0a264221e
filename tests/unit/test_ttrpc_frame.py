"""The sans-IO ttrpc frame codec and the Request/Response envelopes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hcsshim.api.google.rpc import status_pb2
from hcsshim.api.ttrpc import request_pb2
from hcsshim.ttrpc import frame
from hcsshim.ttrpc.frame import (
    HEADER_LENGTH,
    MAX_MESSAGE_LENGTH,
    Frame,
    FrameDecoder,
    MessageType,
    OversizedFrame,
    OversizedMessageError,
    ProtocolError,
    encode_frame,
)

stream_ids = st.integers(0, 2**32 - 1)
types = st.sampled_from([int(t) for t in MessageType])
flags = st.integers(0, 255)
frames = st.builds(Frame, stream_ids, types, flags, st.binary(max_size=600))


def _decode_all(data: bytes, chunk: int) -> list[Frame | OversizedFrame]:
    dec = FrameDecoder()
    out: list[Frame | OversizedFrame] = []
    for off in range(0, len(data), chunk):
        out += dec.feed(data[off : off + chunk])
    assert dec.buffered == 0
    return out


@given(st.lists(frames, max_size=8), st.integers(1, 64))
def test_frames_round_trip_in_any_chunking(items: list[Frame], chunk: int) -> None:
    data = b"".join(encode_frame(f.stream_id, f.type, f.payload, f.flags) for f in items)
    assert _decode_all(data, chunk) == items


def test_header_layout_matches_reference_example() -> None:
    raw = encode_frame(1, MessageType.REQUEST, b"\x0a\x00")
    assert raw[:HEADER_LENGTH] == bytes.fromhex("00000002 00000001 01 00".replace(" ", ""))
    assert raw[HEADER_LENGTH:] == b"\x0a\x00"


metadata = st.lists(
    st.builds(request_pb2.KeyValue, key=st.text(max_size=20), value=st.text(max_size=20)), max_size=4
)
requests = st.builds(
    request_pb2.Request,
    service=st.text(max_size=40),
    method=st.text(max_size=20),
    payload=st.binary(max_size=200),
    timeout_nano=st.integers(0, 2**63 - 1),
    metadata=metadata,
)
responses = st.builds(
    request_pb2.Response,
    status=st.builds(status_pb2.Status, code=st.integers(0, 16), message=st.text(max_size=40)),
    payload=st.binary(max_size=200),
)


@given(requests, stream_ids, st.integers(1, 50))
def test_request_envelope_round_trip(req: request_pb2.Request, stream_id: int, chunk: int) -> None:
    raw = encode_frame(stream_id, MessageType.REQUEST, req.SerializeToString())
    (got,) = _decode_all(raw, chunk)
    assert isinstance(got, Frame)
    assert (got.stream_id, got.type, got.flags) == (stream_id, MessageType.REQUEST, 0)
    back = request_pb2.Request()
    back.ParseFromString(got.payload)
    assert back == req


@given(responses, stream_ids)
def test_response_envelope_round_trip(resp: request_pb2.Response, stream_id: int) -> None:
    raw = encode_frame(stream_id, MessageType.RESPONSE, resp.SerializeToString())
    (got,) = FrameDecoder().feed(raw)
    assert isinstance(got, Frame)
    back = request_pb2.Response()
    back.ParseFromString(got.payload)
    assert back == resp


@given(st.binary(max_size=2000), st.integers(1, 64))
def test_garbage_input_yields_frames_or_a_protocol_error_only(data: bytes, chunk: int) -> None:
    dec = FrameDecoder()
    try:
        for off in range(0, len(data), chunk):
            for item in dec.feed(data[off : off + chunk]):
                assert isinstance(item, Frame | OversizedFrame)
                assert item.type in (1, 2, 3)
    except ProtocolError:
        # Poisoned: it keeps refusing rather than resynchronising on arbitrary bytes.
        with pytest.raises(ProtocolError):
            dec.feed(b"\x00" * HEADER_LENGTH)


def test_non_ttrpc_bytes_are_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="invalid frame header"):
        FrameDecoder().feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack(">IIBB", 4, 1, 9, 0) + b"abcd")


def test_encode_refuses_oversized_payload() -> None:
    with pytest.raises(OversizedMessageError, match="exceed maximum message size of 4194304"):
        encode_frame(1, MessageType.REQUEST, b"x" * (MAX_MESSAGE_LENGTH + 1))
    assert len(encode_frame(1, MessageType.REQUEST, b"x" * MAX_MESSAGE_LENGTH)) == MAX_MESSAGE_LENGTH + 10


def test_oversized_frame_is_reported_and_skipped() -> None:
    big = MAX_MESSAGE_LENGTH + 5
    data = frame.encode_header(big, 7, MessageType.REQUEST) + b"z" * big
    data += encode_frame(9, MessageType.REQUEST, b"ok")
    out = _decode_all(data, 1 << 16)
    assert out == [OversizedFrame(7, MessageType.REQUEST, 0, big), Frame(9, MessageType.REQUEST, 0, b"ok")]
