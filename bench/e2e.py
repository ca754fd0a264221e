"""End-to-end benchmark: ``ctr run --rm`` to the command's output, for containerd-shim-runhcs-v1 (a UVM per
task) and for io.containerd.runc.v2 (the reference, measured in the same run against the same private
containerd and image), their ratio, and the shim server's own RSS (QEMU's is reported beside it). The
process-v2 shim (same shim code, runc on the host, no UVM) shows how much of the gap is the UVM."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import _qemu

from tests.support.containerd import Containerd, available, running_containerd
from tests.support.procs import shim_server_pid
from tests.support.shim_checks import RUNTIME, import_busybox, qemu_pids, wait_until
from tests.support.uvm import boot_files

RUNS = int(os.environ.get("BENCH_E2E_RUNS", "3"))
MARKER = "hello-from-the-container"


def to_output(c: Containerd, runtime: str) -> tuple[float, float]:
    """(seconds until the marker line arrived, seconds until ``ctr run --rm`` returned)."""
    cid = f"bench-{uuid.uuid4().hex[:8]}"
    argv = c.ctr_argv("run", "--rm", "--runtime", runtime, "docker.io/library/busybox:local", cid)
    start = time.monotonic()
    proc = subprocess.Popen(
        [*argv, "echo", MARKER],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=c.env,
    )
    assert proc.stdout is not None
    first = 0.0
    for raw in proc.stdout:
        if MARKER.encode() in raw and not first:
            first = time.monotonic() - start
    code = proc.wait(timeout=600)
    total = time.monotonic() - start
    if code != 0 or not first:
        raise RuntimeError(f"ctr run with {runtime} failed ({code}):\n{c.log_tail()}")
    return first, total


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"^VmRSS:\s+(\d+)", f.read(), re.M)
    return int(m.group(1)) if m else 0


def resident(c: Containerd) -> tuple[int, int]:
    """(shim server RSS, QEMU RSS) in KiB while a task sleeps in its UVM."""
    cid = f"bench-rss-{uuid.uuid4().hex[:6]}"
    c.ctr(
        "run", "-d", "--runtime", RUNTIME, "docker.io/library/busybox:local", cid, "sleep", "600", timeout=600
    )
    try:
        time.sleep(1.0)
        pid = shim_server_pid("hcsshim.cli.shim_runhcs_v1", cid)
        qemus = qemu_pids(cid)
        return (rss_kib(pid) if pid else 0), (rss_kib(qemus[0]) if qemus else 0)
    finally:
        c.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
        wait_until(lambda: "RUNNING" not in c.ctr("task", "ls", check=False).stdout, 60)
        c.ctr("task", "delete", cid, check=False, timeout=60)
        c.ctr("container", "delete", cid, check=False)


def main() -> int:
    reason = available()
    if reason is not None:
        print(f"e2e: skipped ({reason})")
        return 0
    if boot_files() is None:
        print("e2e: no UVM image; run `hcsshim uvm build` first")
        return 0
    with running_containerd() as c, tempfile.TemporaryDirectory() as work:
        import_busybox(c, work)
        to_output(c, "io.containerd.runc.v2")  # warm the image and snapshotter caches
        runc = [to_output(c, "io.containerd.runc.v2") for _ in range(RUNS)]
        shim = [to_output(c, RUNTIME) for _ in range(RUNS)]
        host = [to_output(c, "io.containerd.process.v2") for _ in range(RUNS)]
        shim_rss, qemu_rss = resident(c)
    r_first = statistics.median(x[0] for x in runc)
    s_first = statistics.median(x[0] for x in shim)
    r_total = statistics.median(x[1] for x in runc)
    s_total = statistics.median(x[1] for x in shim)
    print(_qemu.describe(_qemu.chosen()))
    print(f"ctr run --rm busybox echo; median of {RUNS} runs each, same containerd 1.6 and image")
    print(f"{'measure':46} {'runhcs-v1':>10} {'runc.v2':>10} {'ratio':>8}")
    print(f"{'start to output (s)':46} {s_first:>10.2f} {r_first:>10.2f} {s_first / r_first:>8.1f}")
    label = "start to ctr exit, --rm teardown included (s)"
    print(f"{label:46} {s_total:>10.2f} {r_total:>10.2f} {s_total / r_total:>8.1f}")
    h_first = statistics.median(x[0] for x in host)
    label = "process-v2 (no UVM) start to output (s)"
    print(f"{label:46} {h_first:>10.2f} {r_first:>10.2f} {h_first / r_first:>8.1f}")
    print(f"{'shim server RSS (MiB)':46} {shim_rss / 1024:>10.1f}")
    print(f"{'QEMU RSS of the task UVM (MiB)':46} {qemu_rss / 1024:>10.1f}")
    print(f"samples runhcs-v1: {[round(x[0], 2) for x in shim]} runc: {[round(x[0], 3) for x in runc]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
