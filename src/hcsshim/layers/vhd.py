"""Fixed VHD footers: the 512 bytes that turn a raw disk image into a fixed VHD.

A fixed VHD is the raw disk followed by this footer (Virtual Hard Disk Image Format Specification,
"Hard Disk Footer Format"). All fields are big-endian.

The creator application is ``win `` (as Hyper-V writes it) on purpose: QEMU's ``vpc`` driver sizes a
disk from its CHS geometry unless the creator is one it knows to use the footer's current size, and
CHS geometry cannot express every size (it rounds down, cutting the end off the file system)."""

from __future__ import annotations

import hashlib
import os
import struct
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import BinaryIO

FOOTER_SIZE = 512
COOKIE = b"conectix"
FEATURES_RESERVED = 0x00000002  # the spec says this bit must always be set
FILE_FORMAT_VERSION = 0x00010000
FIXED_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
DISK_TYPE_FIXED = 2
DISK_TYPE_DYNAMIC = 3
DISK_TYPE_DIFFERENCING = 4
CREATOR_APP = b"win "
CREATOR_VERSION = 0x000A0000  # what Hyper-V and upstream tar2ext4 write
CREATOR_HOST_OS = b"Wi2k"
# Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC).
VHD_EPOCH = 946684800
SECTOR = 512
# Largest size the CHS fields can describe: 65535 cylinders * 16 heads * 255 sectors.
MAX_CHS_SECTORS = 65535 * 16 * 255

# cookie, features, version, data offset, timestamp, creator app, creator version, creator host OS,
# original size, current size, geometry (cylinders u16, heads u8, sectors u8), disk type, checksum,
# unique id, saved state; the rest (427 bytes) is reserved and zero.
_LAYOUT = struct.Struct(">8sIIQI4sI4sQQHBBII16sB427x")
assert _LAYOUT.size == FOOTER_SIZE
_CHECKSUM_OFFSET = 64


class VhdError(ValueError):
    """The bytes are not a VHD footer this module understands."""


