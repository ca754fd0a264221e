"""A newc ("070701") cpio writer for initramfs images.

Written here rather than shelling out to cpio so every entry is owned by root and the archive is
byte-for-byte reproducible (fixed mtimes, sorted entries) without fakeroot."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

_TRAILER = "TRAILER!!!"


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


class CpioWriter:
    def __init__(self, out: BinaryIO, mtime: int = 0) -> None:
        self._out = out
        self._ino = 1
        self._mtime = mtime

    def _header(self, name: str, mode: int, size: int, *, ino: int, nlink: int = 1, rdev: int = 0) -> None:
        encoded = name.encode() + b"\0"
        fields = [
            ino,
            mode,
            0,  # uid
            0,  # gid
            nlink,
            self._mtime,
            size,
            0,  # dev major
            0,  # dev minor
            os.major(rdev),
            os.minor(rdev),
            len(encoded),
            0,  # checksum (newc has none)
        ]
        hdr = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        self._out.write(hdr + encoded + _pad4(len(hdr) + len(encoded)))

    def _next_ino(self) -> int:
        self._ino += 1
        return self._ino

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._header(name, stat.S_IFDIR | perm, 0, ino=self._next_ino(), nlink=2)

    def add_symlink(self, name: str, target: str) -> None:
        data = target.encode()
        self._header(name, stat.S_IFLNK | 0o777, len(data), ino=self._next_ino())
        self._out.write(data + _pad4(len(data)))

    def add_device(self, name: str, kind: int, major: int, minor: int, perm: int = 0o600) -> None:
        self._header(name, kind | perm, 0, ino=self._next_ino(), rdev=os.makedev(major, minor))

    def add_bytes(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._header(name, stat.S_IFREG | perm, len(data), ino=self._next_ino())
        self._out.write(data + _pad4(len(data)))

    def add_file(self, name: str, path: str, st: os.stat_result) -> None:
        # Hard links become separate copies: the image has none worth the bookkeeping.
        with open(path, "rb") as f:
            self.add_bytes(name, f.read(), stat.S_IMODE(st.st_mode))

    def add_tree(self, root: str) -> None:
        """Every entry under `root` (sorted, parents first) as if `root` were `/`."""
        for rel, full, st in walk_sorted(root):
            if stat.S_ISDIR(st.st_mode):
                self.add_dir(rel, stat.S_IMODE(st.st_mode))
            elif stat.S_ISLNK(st.st_mode):
                self.add_symlink(rel, os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                self.add_file(rel, full, st)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                self.add_device(
                    rel,
                    stat.S_IFMT(st.st_mode),
                    os.major(st.st_rdev),
                    os.minor(st.st_rdev),
                    stat.S_IMODE(st.st_mode),
                )

    def finish(self) -> None:
        self._header(_TRAILER, 0, 0, ino=0)
        # The kernel reads initramfs archives in 512-byte blocks; pad like cpio(1) does.
        pos = self._out.tell()
        self._out.write(b"\0" * (-pos % 512))


def walk_sorted(root: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(archive name, host path, lstat) for everything under root, parents before children."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        full_dir = os.path.join(root, rel_dir) if rel_dir else root
        names = sorted(os.listdir(full_dir), reverse=True)
        for name in reversed(names):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            full = os.path.join(full_dir, name)
            st = os.lstat(full)
            yield rel, full, st
        # Directories are pushed so that they are visited in sorted order after their siblings.
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if os.path.isdir(os.path.join(full_dir, name)) and not os.path.islink(
                os.path.join(full_dir, name)
            ):
                stack.append(rel)


def write_tree(root: str, out: BinaryIO, extra_devices: bool = True) -> None:
    """An initramfs of `root`; with extra_devices, /dev/console and /dev/null exist before devtmpfs."""
    w = CpioWriter(out)
    w.add_tree(root)
    if extra_devices:
        if not os.path.isdir(os.path.join(root, "dev")):
            w.add_dir("dev")
        if not os.path.exists(os.path.join(root, "dev", "console")):
            w.add_device("dev/console", stat.S_IFCHR, 5, 1, 0o600)
        if not os.path.exists(os.path.join(root, "dev", "null")):
            w.add_device("dev/null", stat.S_IFCHR, 1, 3, 0o666)
    w.finish()
