"""hcs.cleanup_orphan: what a VM left behind when its creator died goes, through the hcs interface
(`shim delete` calls it via shim.manager.kill_uvm). A python process whose argv names the state
directory stands in for a QEMU that outlived its shim (a fake QEMU: nothing boots)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hcsshim import hcs
from hcsshim.hcs.qemu.system import state_dir_for
from hcsshim.shim import manager


def _fake_orphan_qemu(state_dir: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-chardev", state_dir])


def test_shim_delete_kills_the_fake_orphan_qemu_and_removes_its_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HCSSHIM_RUN_DIR", str(tmp_path))
    state = state_dir_for("pod-x@vm")
    assert state.startswith(str(tmp_path / "qemu"))
    os.makedirs(os.path.join(state, "plan9"))
    Path(state, "qmp.sock").write_text("")
    orphan = _fake_orphan_qemu(state)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path)])
    try:
        manager.kill_uvm("pod-x")
        assert orphan.wait(timeout=10) == -9
        assert not os.path.exists(state)
        assert bystander.poll() is None  # argv without the state dir: not ours
    finally:
        for p in (orphan, bystander):
            if p.poll() is None:
                p.kill()
            p.wait()


def test_cleanup_orphan_with_nothing_left_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HCSSHIM_RUN_DIR", str(tmp_path))
    hcs.cleanup_orphan("gone@vm")
    assert not (tmp_path / "qemu").exists()


def test_cleanup_orphan_on_another_backend_says_it_cannot() -> None:
    with pytest.raises(hcs.ErrNotSupported, match="the windows backend cannot clean up orphans"):
        hcs.cleanup_orphan("x@vm", backend="windows")
