"""Bridge codec: upstream codes and names, round trips, and garbage input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hcsshim.gcs import protocol as p
from hcsshim.hvsock.abi import BRIDGE_PORT

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def test_rpc_codes_match_upstream() -> None:
    assert int(p.Rpc.CREATE) == 0x00100101
    assert int(p.Rpc.NEGOTIATE_PROTOCOL) == 0x00100B01
    assert int(p.Rpc.DELETE_CONTAINER_STATE) == 0x00100D01
    assert int(p.Rpc.UPDATE_CONTAINER) == 0x00100E01
    assert int(p.Rpc.LIFECYCLE_NOTIFICATION) == 0x00100F01
    assert int(p.Rpc.MODIFY_SERVICE_SETTINGS) == 0x00200101
    assert p.request_type(p.Rpc.CREATE) == 0x10100101
    assert p.response_type(p.request_type(p.Rpc.DUMP_STACKS)) == 0x20100C01
    assert p.NOTIFY_CONTAINER == 0x30100101
    assert p.type_name(0x10100A01) == "Request(ModifySettings)"
    assert p.type_name(p.NOTIFY_CONTAINER) == "Notify(Container)"
    assert p.HEADER_SIZE == 16 and p.MAX_MESSAGE_SIZE == 0x10000 and BRIDGE_PORT == 0x40000000
    assert p.Hresult.VMCOMPUTE_INVALID_JSON & 0xFFFFFFFF == 0xC037010D
    assert p.Hresult.VMCOMPUTE_UNKNOWN_MESSAGE & 0xFFFFFFFF == 0xC037010B


def test_header_layout_is_little_endian_type_size_id() -> None:
    frame = p.encode(p.request_type(p.Rpc.START), 0x0102030405060708, {"ContainerId": "c"})
    typ, size, msg_id = struct.unpack("<IIQ", frame[:16])
    assert (typ, size, msg_id) == (0x10100201, len(frame), 0x0102030405060708)
    assert frame[16:] == b'{"ContainerId":"c"}'


def test_error_response_has_upstream_fields() -> None:
    body = p.error_response(p.GcsError("boom", p.Hresult.ERROR_NOT_FOUND), "act")
    assert body["Result"] == p.Hresult.ERROR_NOT_FOUND
    assert body["ErrorMessage"] == "boom" and body["ActivityId"] == "act"
    assert body["ErrorRecords"][0]["Result"] == p.Hresult.ERROR_NOT_FOUND
    assert p.error_response(ValueError("x"))["Result"] == p.Hresult.E_FAIL


def test_oversized_message_is_refused_when_encoding() -> None:
    with pytest.raises(p.GcsError):
        p.encode(p.request_type(p.Rpc.CREATE), 1, {"x": "a" * p.MAX_MESSAGE_SIZE})


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**64 - 1),
            st.dictionaries(st.text(max_size=10), json_values, max_size=5),
        ),
        max_size=8,
    ),
    st.integers(1, 64),
)
def test_round_trip_in_arbitrary_chunks(msgs: list[tuple[int, int, dict[str, object]]], chunk: int) -> None:
    stream = b"".join(p.encode(t, i, body) for t, i, body in msgs)
    dec = p.Decoder()
    out: list[p.Message] = []
    for off in range(0, len(stream), chunk):
        out += dec.feed(stream[off : off + chunk])
    assert [(m.type, m.id, m.json()) for m in out] == msgs
    assert dec.pending == 0


@given(st.binary(max_size=300))
def test_garbage_yields_messages_or_clean_protocol_errors(data: bytes) -> None:
    dec = p.Decoder()
    try:
        msgs = dec.feed(data)
    except p.ProtocolError as e:
        assert "size" in str(e)
        with pytest.raises(p.ProtocolError):
            dec.feed(b"more")
        return
    for m in msgs:
        try:
            body = m.json()
        except p.GcsError as e:
            assert e.result == p.Hresult.VMCOMPUTE_INVALID_JSON
        else:
            assert isinstance(body, dict)


@given(st.binary(max_size=200))
def test_garbage_bodies_are_invalid_json_errors(body: bytes) -> None:
    frame = p.encode(p.request_type(p.Rpc.CREATE), 5, body)
    (msg,) = p.Decoder().feed(frame)
    try:
        assert isinstance(msg.json(), dict)
    except p.GcsError as e:
        assert e.result == p.Hresult.VMCOMPUTE_INVALID_JSON


def test_bad_size_error_carries_header_for_the_reply() -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.Decoder().feed(p.HEADER.pack(0x10100C01, 0xFFFFFF, 77))
    assert (info.value.msg_type, info.value.msg_id) == (0x10100C01, 77)


def test_any_in_string() -> None:
    assert p.parse_any_in_string(p.any_in_string({"a": 1}), "x") == {"a": 1}
    assert p.parse_any_in_string("", "x") is None
    with pytest.raises(p.GcsError):
        p.parse_any_in_string("{", "x")
