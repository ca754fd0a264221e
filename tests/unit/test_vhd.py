"""Fixed VHD footer: byte layout, checksum, CHS geometry, round trips and garbage."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcsshim.layers import vhd


def _independent_checksum(raw: bytes) -> int:
    zeroed = raw[:64] + b"\0\0\0\0" + raw[68:]
    return (~sum(zeroed)) & 0xFFFFFFFF


def test_footer_layout_is_byte_exact() -> None:
    uid = bytes(range(16))
    raw = vhd.Footer(current_size=64 * 1024 * 1024, timestamp=0x01020304, unique_id=uid).pack()
    assert len(raw) == 512
    assert raw[0:8] == b"conectix"
    assert struct.unpack(">I", raw[8:12])[0] == 2  # features: reserved bit
    assert struct.unpack(">I", raw[12:16])[0] == 0x00010000
    assert raw[16:24] == b"\xff" * 8  # fixed disks have no data offset
    assert struct.unpack(">I", raw[24:28])[0] == 0x01020304
    assert raw[28:32] == b"win "
    assert raw[36:40] == b"Wi2k"
    assert struct.unpack(">QQ", raw[40:56]) == (64 * 1024 * 1024, 64 * 1024 * 1024)
    cyl, heads, spt = struct.unpack(">HBB", raw[56:60])
    assert (cyl, heads, spt) == vhd.chs_geometry(64 * 1024 * 1024)
    assert struct.unpack(">I", raw[60:64])[0] == 2  # disk type fixed
    assert struct.unpack(">I", raw[64:68])[0] == _independent_checksum(raw)
    assert raw[68:84] == uid
    assert raw[84] == 0
    assert raw[85:] == b"\0" * 427


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        # Values from the spec's algorithm, computed by hand.
        (64 * 1024 * 1024, (963, 8, 17)),  # 131072 sectors / 17 = 7710 -> 8 heads
        (1024 * 1024 * 1024, (2080, 16, 63)),
        (127 * 1024 * 1024 * 1024, (65278, 16, 255)),
        (65535 * 16 * 255 * 512 * 2, (65535, 16, 255)),  # capped at the largest geometry
        (512, (0, 4, 17)),
    ],
)
def test_chs_geometry(size: int, expected: tuple[int, int, int]) -> None:
    assert vhd.chs_geometry(size) == expected


def test_chs_geometry_never_exceeds_size() -> None:
    for size in (10 * 1024 * 1024, 300 * 1024 * 1024, 5 * 1024**3, 40 * 1024**3):
        c, h, s = vhd.chs_geometry(size)
        assert c * h * s * 512 <= size
        assert c <= 65535 and h <= 16 and s <= 255


@settings(max_examples=200, deadline=None)
@given(
    sectors=st.integers(min_value=0, max_value=(1 << 40)),
    stamp=st.integers(min_value=0, max_value=0xFFFFFFFF),
    uid=st.binary(min_size=16, max_size=16),
)
def test_round_trip(sectors: int, stamp: int, uid: bytes) -> None:
    footer = vhd.Footer(current_size=sectors * 512, timestamp=stamp, unique_id=uid)
    raw = footer.pack()
    back = vhd.Footer.unpack(raw)
    assert back == footer
    assert back.pack() == raw
    assert vhd.checksum(raw) == _independent_checksum(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=512, max_size=512))
def test_garbage_is_rejected_cleanly(raw: bytes) -> None:
    try:
        footer = vhd.Footer.unpack(raw)
    except vhd.VhdError:
        return
    # Only a real footer (right cookie and checksum) may parse.
    assert raw[:8] == b"conectix"
    assert footer.pack()[:64] == raw[:64]


@settings(max_examples=100, deadline=None)
@given(pos=st.integers(min_value=0, max_value=511), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_detected(pos: int, bit: int) -> None:
    raw = bytearray(vhd.make_fixed_footer(1 << 20, now=vhd.VHD_EPOCH + 5, unique_id=b"\1" * 16))
    raw[pos] ^= 1 << bit
    with pytest.raises(vhd.VhdError):
        vhd.Footer.unpack(bytes(raw))


@pytest.mark.parametrize("length", [0, 1, 511, 513])
def test_wrong_length(length: int) -> None:
    with pytest.raises(vhd.VhdError):
        vhd.Footer.unpack(b"\0" * length)


def test_append_and_read_back_on_a_file() -> None:
    f = io.BytesIO(b"x" * 1000)
    size = vhd.append_footer(f)
    assert size == 1024  # padded to a whole sector
    data = f.getvalue()
    assert len(data) == 1024 + 512
    footer = vhd.read_footer(io.BytesIO(data))
    assert footer.current_size == 1024
    assert footer.disk_type == vhd.DISK_TYPE_FIXED
    with pytest.raises(vhd.VhdError):
        vhd.append_footer(io.BytesIO(b"x" * 1000), pad=False)


def test_read_footer_rejects_size_mismatch_and_tiny_files() -> None:
    data = b"\0" * 2048 + vhd.make_fixed_footer(1024)
    with pytest.raises(vhd.VhdError, match="fixed VHD says"):
        vhd.read_footer(io.BytesIO(data))
    with pytest.raises(vhd.VhdError, match="too small"):
        vhd.read_footer(io.BytesIO(b"abc"))


def test_is_fixed_vhd(tmp_path: pytest.TempPathFactory) -> None:
    p = tmp_path / "d.vhd"  # type: ignore[operator]
    p.write_bytes(b"\0" * 4096)
    assert not vhd.is_fixed_vhd(str(p))
    assert vhd.append_footer_to_path(str(p)) == 4096
    assert vhd.is_fixed_vhd(str(p))
    assert not vhd.is_fixed_vhd(str(tmp_path / "missing"))  # type: ignore[operator]


def test_invalid_footer_arguments() -> None:
    with pytest.raises(vhd.VhdError):
        vhd.Footer(current_size=513)
    with pytest.raises(vhd.VhdError):
        vhd.Footer(current_size=512, unique_id=b"short")
