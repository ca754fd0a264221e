"""tar (an OCI layer) -> ext4 image, optionally with a fixed VHD footer, like upstream's tar2ext4.

The tar is unpacked into a private temporary directory (always removed) with every owner, mode,
timestamp, xattr, symlink, hard link and device node applied as root would, then mkfs.ext4 -d copies
that tree into the image. OCI whiteouts become overlayfs ones: `.wh.<name>` -> a 0:0 character device
`<name>`, `.wh..wh..opq` -> `trusted.overlay.opaque=y` on its directory."""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from hcsshim.layers import vhd
from hcsshim.layers.ext4 import make_ext4

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_XATTR_PAX_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")


class LayerError(ValueError):
    """The tar cannot be represented (unsafe path, link outside the layer, ...)."""


@dataclass(frozen=True)
class Options:
    convert_whiteouts: bool = True
    convert_backslash: bool = False
    append_vhd_footer: bool = False
    inline_data: bool = False
    size: int | None = None  # bytes; default: from the unpacked size
    # The same tar gives the same bytes, wherever and whenever it is converted (ext4.make_ext4,
    # vhd.append_footer).
    reproducible: bool = True


@dataclass(frozen=True)
class Result:
    path: str
    size: int  # ext4 size, without the footer
    entries: int
    whiteouts: int
    opaque_dirs: int


def clean_name(name: str, convert_backslash: bool = False) -> str:
    """The tar member name as a relative path inside the layer; raises LayerError for escapes."""
    if convert_backslash:
        name = name.replace("\\", "/")
    norm = posixpath.normpath("/" + name).lstrip("/")
    if norm in ("", "."):
        return ""
    if any(part == ".." for part in norm.split("/")):
        raise LayerError(f"tar entry {name!r} escapes the layer")
    return norm


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, value in member.pax_headers.items():
        for prefix in _XATTR_PAX_PREFIXES:
            if key.startswith(prefix):
                # tarfile decodes PAX values as UTF-8 with surrogateescape: round-trip the raw bytes.
                out[key[len(prefix) :]] = value.encode("utf-8", "surrogateescape")
    return out


