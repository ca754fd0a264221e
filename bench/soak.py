"""Soak: many UVM starts in a row and at once, counting hangs, failures and leaks.

50 sequential ``ctr run --rm`` through containerd-shim-runhcs-v1, then 8 pods started concurrently
through CRI (RunPodSandbox + CreateContainer + StartContainer, each waiting for its container's
output), all on one private containerd. A run that does not finish within HANG_AFTER seconds is a
hang (it is killed and the soak goes on); one that exits non-zero or without its output is a
failure. Afterwards it counts what is left: QEMU processes, shim processes, mounts and sockets under
the containerd's and the qemu backend's state directories. The reference beside each start time is
io.containerd.runc.v2 on the same containerd, measured in the same run."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import _qemu

from hcsshim.hcs.qemu.system import state_root
from tests.support.containerd import Containerd, available, running_containerd, shim_pids
from tests.support.cri import CriClient
from tests.support.oci_image import DEFAULT_NAME, build_image, build_pause_image
from tests.support.shim_checks import RUNTIME, import_busybox, mounts_under
from tests.support.uvm import boot_files, qemu_processes

RUNS = int(os.environ.get("BENCH_SOAK_RUNS", "50"))
PODS = int(os.environ.get("BENCH_SOAK_PODS", "8"))
HANG_AFTER = float(os.environ.get("BENCH_SOAK_HANG_AFTER", "180"))
MARKER = "soak-says-hello"
CRI_NAMESPACE = "k8s.io"
HANDLER = "runhcs-v1"


class Tally:
    def __init__(self) -> None:
        self.starts: list[float] = []
        self.hangs: list[str] = []
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def add(self, start: float | None, hang: str = "", failure: str = "") -> None:
        with self.lock:
            if start is not None:
                self.starts.append(start)
            if hang:
                self.hangs.append(hang)
            if failure:
                self.failures.append(failure)


def ctr_run(c: Containerd, runtime: str, tally: Tally) -> None:
    cid = f"soak-{uuid.uuid4().hex[:8]}"
    argv = c.ctr_argv("run", "--rm", "--runtime", runtime, "docker.io/library/busybox:local", cid)
    start = time.monotonic()
    proc = subprocess.Popen(
        [*argv, "echo", MARKER],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=c.env,
    )
    try:
        out, _ = proc.communicate(timeout=HANG_AFTER)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        tally.add(None, hang=f"{cid}: no exit within {HANG_AFTER:.0f}s")
        c.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
        c.ctr("task", "delete", "-f", cid, check=False, timeout=60)
        c.ctr("container", "delete", cid, check=False)
        return
    elapsed = time.monotonic() - start
    if proc.returncode != 0 or MARKER.encode() not in out:
        tally.add(None, failure=f"{cid}: exit {proc.returncode}: {out.decode(errors='replace')[-300:]}")
        return
    tally.add(elapsed)


def _log_has(path: str, text: str) -> bool:
    try:
        return text in Path(path).read_text(errors="replace")
    except OSError:
        return False


def cri_pod(cri: CriClient, logs: str, n: int, tally: Tally, pods: list[str]) -> None:
    name = f"soak-pod-{n}"
    start = time.monotonic()
    try:
        config = cri.sandbox_config(name, logs, host_network=True)
        pod_id = cri.run_pod_sandbox(config, HANDLER)
        with tally.lock:
            pods.append(pod_id)
        cid = cri.create_container(
            pod_id, config, "c", DEFAULT_NAME, ["sh", "-c", f"echo {MARKER}; sleep 600"], f"{name}.log"
        )
        cri.start_container(cid)
        path = os.path.join(logs, f"{name}.log")
        while not _log_has(path, MARKER):
            if time.monotonic() - start > HANG_AFTER:
                tally.add(None, hang=f"{name}: no output within {HANG_AFTER:.0f}s")
                return
            time.sleep(0.1)
        tally.add(time.monotonic() - start)
    except Exception as e:
        tally.add(None, failure=f"{name}: {e}")


# containerd's own (grpc, ttrpc, debug), still listening while the leaks are counted.
CONTAINERD_OWN_SOCKETS = {"c.sock", "c.sock.ttrpc", "d.sock"}


def leaks(c: Containerd) -> dict[str, list[str]]:
    sockets = [str(p) for p in c.base.rglob("*") if p.is_socket() and p.name not in CONTAINERD_OWN_SOCKETS]
    root = state_root()
    state = [str(p) for p in Path(root).iterdir()] if os.path.isdir(root) else []
    return {
        "qemu processes": [str(p) for p in qemu_processes()],
        "shim processes": [str(p) for p in shim_pids(c)],
        "mounts": mounts_under(str(c.base)) + mounts_under(root),
        "sockets": sockets,
        "qemu state dirs": state,
    }


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def row(label: str, tally: Tally, reference: list[float] | None = None) -> None:
    s = tally.starts
    p50 = statistics.median(s) if s else 0.0
    ref = statistics.median(reference) if reference else 0.0
    ratio = f"{p50 / ref:>7.1f}x" if ref and p50 else f"{'-':>8}"
    print(
        f"{label:34} {len(s) + len(tally.hangs) + len(tally.failures):>5} {len(tally.hangs):>5} "
        f"{len(tally.failures):>8} {p50:>8.2f} {p99(s):>8.2f} {ref:>9.3f} {ratio}"
    )


def main() -> int:
    reason = available()
    if reason is not None:
        print(f"soak: cannot run ({reason})")
        return 1
    if boot_files() is None:
        print("soak: no UVM image; run `hcsshim uvm build` first")
        return 1
    print(_qemu.describe(_qemu.chosen()))
    seq, pods, runc = Tally(), Tally(), Tally()
    with running_containerd() as c, tempfile.TemporaryDirectory() as work:
        import_busybox(c, work)
        for _ in range(5):
            ctr_run(c, "io.containerd.runc.v2", runc)
        for i in range(RUNS):
            ctr_run(c, RUNTIME, seq)
            if (i + 1) % 10 == 0:
                print(
                    f"  {i + 1}/{RUNS} ctr runs: {len(seq.hangs)} hangs, {len(seq.failures)} failures",
                    flush=True,
                )
        cri = CriClient(c.grpc_address)
        pod_ids: list[str] = []
        try:
            for tar in (
                build_image(os.path.join(work, "bb.tar")),
                build_pause_image(os.path.join(work, "p.tar")),
            ):
                c.ctr("images", "import", tar, namespace=CRI_NAMESPACE, timeout=120)
            threads = [
                threading.Thread(target=cri_pod, args=(cri, work, n, pods, pod_ids)) for n in range(PODS)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for pod_id in pod_ids:
                for step in (cri.stop_pod_sandbox, cri.remove_pod_sandbox):
                    try:
                        step(pod_id)
                    except Exception as e:
                        pods.add(None, failure=f"teardown of {pod_id}: {e}")
            cri.close()
        time.sleep(1.0)
        left = leaks(c)
    print(
        f"{'run':34} {'total':>5} {'hangs':>5} {'failures':>8} {'p50 (s)':>8} {'p99 (s)':>8} "
        f"{'runc p50':>9} ratio"
    )
    row(f"ctr run --rm, sequential x{RUNS}", seq, runc.starts)
    row(f"CRI pods started at once x{PODS}", pods, runc.starts)
    print("left behind: " + ", ".join(f"{k} {len(v)}" for k, v in left.items()))
    for what, items in left.items():
        for item in items[:5]:
            print(f"  {what}: {item}")
    for line in (seq.hangs + seq.failures + pods.hangs + pods.failures)[:10]:
        print(f"  {line}")
    bad = seq.hangs or seq.failures or pods.hangs or pods.failures or any(left.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
