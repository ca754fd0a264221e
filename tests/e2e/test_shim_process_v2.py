"""containerd-shim-process-v2 end to end: no UVM, the agent drives runc on this host; against containerd
1.6 and 2.1."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from hcsshim.shim.local import runc_binary, state_dir
from tests.support.containerd import Containerd
from tests.support.procs import shim_server_pid
from tests.support.shim_checks import (
    bundle_path,
    import_busybox,
    mounts_under,
    run_in_pty,
    shim_socket,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.root]

RUNTIME = "io.containerd.process.v2"


@pytest.fixture(scope="module")
def containerd(containerd_matrix: Containerd) -> Containerd:
    """Every test of this module runs once per containerd version (no VM: cheap)."""
    return containerd_matrix


@pytest.fixture(scope="module")
def image(containerd: Containerd) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as d:
        yield import_busybox(containerd, d)


def _server_pid(cid: str) -> int:
    pid = shim_server_pid("hcsshim.cli.shim_process_v2", cid)
    assert pid is not None, f"no shim server for {cid}"
    return pid


def _gone(c: Containerd, cid: str) -> None:
    bundle = bundle_path(c, cid)
    assert wait_until(lambda: not mounts_under(bundle), 20), mounts_under(bundle)
    assert wait_until(lambda: not os.path.exists(shim_socket(c, cid)), 10)
    assert wait_until(lambda: not os.path.exists(state_dir(cid)), 10), os.listdir(state_dir(cid))


def test_ctr_run_rm_on_the_host(containerd: Containerd, image: str) -> None:
    proc = containerd.ctr(
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        image,
        "proc-run",
        "sh",
        "-c",
        "echo hello from the host; uname -r; exit 5",
        check=False,
    )
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == ["hello from the host", os.uname().release]
    _gone(containerd, "proc-run")


def test_killed_process_shim_leaves_no_container(containerd: Containerd, image: str) -> None:
    cid = "proc-crash"
    containerd.ctr("run", "-d", "--runtime", RUNTIME, image, cid, "sleep", "600")
    runc_root = os.path.join(state_dir(cid), "gcs", "runc")
    listed = subprocess.run(
        [runc_binary(), "--root", runc_root, "list", "-q"], capture_output=True, text=True
    )
    assert cid in listed.stdout.split()
    try:
        os.kill(_server_pid(cid), signal.SIGKILL)
        assert wait_until(lambda: not re.search(rf"^{cid}\b", containerd.ctr("task", "ls").stdout, re.M), 30)
        _gone(containerd, cid)
    finally:
        containerd.ctr("task", "delete", cid, check=False)
        containerd.ctr("container", "delete", cid, check=False)


def test_ctr_task_exec_and_run_with_tty_on_the_host(containerd: Containerd, image: str) -> None:
    """The shim's TTY path (ResizePty, terminal stdio, no stderr) through containerd, without a UVM."""
    cid = "proc-tty"
    containerd.ctr("run", "-d", "--runtime", RUNTIME, image, cid, "sleep", "600")
    try:
        argv = containerd.ctr_argv(
            "task", "exec", "-t", "--exec-id", "t1", cid, "sh", "-c", "test -t 0 && echo IS-A-TTY"
        )
        code, out = run_in_pty(argv, containerd.env)
        assert code == 0 and "IS-A-TTY" in out, out
        argv = containerd.ctr_argv(
            "run", "-t", "--rm", "--runtime", RUNTIME, image, "proc-tty-run", "sh", "-c", "tty; exit 3"
        )
        code, out = run_in_pty(argv, containerd.env)
        assert code == 3 and "/dev/pts/" in out, out
    finally:
        containerd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
        wait_until(lambda: "RUNNING" not in containerd.ctr("task", "ls", check=False).stdout, 30)
        containerd.ctr("task", "delete", cid, check=False)
        containerd.ctr("container", "delete", cid, check=False)
    _gone(containerd, cid)