class _Unpacker:
    def __init__(self, root: str, opts: Options) -> None:
        self.root = root
        self.opts = opts
        self.dir_times: dict[str, tuple[int, int]] = {}
        self.entries = 0
        self.whiteouts = 0
        self.opaque = 0

    def _host(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _ensure_parent(self, rel: str) -> None:
        parent = posixpath.dirname(rel)
        if not parent:
            return
        # A parent that is a symlink would let a later entry write outside the tree.
        cur = self.root
        for part in parent.split("/"):
            cur = os.path.join(cur, part)
            if os.path.islink(cur):
                raise LayerError(f"tar entry {rel!r} goes through the symlink {part!r}")
            if not os.path.lexists(cur):
                os.mkdir(cur, 0o755)
                # A parent the tar does not list: the epoch, not today, so the image is reproducible
                # (an entry for it later in the tar sets its own time).
                self.dir_times[cur] = (0, 0)
            elif not os.path.isdir(cur):
                raise LayerError(f"tar entry {rel!r}: {part!r} is not a directory")

    def _remove(self, path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            return  # a directory entry repeated: keep its children
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _apply_meta(self, path: str, member: tarfile.TarInfo, is_dir: bool) -> None:
        os.lchown(path, member.uid, member.gid)
        if not member.issym():
            # After chown, which clears setuid/setgid.
            os.chmod(path, stat.S_IMODE(member.mode))
        for key, value in _xattrs(member).items():
            os.setxattr(path, key, value, follow_symlinks=False)
        mtime = int(member.mtime)
        if is_dir:
            self.dir_times[path] = (mtime, mtime)
        else:
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    def add(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        rel = clean_name(member.name, self.opts.convert_backslash)
        base = posixpath.basename(rel)
        if self.opts.convert_whiteouts and base.startswith(WHITEOUT_PREFIX):
            self._whiteout(rel, base, int(member.mtime))
            return
        self.entries += 1
        if rel == "":
            if member.isdir():
                self._apply_meta(self.root, member, True)
            return
        self._ensure_parent(rel)
        path = self._host(rel)
        if member.isdir():
            if os.path.lexists(path) and not os.path.isdir(path):
                os.unlink(path)
            if not os.path.lexists(path):
                os.mkdir(path, 0o755)
            self._apply_meta(path, member, True)
            return
        self._remove(path)
        if member.isreg():
            src = tf.extractfile(member)
            if src is None:
                raise LayerError(f"tar entry {rel!r} has no data")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(1024 * 1024):
                    out.write(chunk)
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            target = self._host(clean_name(member.linkname, self.opts.convert_backslash))
            if not os.path.lexists(target) or os.path.isdir(target):
                raise LayerError(f"hard link {rel!r} -> {member.linkname!r}: no such file in the layer")
            os.link(target, path, follow_symlinks=False)
            return  # the link shares the target's inode and metadata
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        elif member.isfifo():
            os.mkfifo(path, 0o600)
        else:
            raise LayerError(f"tar entry {rel!r} has unsupported type {member.type!r}")
        self._apply_meta(path, member, False)

    def _whiteout(self, rel: str, base: str, mtime: int) -> None:
        parent = posixpath.dirname(rel)
        self._ensure_parent(rel)
        if base == OPAQUE_WHITEOUT:
            os.setxattr(self._host(parent), OPAQUE_XATTR, b"y")
            self.opaque += 1
            return
        name = base[len(WHITEOUT_PREFIX) :]
        if not name or name in (".", ".."):
            raise LayerError(f"bad whiteout {rel!r}")
        target = self._host(posixpath.join(parent, name))
        self._remove(target)
        if os.path.isdir(target) and not os.path.islink(target):
            raise LayerError(f"whiteout {rel!r} for a directory the same layer creates")
        os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        os.utime(target, (mtime, mtime), follow_symlinks=False)
        self.whiteouts += 1

    def finish(self) -> None:
        # Directory times last: creating children changed them.
        for path, times in sorted(self.dir_times.items(), key=lambda kv: -len(kv[0])):
            os.utime(path, times, follow_symlinks=False)


def unpack(tar: IO[bytes] | str, root: str, opts: Options = Options()) -> _Unpacker:
    """Unpack a tar (path or stream; compression detected) into root with OCI whiteout conversion."""
    u = _Unpacker(root, opts)
    # Stream mode: one pass, no seeking, so stdin and pipes work.
    name, fileobj = (tar, None) if isinstance(tar, str) else (None, cast(Any, tar))
    with tarfile.open(name=name, fileobj=fileobj, mode="r|*") as tf:
        for member in tf:
            u.add(tf, member)
    u.finish()
    return u


@contextlib.contextmanager
def _private_dir(parent: str | None) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="tar2ext4-", dir=parent) as d:
        root = os.path.join(d, "root")
        os.mkdir(root, 0o755)
        yield root


def convert(
    tar: IO[bytes] | str,
    out_path: str,
    opts: Options = Options(),
    *,
    tmp_dir: str | None = None,
) -> Result:
    """Write the ext4 (+ VHD footer with opts.append_vhd_footer) of `tar` to out_path.

    The output is written to a temporary name beside out_path and renamed into place, so a reader
    never sees a partial image and a failure leaves nothing behind."""
    partial = partial_path(out_path)
    try:
        with _private_dir(tmp_dir) as root:
            u = unpack(tar, root, opts)
            size = make_ext4(
                root, partial, size=opts.size, inline=opts.inline_data, reproducible=opts.reproducible
            )
        seal(partial, out_path, opts)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return Result(out_path, size, u.entries, u.whiteouts, u.opaque)


def partial_path(out_path: str) -> str:
    """A new empty file beside out_path for the image being written (renamed by seal)."""
    out_dir = os.path.dirname(os.path.abspath(out_path))
    fd, partial = tempfile.mkstemp(prefix=".tar2ext4-", suffix=".part", dir=out_dir)
    os.close(fd)
    return partial


def seal(partial: str, out_path: str, opts: Options) -> None:
    """The last step of every conversion, wherever the ext4 was made: the footer (with
    opts.append_vhd_footer), the mode, and the rename into place."""
    if opts.append_vhd_footer:
        vhd.append_footer_to_path(partial, reproducible=opts.reproducible)
    os.chmod(partial, 0o644)
    os.replace(partial, out_path)
