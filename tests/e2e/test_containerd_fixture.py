"""The private containerd helper: it runs real runc tasks and leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.containerd import available, busybox_rootfs, running_containerd, shim_pids

pytestmark = [pytest.mark.e2e, pytest.mark.root]


def test_runc_task_runs_and_teardown_leaves_no_processes_mounts_or_files() -> None:
    reason = available()
    if reason is not None:
        pytest.skip(reason)
    with running_containerd() as c:
        base = c.base
        assert len(c.ttrpc_address.encode()) < 100
        rootfs = busybox_rootfs(base / "bb")
        out = c.ctr("run", "--rm", "--rootfs", str(rootfs), "fixture-echo", "/bin/echo", "hello-from-runc")
        assert "hello-from-runc" in out.stdout
        c.ctr("run", "-d", "--rootfs", str(rootfs), "fixture-sleep", "/bin/sleep", "1000")
        assert "RUNNING" in c.ctr("tasks", "ls").stdout
        shims = shim_pids(c)
        assert shims, "the runc shim should be running"
    assert not base.exists()
    for pid in shims:
        stat = Path(f"/proc/{pid}/stat")
        # Gone, or a zombie waiting for its (re)parent to reap it.
        assert not stat.exists() or stat.read_text().split()[2] == "Z"
    with open("/proc/self/mountinfo") as f:
        assert str(base) not in f.read()
    assert _processes_with_argv(b"/bin/sleep\x001000\x00") == []


def _processes_with_argv(argv: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes() == argv:
                    found.append(int(entry))
            except OSError:
                pass
    return found
