"""The lcow snapshotter daemon for e2e tests and benchmarks: started on a private socket and root,
plus the containerd ``proxy_plugins`` snippet that names it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.shim_checks import mounts_under, wait_until

NAME = "lcow"
DIFFER = "lcow-diff"  # the differ's proxy plugin (containerd 1.7.4+/2.x), on the daemon's socket


@dataclass
class LcowSnapshotter:
    root: Path
    address: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def containerd_link(self) -> Path:
        """Where the daemon dials containerd (``--containerd-address``): a symlink made by
        :meth:`link_containerd` once containerd's random socket path is known."""
        return self.root.parent / "containerd.sock"

    def link_containerd(self, grpc_address: str) -> None:
        self.containerd_link.unlink(missing_ok=True)
        self.containerd_link.symlink_to(grpc_address)

    def proxy_config(self, *, differ: bool = False) -> str:
        """The proxy_plugins table; with ``differ`` (containerd 2.x config version 3) also the differ
        plugin, first in the diff service's order (client-side and CRI on-demand unpack) and the
        transfer service's differ for unpacks into lcow (``ctr images import``, CRI pull)."""
        text = f"\n[proxy_plugins]\n  [proxy_plugins.{NAME}]\n"
        text += f'    type = "snapshot"\n    address = "{self.address}"\n'
        if not differ:
            return text
        text += f'  [proxy_plugins.{DIFFER}]\n    type = "diff"\n    address = "{self.address}"\n'
        text += f'\n[plugins."io.containerd.service.v1.diff-service"]\n  default = ["{DIFFER}", "walking"]\n'
        for sn, diff in (("overlayfs", "walking"), (NAME, DIFFER)):
            text += '\n[[plugins."io.containerd.transfer.v1.local".unpack_config]]\n'
            text += f'  platform = "linux/amd64"\n  snapshotter = "{sn}"\n  differ = "{diff}"\n'
        return text

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _start(base: Path, scratch_size_gb: int, convert_in: str = "host") -> LcowSnapshotter:
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = base / "snapshotter.log"
    address = str(base / "sn.sock")
    argv = [sys.executable, "-m", "hcsshim.cli.lcow_snapshotter", "--root", str(base / "root")]
    argv += ["--address", address, "--scratch-size-gb", str(scratch_size_gb), "--log-level", "debug"]
    argv += ["--containerd-address", str(base / "containerd.sock"), "--convert-in", convert_in]
    with open(log, "ab") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=f, stdin=subprocess.DEVNULL, start_new_session=True)
    sn = LcowSnapshotter(base / "root", address, log, proc)
    if not wait_until(lambda: os.path.exists(address) or proc.poll() is not None, 30) or proc.poll():
        _stop(sn)
        raise RuntimeError(f"lcow-snapshotter did not start:\n{sn.log_tail()}")
    return sn


def _stop(sn: LcowSnapshotter) -> None:
    sn.process.send_signal(signal.SIGTERM)
    try:
        sn.process.wait(30)
    except subprocess.TimeoutExpired:
        sn.process.kill()
        sn.process.wait(10)


def restart(sn: LcowSnapshotter) -> None:
    """Stop the daemon (SIGTERM) and start it again on the same root and socket."""
    _stop(sn)
    new = _start(sn.root.parent, 2)
    sn.process = new.process


@contextlib.contextmanager
def running_lcow_snapshotter(
    base: Path, *, scratch_size_gb: int = 2, convert_in: str = "host"
) -> Iterator[LcowSnapshotter]:
    """`python -m hcsshim.cli.lcow_snapshotter` (what the ``lcow-snapshotter`` script runs) under
    ``base``; stopped with SIGTERM, which also drops its host loop mounts. Raises if it leaves mounts."""
    sn = _start(base, scratch_size_gb, convert_in)
    try:
        yield sn
    finally:
        _stop(sn)
        left = mounts_under(str(base))
        for point in sorted(left, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if left:
        raise RuntimeError(f"mounts left behind by the lcow snapshotter: {left}")


def qemu_fds(pid: int, path: Path) -> int:
    """How many of QEMU's descriptors have `path` open: one set per attachment of the disk."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                count += 1
        except OSError:
            continue
    return count


def cri_log_text(path: Path) -> str:
    """A CRI container log's lines without their timestamp, stream and tag fields."""
    try:
        return "\n".join(line.split(" ", 3)[-1] for line in path.read_text(errors="replace").splitlines())
    except OSError:
        return ""
