"""The service VM's tools disk, built from this host: what it carries, cached by content."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hcsshim.servicevm import tools


def _ls(image: str, path: str) -> set[str]:
    out = subprocess.run(["debugfs", "-R", f"ls -p {path}", image], capture_output=True, text=True).stdout
    return {line.split("/")[5] for line in out.splitlines() if line.count("/") >= 6} - {".", ".."}


def test_tools_disk_carries_e2fsprogs_the_stdlib_and_the_layers_code_and_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tools.ensure_tools_disk(str(tmp_path))
    assert os.path.basename(disk.path) == f"tools-{disk.key}.vhd"
    assert {"mkfs.ext4", "debugfs"} <= _ls(disk.path, "/bin")
    assert {"libext2fs.so.2", "libcom_err.so.2"} <= _ls(disk.path, "/lib")
    assert not any(n.startswith(("libc.so", "ld-linux")) for n in _ls(disk.path, "/lib"))  # the guest's own
    assert {"tarfile.py", "tempfile.py", "hcsshim"} <= _ls(disk.path, "/python")
    assert {"tar2ext4.py", "ext4.py", "vhd.py"} <= _ls(disk.path, "/python/hcsshim/layers")
    assert tools.GUEST_SCRIPT in _ls(disk.path, "/")
    assert "mke2fs.conf" in _ls(disk.path, "/etc")
    before = os.stat(disk.path).st_mtime_ns
    again = tools.ensure_tools_disk(str(tmp_path))
    assert again == disk and os.stat(disk.path).st_mtime_ns == before  # not rebuilt

    # Other content (here: one more file) is another key; the old disk is pruned.
    real = tools._inputs
    extra = tmp_path / "extra.txt"
    extra.write_text("x")
    monkeypatch.setattr(tools, "_inputs", lambda: {**real(), "extra.txt": str(extra)})
    changed = tools.ensure_tools_disk(str(tmp_path))
    assert changed.key != disk.key and not os.path.exists(disk.path)
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".vhd")) == [os.path.basename(changed.path)]
