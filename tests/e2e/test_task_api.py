"""The Task API as containerd's own clients see it (issue 15), for both shims, driven through containerd:
real pids, kill and exit semantics like containerd's runc shim, ResizePty before Start.

A container that joins the UVM's PID namespace (``--with-ns pid:/proc/self/ns/pid``, resolved inside the
guest) is how a UVM task "shares the host PID namespace": its /proc shows the UVM's processes, so the
pids the shim reports can be checked against what the guest sees. For process-v2 the same flag joins
the host's PID namespace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hcsshim.shim.local import state_dir
from tests.support.containerd import Containerd, busybox_rootfs
from tests.support.procs import argvs
from tests.support.shim_checks import RUNTIME, import_busybox, qemu_pids, wait_until
from tests.support.tasks import TasksClient
from tests.support.uvm import boot_files

pytestmark = [pytest.mark.e2e, pytest.mark.root]

PROCESS_V2 = "io.containerd.process.v2"
UVM_TIMEOUT = 300.0
JOIN_ROOT_PID_NS = ("--with-ns", "pid:/proc/self/ns/pid")
RUNC_OPTIONS_URL = "containerd.runc.v1.Options"


@pytest.fixture(scope="module")
def image(containerd: Containerd) -> Iterator[str]:
    if boot_files() is None:
        pytest.fail("no UVM image (run `hcsshim uvm build`)")
    with tempfile.TemporaryDirectory() as d:
        yield import_busybox(containerd, d)


def _task_row(c: Containerd, cid: str) -> tuple[int, str]:
    """(pid, status) of ``cid`` in ``ctr task ls``."""
    for line in c.ctr("task", "ls").stdout.splitlines()[1:]:
        cols = line.split()
        if cols and cols[0] == cid:
            return int(cols[1]), cols[2]
    raise AssertionError(f"{cid} not in ctr task ls")


def _ps(c: Containerd, cid: str) -> list[int]:
    lines = c.ctr("task", "ps", cid).stdout.splitlines()[1:]
    return [int(line.split()[0]) for line in lines if line.split()]


def _exec_bytes(c: Containerd, cid: str, exec_id: str, *argv: str) -> bytes:
    proc = subprocess.run(
        c.ctr_argv("task", "exec", "--exec-id", exec_id, cid, *argv),
        capture_output=True,
        env=c.env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _cleanup(c: Containerd, cid: str) -> None:
    c.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
    wait_until(lambda: cid not in c.ctr("task", "ls", check=False).stdout or _stopped(c, cid), 60)
    c.ctr("task", "delete", cid, check=False, timeout=120)
    c.ctr("container", "delete", cid, check=False)


def _stopped(c: Containerd, cid: str) -> bool:
    try:
        return _task_row(c, cid)[1] == "STOPPED"
    except AssertionError:
        return True


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _host_has(argv_needle: bytes) -> bool:
    return any(b"\0".join(argv) == argv_needle for _, argv in argvs())


# ---- pids -----------------------------------------------------------------------------------------


def test_uvm_task_and_exec_pids_are_the_guests(containerd: Containerd, image: str) -> None:
    cid = "task-api-pids"
    containerd.ctr(
        "run", "-d", "--runtime", RUNTIME, *JOIN_ROOT_PID_NS, image, cid, "sleep", "600", timeout=UVM_TIMEOUT
    )
    try:
        pid, status = _task_row(containerd, cid)
        assert pid > 0 and status == "RUNNING"
        # The container sees the UVM's PID namespace: the reported pid is its init there.
        assert _exec_bytes(containerd, cid, "cmd", "cat", f"/proc/{pid}/cmdline") == b"sleep\x00600\x00"
        containerd.ctr(
            "task", "exec", "-d", "--exec-id", "bg", cid, "sh", "-c", "echo $$ > /tmp/bg.pid; exec sleep 601"
        )
        assert wait_until(lambda: b"\n" in _exec_bytes(containerd, cid, "rd", "cat", "/tmp/bg.pid"), 60)
        exec_pid = int(_exec_bytes(containerd, cid, "rd2", "cat", "/tmp/bg.pid"))
        listed = _ps(containerd, cid)
        assert pid in listed and exec_pid in listed, listed
        assert _exec_bytes(containerd, cid, "cmd2", "cat", f"/proc/{exec_pid}/cmdline") == b"sleep\x00601\x00"
    finally:
        _cleanup(containerd, cid)


def test_process_v2_task_pid_is_the_hosts(containerd: Containerd, image: str) -> None:
    cid = "task-api-host-pids"
    containerd.ctr("run", "-d", "--runtime", PROCESS_V2, image, cid, "sleep", "602")
    try:
        pid, _ = _task_row(containerd, cid)
        assert _cmdline(pid) == b"sleep\x00602\x00"
        containerd.ctr("task", "exec", "-d", "--exec-id", "bg", cid, "sleep", "603")
        assert wait_until(lambda: any(_cmdline(p) == b"sleep\x00603\x00" for p in _ps(containerd, cid)), 30)
        assert pid in _ps(containerd, cid)
    finally:
        _cleanup(containerd, cid)


# ---- kill and exit --------------------------------------------------------------------------------


def _kill_init_with_children(c: Containerd, runtime: str, cid: str, marker: str) -> None:
    c.ctr(
        "run",
        "-d",
        "--runtime",
        runtime,
        *JOIN_ROOT_PID_NS,
        "docker.io/library/busybox:local",
        cid,
        "sh",
        "-c",
        f"sleep {marker} & sleep {marker}1 & wait",
        timeout=UVM_TIMEOUT,
    )
    pid, _ = _task_row(c, cid)
    procs = _exec_bytes(c, cid, "look", "sh", "-c", "cat /proc/[0-9]*/cmdline 2>/dev/null; true")
    assert f"sleep\0{marker}\0".encode() in procs
    c.ctr("task", "kill", "-s", "SIGKILL", cid)
    assert wait_until(lambda: _stopped(c, cid), 60), c.ctr("task", "ls").stdout
    # Kill of an exited process: errdefs NotFound, as containerd's runc shim answers.
    again = c.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
    assert again.returncode != 0 and "not found" in again.stderr, again.stderr
    assert pid > 0


def test_killing_init_of_a_uvm_task_sharing_the_pid_namespace_ends_it(
    containerd: Containerd, image: str
) -> None:
    cid = "task-api-kill-uvm"
    try:
        _kill_init_with_children(containerd, RUNTIME, cid, "4242")
        containerd.ctr("task", "delete", cid, timeout=120)
        assert wait_until(lambda: not qemu_pids(cid), 30)
    finally:
        _cleanup(containerd, cid)


def test_killing_init_of_a_host_pid_process_v2_task_leaves_no_child(
    containerd: Containerd, image: str
) -> None:
    cid = "task-api-kill-host"
    try:
        _kill_init_with_children(containerd, PROCESS_V2, cid, "4343")
        assert wait_until(lambda: not _host_has(b"sleep\x004343") and not _host_has(b"sleep\x0043431"), 20)
        containerd.ctr("task", "delete", cid)
    finally:
        _cleanup(containerd, cid)
    assert not _host_has(b"sleep\x004343")


def test_process_v2_kill_after_runc_state_removed_is_not_found(containerd: Containerd, image: str) -> None:
    cid = "task-api-gone"
    containerd.ctr("run", "-d", "--runtime", PROCESS_V2, image, cid, "sleep", "604")
    pid, _ = _task_row(containerd, cid)
    try:
        runc_state = Path(state_dir(cid)) / "gcs" / "runc" / cid
        assert runc_state.is_dir()
        subprocess.run(["rm", "-rf", str(runc_state)], check=True)
        proc = containerd.ctr("task", "kill", "-s", "SIGTERM", cid, check=False)
        assert proc.returncode != 0 and "not found" in proc.stderr, proc.stderr
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _cleanup(containerd, cid)


# ---- ResizePty before Start ------------------------------------------------------------------------


def _stty_after_early_resize(c: Containerd, runtime: str, cid: str, tmp: Path) -> str:
    rootfs = busybox_rootfs(tmp / "rootfs")
    c.ctr(
        "container",
        "create",
        "--runtime",
        runtime,
        "--tty",
        "--rootfs",
        str(rootfs),
        cid,
        "/bin/busybox",
        "stty",
        "size",
    )
    fifo = str(tmp / "stdout")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    client = TasksClient(c.grpc_address, c.namespace)
    out = bytearray()
    try:
        assert client.create(cid, fifo, terminal=True) > 0
        client.resize_pty(cid, width=123, height=45)
        assert client.start(cid) > 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and b"\n" not in out:
            try:
                out += os.read(reader, 4096)
            except BlockingIOError:
                time.sleep(0.05)
        assert wait_until(lambda: _stopped(c, cid), 60)
        client.delete(cid)
    finally:
        os.close(reader)
        client.close()
        _cleanup(c, cid)
    return out.decode(errors="replace")


def test_resize_pty_before_start_uvm(containerd: Containerd, image: str, tmp_path: Path) -> None:
    out = _stty_after_early_resize(containerd, RUNTIME, "task-api-resize", tmp_path)
    assert out.strip() == "45 123", out


def test_resize_pty_before_start_process_v2(containerd: Containerd, image: str, tmp_path: Path) -> None:
    out = _stty_after_early_resize(containerd, PROCESS_V2, "task-api-resize-host", tmp_path)
    assert out.strip() == "45 123", out


# ---- ShimCgroup --------------------------------------------------------------------------------------


def _cgroup_dirs(name: str) -> list[Path]:
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return [root / name]
    return [root / h / name for h in ("memory", "pids")]


def test_shim_cgroup_option_moves_the_shim(containerd: Containerd, image: str, tmp_path: Path) -> None:
    """A client's runc Options with shim_cgroup (as the Go client's WithShimCgroup sends it)."""
    from hcsshim.api.containerd.runc.options import oci_pb2 as runc_options
    from tests.support.procs import shim_server_pid

    cid = "task-api-shimcg"
    name = "hcsshim-test-shim-cgroup"
    dirs = _cgroup_dirs(name)
    for d in dirs:
        d.mkdir(exist_ok=True)
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    containerd.ctr(
        "container", "create", "--runtime", PROCESS_V2, "--rootfs", str(rootfs), cid, "/bin/sleep", "606"
    )
    client = TasksClient(containerd.grpc_address, containerd.namespace)
    try:
        options = runc_options.Options(shim_cgroup=f"/{name}")
        client.create(cid, "", terminal=False, options=(RUNC_OPTIONS_URL, options.SerializeToString()))
        pid = shim_server_pid("hcsshim.cli.shim_process_v2", cid)
        assert pid is not None
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
        assert any(line.endswith(f":/{name}") for line in lines), lines
        client.kill(cid, signal.SIGKILL)
    finally:
        client.close()
        _cleanup(containerd, cid)
        for d in dirs:
            wait_until(lambda d=d: not (d / "cgroup.procs").read_text().split(), 30)
            with contextlib.suppress(OSError):
                d.rmdir()
