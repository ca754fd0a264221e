"""ext4 images of a directory tree with mkfs.ext4 -d (e2fsprogs >= 1.43 copies owners, modes,
xattrs, symlinks, device nodes and hard links from the tree).

A reproducible image (the default) depends only on the tree's names, contents and metadata, not on
when or on which file system the tree was made, so a layer converted on the host and one converted
in a service VM (the same e2fsprogs, the same flags) are the same bytes: no UUID, a fixed directory
hash seed, e2fsprogs' clock faked (E2FSPROGS_FAKE_TIME), and each inode's ctime and atime, which
mke2fs -d copies from the source tree, set to its mtime afterwards. mke2fs -d walks each directory sorted by
name (scandir + alphasort), so inode numbers follow that order whatever the source's readdir order."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator, Mapping

from hcsshim import settings

BLOCK = 4096
MiB = 1024 * 1024
FAKE_TIME = "1"
# Any fixed value; random by default, and it decides the order of large (htree) directories.
HASH_SEED = "6c617965-7273-2d68-6173-682d73656564"
FIRST_INODE = 12  # 11 is mke2fs's lost+found
LOST_FOUND_INODE = 11


class Ext4Error(RuntimeError):
    pass


def estimate_size(src_dir: str) -> int:
    """Bytes for an ext4 holding src_dir: data blocks, an inode (256 B) and a directory entry per
    entry, 10 % slack and a fixed 16 MiB for group descriptors, bitmaps and the inode tables."""
    used = 0
    count = 0
    for dirpath, dirnames, filenames in os.walk(src_dir):
        for n in dirnames + filenames:
            count += 1
            st = os.lstat(os.path.join(dirpath, n))
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                used += (st.st_size + BLOCK - 1) // BLOCK * BLOCK
            elif stat.S_ISDIR(st.st_mode):
                used += BLOCK
    size = used + count * 512 + used // 10 + 16 * MiB
    return (size + MiB - 1) // MiB * MiB


def mkfs_argv(
    src_dir: str, dst: str, size: int, *, label: str = "", inline: bool = False, reproducible: bool = True
) -> list[str]:
    """The mkfs.ext4 command writing an image of src_dir to dst (a file or a block device)."""
    features = "^has_journal" + (",inline_data" if inline else "")
    argv = ["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-I", "256", "-m", "0", "-O", features, "-d", src_dir]
    extended = "root_owner=0:0,lazy_itable_init=0,nodiscard"
    if reproducible:
        extended += f",hash_seed={HASH_SEED}"
    argv += ["-E", extended]
    if label:
        argv += ["-L", label]
    if reproducible:
        argv += ["-U", "clear"]
    return [*argv, dst, f"{size // 1024}k"]


def tool_environ(reproducible: bool = True, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(settings.inherited_environ() if base is None else base)
    if reproducible:
        env["E2FSPROGS_FAKE_TIME"] = FAKE_TIME
        env["LC_ALL"] = "C"  # mke2fs -d sorts names with strcoll: bytewise, as inode_times does
    return env


def inode_times(src_dir: str) -> Iterator[tuple[int, int]]:
    """(inode number, mtime) of every inode mke2fs -d makes for src_dir, in the order it makes them:
    each directory's entries sorted by name (bytes), a directory's own inode before its children, a
    hard link's second name sharing the first one's inode, the root's lost+found being inode 11."""
    seen: set[tuple[int, int]] = set()
    counter = [FIRST_INODE]

    def walk(path: bytes, is_root: bool) -> Iterator[tuple[int, int]]:
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            st = os.lstat(full)
            if not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode) and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            kind = stat.S_IFMT(st.st_mode)
            if kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK) and kind not in _SPECIAL:
                continue  # mke2fs ignores it
            if is_root and name == b"lost+found" and stat.S_ISDIR(st.st_mode):
                ino = LOST_FOUND_INODE
            else:
                ino = counter[0]
                counter[0] += 1
            yield ino, int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                yield from walk(full, False)

    yield from walk(os.fsencode(src_dir), True)


_SPECIAL = (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)


def finish_commands(src_dir: str, *, reproducible: bool = True) -> list[str]:
    """debugfs commands run on the new image: drop mke2fs's lost+found when the tree has none, and
    (reproducible) set each inode's ctime and atime to its mtime."""
    cmds: list[str] = []
    if reproducible:
        for ino, mtime in inode_times(src_dir):
            # atime too: reading the tree (mke2fs itself) moves a directory's atime under relatime.
            cmds += [f"sif <{ino}> ctime {mtime}", f"sif <{ino}> atime {mtime}"]
    if not os.path.lexists(os.path.join(src_dir, "lost+found")):
        # mkfs always makes one; in an overlay lower layer it would show up in every container.
        cmds.append("rmdir lost+found")
    return cmds


def make_ext4(
    src_dir: str,
    dst: str,
    *,
    label: str = "",
    size: int | None = None,
    inline: bool = False,
    reproducible: bool = True,
    truncate: bool = True,
    env: Mapping[str, str] | None = None,
) -> int:
    """Write an ext4 image of src_dir to dst (a file created or truncated to the size, or with
    ``truncate=False`` an existing file or block device at least that large); returns its size.

    No journal: these images are read-only layers or a read-only root, and a journal costs 4+ MiB."""
    if size is None:
        size = estimate_size(src_dir)
    if truncate:
        with open(dst, "wb") as f:
            f.truncate(size)
    argv = mkfs_argv(src_dir, dst, size, label=label, inline=inline, reproducible=reproducible)
    tool_env = tool_environ(reproducible, env)
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, env=tool_env)
    except FileNotFoundError as e:
        raise Ext4Error("mkfs.ext4 not found: install e2fsprogs (>= 1.43)") from e
    except subprocess.CalledProcessError as e:
        raise Ext4Error(f"mkfs.ext4 failed ({e.returncode}): {(e.stderr or e.stdout).strip()}") from e
    cmds = finish_commands(src_dir, reproducible=reproducible)
    if cmds:
        _debugfs(dst, cmds, tool_env)
    return size


def _debugfs(dst: str, cmds: list[str], env: dict[str, str]) -> None:
    argv = ["debugfs", "-w", "-f", "-", dst]
    try:
        proc = subprocess.run(
            argv, input="\n".join(cmds) + "\n", check=True, capture_output=True, text=True, env=env
        )
    except FileNotFoundError as e:
        raise Ext4Error(f"{argv[0]} not found: install e2fsprogs") from e
    except subprocess.CalledProcessError as e:
        raise Ext4Error(f"debugfs on {dst} failed ({e.returncode}): {(e.stderr or e.stdout).strip()}") from e
    # debugfs reports command errors on stderr but exits 0.
    err = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("debugfs "))
    if err.strip():
        raise Ext4Error(f"debugfs on {dst}: {err.strip()}")
