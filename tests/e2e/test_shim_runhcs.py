"""containerd-shim-runhcs-v1 end to end: private instances of Debian's containerd 1.6 and 2.1 (each test
runs against both), ``ctr`` and real UVMs."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from hcsshim import loopwatch
from hcsshim.hcs.qemu.system import state_dir_for
from tests.support.containerd import VERSIONS, Containerd, start_containerd, stop_containerd
from tests.support.loop_watch import GUEST_SLOW_CALLBACK_MS, SLOW_CALLBACK_MS
from tests.support.procs import shim_server_pid
from tests.support.shim_checks import (
    RUNTIME,
    bundle_path,
    import_busybox,
    mounts_under,
    qemu_pids,
    run_in_pty,
    shim_socket,
    wait_until,
)
from tests.support.uvm import boot_files

pytestmark = [pytest.mark.e2e, pytest.mark.root]

UVM_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def containerd(containerd_matrix: Containerd) -> Containerd:
    """Every test of this module runs once per containerd version."""
    return containerd_matrix


@pytest.fixture(scope="module")
def image(containerd: Containerd) -> Iterator[str]:
    if boot_files() is None:
        pytest.skip("no UVM image (run `hcsshim uvm build`)")
    with tempfile.TemporaryDirectory() as d:
        yield import_busybox(containerd, d)


def _assert_gone(c: Containerd, task_id: str) -> None:
    assert wait_until(lambda: not qemu_pids(task_id), 20), f"QEMU of {task_id} still running"
    # containerd may still be running `shim delete` (then removing the bundle) for a dead shim.
    bundle = bundle_path(c, task_id)
    assert wait_until(lambda: not mounts_under(bundle), 20), mounts_under(bundle)
    vm_state = state_dir_for(f"{task_id}@vm")
    assert wait_until(lambda: not mounts_under(vm_state), 10), mounts_under(vm_state)
    assert wait_until(lambda: not os.path.exists(shim_socket(c, task_id)), 10), "shim socket left behind"
    assert wait_until(lambda: not os.path.exists(bundle), 10), "bundle left behind"


def _kill_and_delete(containerd: Containerd, cid: str) -> None:
    """SIGKILL the task, wait until containerd sees it stopped, delete task and container."""
    containerd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
    wait_until(lambda: _stopped(containerd, cid), 60)
    containerd.ctr("task", "delete", cid, check=False, timeout=60)
    containerd.ctr("container", "delete", cid, check=False)


def test_ctr_run_rm_prints_output_and_exit_code(containerd: Containerd, image: str) -> None:
    proc = containerd.ctr(
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        image,
        "shim-run",
        "sh",
        "-c",
        "echo hello from a UVM; uname -r; exit 7",
        check=False,
        timeout=UVM_TIMEOUT,
    )
    assert proc.returncode == 7, proc.stdout + proc.stderr + containerd.log_tail()
    lines = proc.stdout.splitlines()
    assert lines[0] == "hello from a UVM"
    # The container ran on the UVM's kernel, not the host's.
    assert lines[1] != os.uname().release
    _assert_gone(containerd, "shim-run")


def test_container_writes_stay_out_of_the_image(containerd: Containerd, image: str) -> None:
    proc = containerd.ctr(
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        image,
        "shim-write",
        "sh",
        "-c",
        "echo scribble > /bin/written-by-container && cat /bin/written-by-container",
        check=False,
        timeout=UVM_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "scribble"
    proc = containerd.ctr(
        "run",
        "--rm",
        image,
        "runc-check",
        "sh",
        "-c",
        "test -e /bin/written-by-container && echo leaked || echo clean",
    )
    assert proc.stdout.strip() == "clean"


def test_ctr_task_exec_with_tty(containerd: Containerd, image: str) -> None:
    cid = "shim-exec"
    containerd.ctr("run", "-d", "--runtime", RUNTIME, image, cid, "sleep", "600", timeout=UVM_TIMEOUT)
    try:
        code, out = run_in_pty(
            containerd.ctr_argv(
                "task", "exec", "-t", "--exec-id", "e1", cid, "sh", "-c", "test -t 0 && echo IS-A-TTY; tty"
            ),
            containerd.env,
        )
        assert code == 0, out
        assert "IS-A-TTY" in out
        assert re.search(r"/dev/(pts/\d+|console)", out), out
        proc = containerd.ctr(
            "task", "exec", "--exec-id", "e2", cid, "sh", "-c", "echo plain; exit 4", check=False
        )
        assert proc.returncode == 4 and proc.stdout.strip() == "plain"
    finally:
        _kill_and_delete(containerd, cid)


def test_ctr_task_kill_and_delete_leave_nothing_behind(containerd: Containerd, image: str) -> None:
    cid = "shim-kill"
    containerd.ctr("run", "-d", "--runtime", RUNTIME, image, cid, "sleep", "600", timeout=UVM_TIMEOUT)
    assert len(qemu_pids(cid)) == 1
    assert os.path.exists(shim_socket(containerd, cid))
    assert mounts_under(bundle_path(containerd, cid)) != []
    containerd.ctr("task", "kill", "-s", "SIGKILL", cid)

    def stopped() -> bool:
        return bool(re.search(rf"^{cid}\s+\d+\s+STOPPED", containerd.ctr("task", "ls").stdout, re.M))

    assert wait_until(stopped, 60), containerd.ctr("task", "ls").stdout
    containerd.ctr("task", "delete", cid, timeout=60)
    containerd.ctr("container", "delete", cid)
    _assert_gone(containerd, cid)


def _stopped(c: Containerd, cid: str) -> bool:
    return bool(re.search(rf"^{cid}\s+\d+\s+STOPPED", c.ctr("task", "ls", check=False).stdout, re.M))


def test_uvm_death_fails_the_task_with_a_reason(containerd: Containerd, image: str) -> None:
    cid = "shim-vmdeath"
    containerd.ctr("run", "-d", "--runtime", RUNTIME, image, cid, "sleep", "600", timeout=UVM_TIMEOUT)
    try:
        (qemu,) = qemu_pids(cid)
        os.kill(qemu, signal.SIGKILL)
        assert wait_until(lambda: _stopped(containerd, cid), 60), containerd.ctr("task", "ls").stdout
        assert f"utility VM {cid} exited" in containerd.log_tail(400)
    finally:
        containerd.ctr("task", "delete", cid, check=False, timeout=60)
        containerd.ctr("container", "delete", cid, check=False)
    _assert_gone(containerd, cid)


@pytest.mark.parametrize("version", VERSIONS)
def test_containerd_restart_finds_the_shim_again(version: str) -> None:
    if boot_files() is None:
        pytest.fail("no UVM image (run `hcsshim uvm build`)")
    c = start_containerd(version=version)
    cid = "shim-restart"
    try:
        with tempfile.TemporaryDirectory() as d:
            image = import_busybox(c, d)
        c.ctr("run", "-d", "--runtime", RUNTIME, image, cid, "sleep", "600", timeout=UVM_TIMEOUT)
        before = c.ctr("task", "ls").stdout
        assert c.process is not None
        c.process.send_signal(signal.SIGTERM)
        c.process.wait(timeout=30)
        assert os.path.exists(shim_socket(c, cid)), "the shim must outlive containerd"
        with open(c.log_path, "ab") as log:
            c.process = subprocess.Popen(
                [c.containerd_binary, "--config", str(c.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=c.env,
                cwd=c.base,
                start_new_session=True,
            )
        assert wait_until(lambda: c.ctr("version", check=False).returncode == 0, 30)
        # Reloaded through <bundle>/address and Connect: same task, same pid, still running.
        assert wait_until(lambda: c.ctr("task", "ls").stdout == before, 30), c.ctr("task", "ls").stdout
        proc = c.ctr(
            "task", "exec", "--exec-id", "again", cid, "echo", "reconnected", check=False, timeout=120
        )
        assert proc.returncode == 0 and proc.stdout.strip() == "reconnected", proc.stderr
        c.ctr("task", "kill", "-s", "SIGKILL", cid)
        assert wait_until(lambda: _stopped(c, cid), 60)
        c.ctr("task", "delete", cid, timeout=60)
        c.ctr("container", "delete", cid)
        _assert_gone(c, cid)
    finally:
        stop_containerd(c)


def _shim_server_pid(cid: str) -> int:
    pid = shim_server_pid("hcsshim.cli.shim_runhcs_v1", cid)
    assert pid is not None, f"no shim server for {cid}"
    return pid


def test_killed_shim_is_cleaned_up_by_delete(containerd: Containerd, image: str) -> None:
    cid = "shim-crash"
    containerd.ctr("run", "-d", "--runtime", RUNTIME, image, cid, "sleep", "600", timeout=UVM_TIMEOUT)
    try:
        os.kill(_shim_server_pid(cid), signal.SIGKILL)
        # containerd notices the dead connection and runs `containerd-shim-runhcs-v1 delete`.
        assert wait_until(lambda: cid not in containerd.ctr("task", "ls", check=False).stdout, 60)
        _assert_gone(containerd, cid)
    finally:
        containerd.ctr("task", "delete", cid, check=False, timeout=60)
        containerd.ctr("container", "delete", cid, check=False)


class _Events:
    """``ctr events`` in the background; ``topics(cid)`` lists the topics seen for a container, in order."""

    def __init__(self, c: Containerd) -> None:
        self.proc = c.ctr_popen("events")
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        stream = self.proc.stdout
        threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True).start()
        time.sleep(1)  # `ctr events` subscribes asynchronously; the UVM boot gives it more time still

    def topics(self, cid: str) -> list[str]:
        pattern = re.compile(rf"(/tasks/\S+) .*\b{cid}\b")
        return [m.group(1) for line in list(self.lines) if (m := pattern.search(line))]

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_oom_killed_container_publishes_task_oom(containerd: Containerd, image: str) -> None:
    """A container over its memory limit in the UVM: the guest sees the cgroup's OOM kill and the shim
    publishes TaskOOM (after TaskStart, before the TaskExit it caused) that ``ctr events`` shows."""
    cid = "shim-oom"
    events = _Events(containerd)
    try:
        proc = containerd.ctr(
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--memory-limit",
            # Enough for runc's own init to start inside the cgroup; `tail /dev/zero` outgrows any limit.
            str(64 << 20),
            image,
            cid,
            "sh",
            "-c",
            "echo started; exec tail /dev/zero",  # tail buffers a line that never ends
            check=False,
            timeout=UVM_TIMEOUT,
        )
        assert proc.stdout.startswith("started"), proc.stdout + proc.stderr + containerd.log_tail()
        assert proc.returncode == 137, proc.stdout + proc.stderr + containerd.log_tail()
        assert wait_until(lambda: "/tasks/delete" in events.topics(cid), 30), events.lines
        seen = events.topics(cid)
        assert "/tasks/oom" in seen, events.lines
        assert seen.index("/tasks/start") < seen.index("/tasks/oom") < seen.index("/tasks/exit"), seen
    finally:
        events.stop()
    _assert_gone(containerd, cid)


def test_oom_kill_inside_a_running_container_publishes_task_oom(containerd: Containerd, image: str) -> None:
    """Only one process of the container is OOM-killed: TaskOOM comes while the task still runs (the
    guest's cgroup v2 memory.events watcher, not the check at exit)."""
    cid = "shim-oom-live"
    events = _Events(containerd)
    containerd.ctr(
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        str(64 << 20),
        image,
        cid,
        "sh",
        "-c",
        "tail /dev/zero; sleep 600",
        timeout=UVM_TIMEOUT,
    )
    try:
        assert wait_until(lambda: "/tasks/oom" in events.topics(cid), 60), events.lines
        assert _running(containerd, cid), containerd.ctr("task", "ls").stdout
        assert "/tasks/exit" not in events.topics(cid)
    finally:
        events.stop()
        _kill_and_delete(containerd, cid)
    _assert_gone(containerd, cid)


def _running(c: Containerd, cid: str) -> bool:
    return bool(re.search(rf"^{cid}\s+\d+\s+RUNNING", c.ctr("task", "ls", check=False).stdout, re.M))


TEMPLATES = "io.hcsshim.virtualmachine.templates"


def _qemu_argv(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0")]


@pytest.mark.parametrize("templates", ["true", "false"])
def test_a_pod_uvm_comes_from_its_template_unless_the_annotation_asks_for_a_cold_boot(
    containerd: Containerd, image: str, templates: str
) -> None:
    cid = f"shim-tpl-{templates}"
    annotation = ["--annotation", f"{TEMPLATES}={templates}"]
    containerd.ctr(
        "run", "-d", *annotation, "--runtime", RUNTIME, image, cid, "sleep", "600", timeout=UVM_TIMEOUT
    )
    try:
        [pid] = qemu_pids(cid)
        argv = _qemu_argv(pid)
        restored = "-incoming" in argv and any("readonly=on,rom=off" in a for a in argv)
        assert restored == (templates == "true"), argv
        # The task works the same either way: exec with and without a TTY, exit codes.
        code, out = run_in_pty(
            containerd.ctr_argv(
                "task", "exec", "-t", "--exec-id", "t1", cid, "sh", "-c", "test -t 0 && echo TTY"
            ),
            containerd.env,
        )
        assert code == 0 and "TTY" in out, out
        proc = containerd.ctr(
            "task", "exec", "--exec-id", "p1", cid, "sh", "-c", "echo plain; exit 5", check=False
        )
        assert (proc.returncode, proc.stdout.strip()) == (5, "plain")
    finally:
        _kill_and_delete(containerd, cid)
    _assert_gone(containerd, cid)


def test_an_invalid_templates_annotation_fails_the_task_naming_it(containerd: Containerd, image: str) -> None:
    cid = "shim-tpl-bad"
    proc = containerd.ctr(
        "run", "--rm", "--annotation", f"{TEMPLATES}=maybe", "--runtime", RUNTIME, image, cid, "true",
        check=False, timeout=UVM_TIMEOUT,
    )  # fmt: skip
    assert proc.returncode != 0
    assert TEMPLATES in proc.stderr and "maybe" in proc.stderr, proc.stderr
    assert not qemu_pids(cid)
    containerd.ctr("container", "delete", cid, check=False)


def test_the_shim_and_its_guest_agent_watch_their_event_loops(containerd: Containerd, image: str) -> None:
    # The suite fails a test on any slow-callback report from a shim or a guest agent; that only means
    # something if both really watch. The shim says so in its log (containerd's), the guest agent on
    # its console, with the thresholds tests/support/loop_watch.py set.
    cid = "shim-loopwatch"
    containerd.ctr("run", "-d", "--runtime", RUNTIME, image, cid, "sleep", "600", timeout=UVM_TIMEOUT)
    try:
        log = containerd.log_path.read_text(errors="replace")
        installed = [line for line in log.splitlines() if loopwatch.INSTALLED in line]
        assert installed and all(f"threshold_ms={SLOW_CALLBACK_MS}" in line for line in installed), installed
        [pid] = qemu_pids(cid)
        assert any(f"hcsshim.slow_callback_ms={GUEST_SLOW_CALLBACK_MS}" in a for a in _qemu_argv(pid))
    finally:
        _kill_and_delete(containerd, cid)
    _assert_gone(containerd, cid)
