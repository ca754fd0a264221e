"""What the shim e2e tests and the benchmark look for on the host: QEMU processes of a UVM, mounts and
sockets a task left behind, and ``ctr`` under a pseudo-terminal (``ctr -t`` needs a console)."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import subprocess
import time
from collections.abc import Sequence

from hcsshim.hcs.qemu.system import state_dir_for
from hcsshim.shim.manager import socket_path
from tests.support.containerd import Containerd
from tests.support.oci_image import DEFAULT_NAME, build_image
from tests.support.procs import argvs

RUNTIME = "io.containerd.runhcs.v1"


def qemu_pids(uvm_owner: str) -> list[int]:
    """QEMU processes of the UVM created for ``uvm_owner`` (its state directory is in their argv)."""
    state_dir = state_dir_for(f"{uvm_owner}@vm")
    needle = state_dir.encode()
    # A clone claimed from the warm pool runs a QEMU whose argv names where it was parked; its pid
    # file is in the state directory.
    adopted = 0
    with contextlib.suppress(OSError, ValueError), open(os.path.join(state_dir, "qemu.pid")) as f:
        adopted = int(f.read().strip())
    return [
        pid
        for pid, argv in argvs()
        if argv
        and b"qemu-system" in os.path.basename(argv[0])
        and (pid == adopted or any(needle in a for a in argv))
    ]


def mounts_under(path: str) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == path or point.startswith(path.rstrip("/") + "/"):
                found.append(point)
    return found


def bundle_path(c: Containerd, task_id: str, namespace: str | None = None) -> str:
    return str(c.state / "io.containerd.runtime.v2.task" / (namespace or c.namespace) / task_id)


def shim_socket(c: Containerd, task_id: str, namespace: str | None = None) -> str:
    return socket_path(c.grpc_address, namespace or c.namespace, task_id)


def wait_until(predicate: object, timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(interval)
    return bool(callable(predicate) and predicate())


def import_busybox(c: Containerd, workdir: str, namespace: str | None = None) -> str:
    tar = build_image(os.path.join(workdir, "busybox-oci.tar"))
    c.ctr("images", "import", tar, namespace=namespace, timeout=120)
    return DEFAULT_NAME


def run_in_pty(argv: Sequence[str], env: dict[str, str], timeout: float = 120.0) -> tuple[int, str]:
    """Run with a pseudo-terminal as stdin/stdout/stderr; returns (exit code, everything printed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        list(argv), stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            os.close(master)
    return code, out.decode(errors="replace")
