"""Reproducible layer images: the same tar gives the same bytes wherever it is converted."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from hcsshim.layers import tar2ext4


def test_conversion_is_reproducible_whatever_the_tree_file_system_and_time(tmp_path: Path) -> None:
    # Same tar, two temp dirs (one on /dev/shm where it exists), a second apart: the same bytes,
    # footer included; ctime and atime are the mtime, whiteouts and implicit parents have fixed times.
    import io as _io
    import subprocess as _sp
    import time as _time

    tar = tmp_path / "layer.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("etc/a", b"a"), ("etc/b", b"bb"), ("implicit/dir/f", b"f")):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 1_700_000_000
            tf.addfile(ti, _io.BytesIO(data))
        wh = tarfile.TarInfo("etc/.wh.gone")
        wh.mtime = 1_700_000_000
        tf.addfile(wh)
    opts = tar2ext4.Options(append_vhd_footer=True)
    first = tmp_path / "one.vhd"
    second = tmp_path / "two.vhd"
    tar2ext4.convert(str(tar), str(first), opts)
    _time.sleep(1.1)
    other_tmp = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)
    tar2ext4.convert(str(tar), str(second), opts, tmp_dir=other_tmp)
    assert first.read_bytes() == second.read_bytes()
    stat_out = _sp.run(
        ["debugfs", "-R", "stat /etc/a", str(first)], capture_output=True, text=True, check=True
    ).stdout
    assert "ctime: 0x6553f100" in stat_out and "atime: 0x6553f100" in stat_out


def test_every_inode_gets_its_mtime_as_ctime_and_atime(tmp_path: Path) -> None:
    # ext4.inode_times predicts mke2fs's inode numbers (sorted walk, hard links shared, directories
    # before their children); a wrong prediction would leave some inode with the unpack's clock.
    import io as _io
    import subprocess as _sp

    from tests.unit.test_layers import sample_layer

    out = tmp_path / "layer.vhd"
    tar2ext4.convert(_io.BytesIO(sample_layer()), str(out), tar2ext4.Options(append_vhd_footer=True))
    used = _sp.run(["debugfs", "-R", "stats", str(out)], capture_output=True, text=True, check=True).stdout
    inodes = int(used.split("Inode count:")[1].split()[0])
    free = int(used.split("Free inodes:")[1].split()[0])
    checked = 0
    for ino in range(12, 12 + inodes - free - 11 + 1):
        st = _sp.run(["debugfs", "-R", f"stat <{ino}>", str(out)], capture_output=True, text=True).stdout
        if "Links: 0" in st or "ctime:" not in st:
            continue
        times = {k: st.split(f"{k}:")[1].split()[0] for k in ("ctime", "atime", "mtime")}
        assert times["ctime"] == times["mtime"] == times["atime"], (ino, times)
        checked += 1
    assert checked >= 8
