"""The half of a service VM conversion that runs in the guest (python3 -S on the tools disk).

It imports only the stdlib and hcsshim.layers (both copied onto the tools disk with the host's
mkfs.ext4 and debugfs), reads the layer tar from a raw read-only disk, unpacks it with the very code
the host converter runs, and writes the ext4 straight onto the raw output disk. One JSON line on
stdout: the counts, or {"error": ...}. The host appends the VHD footer and renames the result."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

# Only modules the agent already loads in the guest up here; the rest after sys.path has the disk.


class _Limited:
    """The first `size` bytes of a disk (the tar; the disk is rounded up to whole sectors)."""

    def __init__(self, f: Any, size: int) -> None:
        self._f = f
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        if n < 0 or n > self._left:
            n = self._left
        data: bytes = self._f.read(n)
        self._left -= len(data)
        return data


def _run(argv: list[str], env: dict[str, str]) -> None:
    import subprocess

    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise OSError(f"{' '.join(argv)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")


def run(args: dict[str, Any]) -> dict[str, Any]:
    tools = str(args["tools"])
    # The tools disk's e2fsprogs, its libraries and the host's mke2fs.conf (the agent's own
    # environment is not the host's, so none of it is inherited).
    env = {
        "PATH": f"{tools}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LD_LIBRARY_PATH": f"{tools}/lib",
        "MKE2FS_CONFIG": f"{tools}/etc/mke2fs.conf",
        "LC_ALL": "C",
    }
    import tarfile
    import tempfile

    from hcsshim.layers import ext4, tar2ext4

    opts = tar2ext4.Options()
    scratch = str(args["scratch_dir"])
    seconds: dict[str, float] = {}
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        seconds[name] = round(now - mark, 3)
        mark = now

    try:
        # tmpfs has no user.* xattrs before Linux 6.6: unpack onto an ext4 scratch disk instead (its
        # readdir order does not matter, mke2fs -d sorts).
        _run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E", "nodiscard", str(args["scratch"])], env)
        os.makedirs(scratch, exist_ok=True)
        _run(["/bin/busybox", "mount", "-t", "ext4", str(args["scratch"]), scratch], env)
        phase("scratch")
        try:
            with (
                open(str(args["tar"]), "rb") as dev,
                tempfile.TemporaryDirectory(prefix="tar2ext4-", dir=scratch) as d,
            ):
                root = os.path.join(d, "root")
                os.mkdir(root, 0o755)
                u = tar2ext4.unpack(_Limited(dev, int(args["tar_size"])), root, opts)  # type: ignore[arg-type]
                phase("unpack")
                size = ext4.estimate_size(root)
                if size > int(args["out_size"]):
                    raise tar2ext4.LayerError(
                        f"the layer needs {size} bytes of ext4, more than the service VM's {args['out_size']}"
                    )
                ext4.make_ext4(root, str(args["out"]), size=size, truncate=False, env=env)
                phase("mkfs")
        finally:
            _run(["/bin/busybox", "umount", scratch], env)
        os.sync()
        phase("cleanup")
    except (tar2ext4.LayerError, tarfile.TarError, ext4.Ext4Error, EOFError, OSError) as e:
        return {"error": str(e) or type(e).__name__}
    counts = {"entries": u.entries, "whiteouts": u.whiteouts, "opaque_dirs": u.opaque}
    return {"size": size, **counts, "seconds": seconds}


def main() -> int:
    args = json.loads(sys.argv[1])
    sys.path.insert(0, os.path.join(str(args["tools"]), "python"))
    result = run(args)
    print(json.dumps(result), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    raise SystemExit(main())
