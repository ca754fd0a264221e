"""ext4 images of a directory tree with mkfs.ext4 -d (e2fsprogs >= 1.43 copies owners, modes,
xattrs, symlinks, device nodes and hard links from the tree)."""

from __future__ import annotations

import os
import stat
import subprocess

from hcsshim import settings

BLOCK = 4096
MiB = 1024 * 1024


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


def make_ext4(
    src_dir: str,
    dst: str,
    *,
    label: str = "",
    size: int | None = None,
    inline: bool = False,
    reproducible: bool = True,
) -> int:
    """Write an ext4 image of src_dir to dst (created or truncated); returns its size in bytes.

    No journal: these images are read-only layers or a read-only root, and a journal costs 4+ MiB."""
    if size is None:
        size = estimate_size(src_dir)
    features = "^has_journal" + (",inline_data" if inline else "")
    with open(dst, "wb") as f:
        f.truncate(size)
    argv = ["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-I", "256", "-m", "0", "-O", features, "-d", src_dir]
    argv += ["-E", "root_owner=0:0,lazy_itable_init=0,nodiscard"]
    if label:
        argv += ["-L", label]
    if reproducible:
        argv += ["-U", "clear"]
    env = settings.inherited_environ()
    if reproducible:
        env["E2FSPROGS_FAKE_TIME"] = "1"
    try:
        subprocess.run([*argv, dst, f"{size // 1024}k"], check=True, capture_output=True, text=True, env=env)
    except FileNotFoundError as e:
        raise Ext4Error("mkfs.ext4 not found: install e2fsprogs (>= 1.43)") from e
    except subprocess.CalledProcessError as e:
        raise Ext4Error(f"mkfs.ext4 failed ({e.returncode}): {(e.stderr or e.stdout).strip()}") from e
    if not os.path.lexists(os.path.join(src_dir, "lost+found")):
        # mkfs always makes one; in an overlay lower layer it would show up in every container.
        _run(["debugfs", "-w", "-R", "rmdir lost+found", dst])
    return size


def _run(argv: list[str]) -> None:
    try:
        proc = subprocess.run(argv, check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise Ext4Error(f"{argv[0]} not found: install e2fsprogs") from e
    except subprocess.CalledProcessError as e:
        raise Ext4Error(f"{' '.join(argv)} failed ({e.returncode}): {(e.stderr or e.stdout).strip()}") from e
    # debugfs reports command errors on stderr but exits 0.
    err = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("debugfs "))
    if err.strip():
        raise Ext4Error(f"{' '.join(argv)}: {err.strip()}")