def chs_geometry(size: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) for `size` bytes, by the algorithm in the spec's appendix."""
    total = min(size // SECTOR, MAX_CHS_SECTORS)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_x_heads = total // spt
    else:
        spt = 17
        cyl_x_heads = total // spt
        heads = max((cyl_x_heads + 1023) // 1024, 4)
        if cyl_x_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_x_heads = total // spt
        if cyl_x_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_x_heads = total // spt
    return cyl_x_heads // heads, heads, spt


def checksum(footer: bytes) -> int:
    """Ones' complement of the byte sum, with the checksum field counted as zero."""
    if len(footer) != FOOTER_SIZE:
        raise VhdError(f"a VHD footer is {FOOTER_SIZE} bytes, got {len(footer)}")
    total = sum(footer) - sum(footer[_CHECKSUM_OFFSET : _CHECKSUM_OFFSET + 4])
    return ~total & 0xFFFFFFFF


@dataclass(frozen=True)
class Footer:
    current_size: int
    original_size: int = -1  # -1: same as current_size
    timestamp: int = 0  # seconds since 2000-01-01 UTC
    unique_id: bytes = field(default_factory=lambda: uuid.uuid4().bytes)
    disk_type: int = DISK_TYPE_FIXED
    geometry: tuple[int, int, int] | None = None  # None: computed from current_size
    creator_app: bytes = CREATOR_APP
    creator_version: int = CREATOR_VERSION
    creator_host_os: bytes = CREATOR_HOST_OS
    features: int = FEATURES_RESERVED
    data_offset: int = FIXED_DATA_OFFSET
    saved_state: int = 0

    def __post_init__(self) -> None:
        if self.current_size < 0 or self.current_size % SECTOR:
            raise VhdError(f"disk size {self.current_size} is not a non-negative multiple of {SECTOR}")
        if len(self.unique_id) != 16:
            raise VhdError("unique id must be 16 bytes")
        if self.original_size == -1:
            object.__setattr__(self, "original_size", self.current_size)
        if self.geometry is None:
            object.__setattr__(self, "geometry", chs_geometry(self.current_size))

    def pack(self) -> bytes:
        cyl, heads, spt = self.geometry or chs_geometry(self.current_size)
        raw = _LAYOUT.pack(
            COOKIE,
            self.features,
            FILE_FORMAT_VERSION,
            self.data_offset,
            self.timestamp & 0xFFFFFFFF,
            self.creator_app,
            self.creator_version,
            self.creator_host_os,
            self.original_size,
            self.current_size,
            cyl,
            heads,
            spt,
            self.disk_type,
            0,
            self.unique_id,
            self.saved_state,
        )
        chk = checksum(raw)
        return raw[:_CHECKSUM_OFFSET] + struct.pack(">I", chk) + raw[_CHECKSUM_OFFSET + 4 :]

    @classmethod
    def unpack(cls, raw: bytes) -> Footer:
        if len(raw) != FOOTER_SIZE:
            raise VhdError(f"a VHD footer is {FOOTER_SIZE} bytes, got {len(raw)}")
        (
            cookie,
            features,
            version,
            data_offset,
            timestamp,
            creator_app,
            creator_version,
            creator_host_os,
            original_size,
            current_size,
            cyl,
            heads,
            spt,
            disk_type,
            chk,
            unique_id,
            saved_state,
        ) = _LAYOUT.unpack(raw)
        if cookie != COOKIE:
            raise VhdError(f"bad VHD cookie {cookie!r}")
        if version != FILE_FORMAT_VERSION:
            raise VhdError(f"unsupported VHD format version {version:#x}")
        if chk != checksum(raw):
            raise VhdError(f"VHD footer checksum {chk:#010x} does not match {checksum(raw):#010x}")
        if current_size % SECTOR:
            raise VhdError(f"VHD size {current_size} is not a multiple of {SECTOR}")
        return cls(
            current_size=current_size,
            original_size=original_size,
            timestamp=timestamp,
            unique_id=unique_id,
            disk_type=disk_type,
            geometry=(cyl, heads, spt),
            creator_app=creator_app,
            creator_version=creator_version,
            creator_host_os=creator_host_os,
            features=features,
            data_offset=data_offset,
            saved_state=saved_state,
        )


def make_fixed_footer(size: int, *, now: float | None = None, unique_id: bytes | None = None) -> bytes:
    """The footer of a fixed VHD whose data part is `size` bytes."""
    stamp = int(time.time() if now is None else now) - VHD_EPOCH
    footer = Footer(current_size=size, timestamp=max(stamp, 0))
    if unique_id is not None:
        footer = replace(footer, unique_id=unique_id)
    return footer.pack()


def content_id(f: BinaryIO, size: int) -> bytes:
    """A unique id derived from the first `size` bytes of `f`: the same disk, the same id."""
    h = hashlib.blake2b(digest_size=16, person=b"hcsshim-vhd-id")
    f.seek(0)
    left = size
    while left > 0:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            break
        h.update(chunk)
        left -= len(chunk)
    return uuid.UUID(bytes=h.digest(), version=5).bytes


def append_footer(f: BinaryIO, *, pad: bool = True, reproducible: bool = False) -> int:
    """Append a fixed VHD footer to `f` (padded to a whole sector first); returns the disk size.

    A reproducible footer has upstream's timestamp (0: the VHD epoch) and a unique id derived from
    the disk's bytes, so the same disk gets the same footer."""
    size = f.seek(0, os.SEEK_END)
    if size % SECTOR:
        if not pad:
            raise VhdError(f"file size {size} is not a multiple of {SECTOR}")
        f.write(b"\0" * (SECTOR - size % SECTOR))
        size += SECTOR - size % SECTOR
    if reproducible:
        footer = make_fixed_footer(size, now=VHD_EPOCH, unique_id=content_id(f, size))
        f.seek(size)
    else:
        footer = make_fixed_footer(size)
    f.write(footer)
    return size


def append_footer_to_path(path: str, *, reproducible: bool = False) -> int:
    with open(path, "r+b") as f:
        return append_footer(f, reproducible=reproducible)


def read_footer(f: BinaryIO) -> Footer:
    """The footer at the end of `f`; raises VhdError when there is none."""
    end = f.seek(0, os.SEEK_END)
    if end < FOOTER_SIZE:
        raise VhdError(f"file of {end} bytes is too small to hold a VHD footer")
    f.seek(end - FOOTER_SIZE)
    footer = Footer.unpack(f.read(FOOTER_SIZE))
    if footer.disk_type == DISK_TYPE_FIXED and footer.current_size != end - FOOTER_SIZE:
        raise VhdError(f"fixed VHD says {footer.current_size} bytes of data, file has {end - FOOTER_SIZE}")
    return footer


def read_footer_from_path(path: str) -> Footer:
    with open(path, "rb") as f:
        return read_footer(f)


def is_fixed_vhd(path: str) -> bool:
    try:
        return read_footer_from_path(path).disk_type == DISK_TYPE_FIXED
    except (OSError, VhdError):
        return False
