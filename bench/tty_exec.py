"""TTY output throughput: one ``ctr task exec -t`` of ``seq N`` into a running task, for
containerd-shim-runhcs-v1 (a UVM), against a pipe exec (no TTY) through the same shim and against
io.containerd.runc.v2's TTY exec (the reference), all in the same run and containerd. An exec of ``true``
is timed too, so the table shows the transfer rate with the exec's fixed cost taken out."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import _qemu

from tests.support.containerd import Containerd, available, running_containerd
from tests.support.shim_checks import RUNTIME, import_busybox, run_in_pty, wait_until
from tests.support.uvm import boot_files

COUNT = int(os.environ.get("BENCH_TTY_COUNT", "1000000"))
IMAGE = "docker.io/library/busybox:local"


def expected_bytes(count: int) -> int:
    return sum(len(str(i)) + 1 for i in range(1, count + 1))


def exec_seconds(c: Containerd, cid: str, tty: bool, argv: list[str]) -> tuple[float, int]:
    """(seconds for the whole ``ctr task exec``, bytes of output it printed)."""
    exec_id = f"b{uuid.uuid4().hex[:8]}"
    cmd = c.ctr_argv("task", "exec", *(["-t"] if tty else []), "--exec-id", exec_id, cid, *argv)
    start = time.monotonic()
    if tty:
        code, out = run_in_pty(cmd, c.env, timeout=600)
        size = len(out.encode(errors="replace"))
    else:
        proc = subprocess.run(cmd, capture_output=True, env=c.env, timeout=600)
        code, size = proc.returncode, len(proc.stdout)
    elapsed = time.monotonic() - start
    if code != 0:
        raise RuntimeError(f"exec in {cid} failed ({code}):\n{c.log_tail()}")
    return elapsed, size


SEQ = ["busybox", "seq", str(COUNT)]
# The same bytes written in large blocks (cat), not a write(2) per line as seq does on a terminal.
SEQ_CAT = ["sh", "-c", f"busybox seq {COUNT} | cat"]


def measure(c: Containerd, runtime: str, tty: bool, argv: list[str] = SEQ) -> tuple[float, float, int]:
    """(seconds for ``argv``, seconds for ``true``, output bytes) of one exec each into a fresh task."""
    cid = f"bench-tty-{uuid.uuid4().hex[:6]}"
    c.ctr("run", "-d", "--runtime", runtime, IMAGE, cid, "sleep", "600", timeout=600)
    try:
        base, _ = exec_seconds(c, cid, tty, ["true"])
        seconds, size = exec_seconds(c, cid, tty, argv)
        return seconds, base, size
    finally:
        c.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
        wait_until(lambda: "RUNNING" not in c.ctr("task", "ls", check=False).stdout, 60)
        c.ctr("task", "delete", cid, check=False, timeout=60)
        c.ctr("container", "delete", cid, check=False)


def rate(size: int, seconds: float, base: float) -> float:
    return size / max(seconds - base, 1e-3) / 1e6


def main() -> int:
    reason = available()
    if reason is not None:
        print(f"tty: skipped ({reason})")
        return 0
    if boot_files() is None:
        print("tty: no UVM image; run `hcsshim uvm build` first")
        return 0
    with running_containerd() as c, tempfile.TemporaryDirectory() as work:
        import_busybox(c, work)
        runc = measure(c, "io.containerd.runc.v2", tty=True)
        shim_tty = measure(c, RUNTIME, tty=True)
        shim_pipe = measure(c, RUNTIME, tty=False)
        runc_cat = measure(c, "io.containerd.runc.v2", tty=True, argv=SEQ_CAT)
        shim_cat = measure(c, RUNTIME, tty=True, argv=SEQ_CAT)
    want = expected_bytes(COUNT)
    print(_qemu.describe(_qemu.chosen()))
    print(f"ctr task exec of `seq {COUNT}` ({want / 1e6:.1f} MB as printed; a TTY adds a CR per line)")
    print(f"{'exec':34} {'seconds':>8} {'true (s)':>9} {'bytes':>10} {'MB/s':>8}")
    rows = (
        ("runc.v2 TTY (reference)", runc),
        ("runhcs-v1 TTY", shim_tty),
        ("runhcs-v1 pipe", shim_pipe),
        ("runc.v2 TTY, seq | cat", runc_cat),
        ("runhcs-v1 TTY, seq | cat", shim_cat),
    )
    for label, (seconds, base, size) in rows:
        print(f"{label:34} {seconds:>8.2f} {base:>9.2f} {size:>10} {rate(size, seconds, base):>8.1f}")
    r_tty = rate(runc[2], runc[0], runc[1])
    s_tty = rate(shim_tty[2], shim_tty[0], shim_tty[1])
    s_pipe = rate(shim_pipe[2], shim_pipe[0], shim_pipe[1])
    print(f"ratio runhcs TTY / runc TTY: {s_tty / r_tty:.2f} (goal >= 0.5)")
    print(f"ratio runhcs TTY / runhcs pipe: {s_tty / s_pipe:.2f}")
    r_cat = rate(runc_cat[2], runc_cat[0], runc_cat[1])
    s_cat = rate(shim_cat[2], shim_cat[0], shim_cat[1])
    print(f"ratio runhcs TTY / runc TTY, block writes (seq | cat): {s_cat / r_cat:.2f}")
    print("(busybox seq itself runs in the TCG guest; the pipe row shows that floor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
