"""``shimdiag`` against running shims: list, exec in the UVM, tasks, stacks (host and guest)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.containerd import Containerd
from tests.support.shim_checks import RUNTIME, import_busybox, qemu_pids, wait_until
from tests.support.uvm import boot_files

pytestmark = [pytest.mark.e2e, pytest.mark.root]

SHIMDIAG = str(Path(sys.executable).parent / "shimdiag")
UVM_TIMEOUT = 300.0


def shimdiag(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHIMDIAG, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _leftover_fifo_dirs() -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), "shimdiag-*"))


@pytest.fixture(scope="module")
def uvm_task(containerd: Containerd) -> Iterator[str]:
    files = boot_files()
    if files is None:
        pytest.fail("no UVM image (run `hcsshim uvm build`)")
    cid = "diag-uvm"
    with tempfile.TemporaryDirectory() as d:
        image = import_busybox(containerd, d)
    containerd.ctr("run", "-d", "--runtime", RUNTIME, image, cid, "sleep", "600", timeout=UVM_TIMEOUT)
    try:
        yield cid
    finally:
        containerd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
        wait_until(lambda: "STOPPED" in containerd.ctr("task", "ls", check=False).stdout, 60)
        containerd.ctr("task", "delete", cid, check=False, timeout=60)
        containerd.ctr("container", "delete", cid, check=False)


def _name(c: Containerd, cid: str) -> str:
    return f"containerd-shim-{c.namespace}-{cid}"


def test_list_names_the_running_shim(containerd: Containerd, uvm_task: str) -> None:
    proc = shimdiag("list", "--pids")
    assert proc.returncode == 0, proc.stderr
    rows = dict(line.split("\t") for line in proc.stdout.splitlines())
    pid = int(rows[_name(containerd, uvm_task)])
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert b"serve" in f.read().split(b"\0")


def test_exec_prints_the_uvm_kernel_release(containerd: Containerd, uvm_task: str) -> None:
    proc = shimdiag("exec", _name(containerd, uvm_task), "uname", "-r")
    assert proc.returncode == 0, proc.stderr
    files = boot_files()
    assert files is not None
    with open(os.path.join(files, "manifest.json")) as f:
        kernel_release = json.load(f)["kernel_release"]
    assert proc.stdout.strip() == kernel_release
    assert proc.stdout.strip() != os.uname().release
    assert _leftover_fifo_dirs() == []


def test_exec_passes_exit_code_stderr_and_runs_outside_the_container(
    containerd: Containerd, uvm_task: str
) -> None:
    # The container's rootfs is busybox only; the UVM's own root has the agent under /opt/hcsshim.
    script = "test -d /opt/hcsshim && echo uvm-root; echo oops >&2; exit 3"
    proc = shimdiag("exec", uvm_task, "sh", "-c", script)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == "uvm-root"
    assert proc.stderr.strip() == "oops"


def test_tasks_and_stacks(containerd: Containerd, uvm_task: str) -> None:
    proc = shimdiag("tasks", "--execs", _name(containerd, uvm_task))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == uvm_task
    assert "(init)\trunning" in proc.stdout
    proc = shimdiag("stacks", uvm_task)
    assert proc.returncode == 0, proc.stderr
    host, _, guest = proc.stdout.partition("--- guest ---")
    assert "service_diag.py" in host  # the handler answering this very call
    assert "hcsshim/guest" in guest or "hcsshim.guest" in guest, guest[:2000]


def test_stats_reports_the_uvm_own_figures(containerd: Containerd, uvm_task: str) -> None:
    proc = shimdiag("stats", _name(containerd, uvm_task))
    assert proc.returncode == 0, proc.stderr
    rows = dict(line.split("\t") for line in proc.stdout.splitlines())
    qemus = qemu_pids(uvm_task)
    assert len(qemus) == 1 and int(rows["vmm pid"]) == qemus[0]
    mib = {k: int(v.split()[0]) for k, v in rows.items() if v.endswith(" MiB")}
    assert mib["vmm rss"] > 0 and mib["assigned memory"] > 0
    # The guest kernel sees a little less than it was given, never more.
    assert 0 < mib["guest MemAvailable"] <= mib["guest MemTotal"] <= mib["assigned memory"]
    assert float(rows["uptime"].split()[0]) > 0


def test_unknown_shim_is_named_in_the_error() -> None:
    proc = shimdiag("exec", "no-such-shim", "true")
    assert proc.returncode == 1
    assert "no-such-shim" in proc.stderr
    assert _leftover_fifo_dirs() == []
