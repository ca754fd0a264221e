"""tar2ext4 unpacking (whiteouts, owners, modes, xattrs, links), ext4 output, and the layer cache."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
import time
from pathlib import Path

import pytest

from hcsshim.cli import tar2ext4 as tar2ext4_cli
from hcsshim.layers import cache, tar2ext4, vhd

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown, mknod and trusted.* xattrs need root")


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mtime = 1_600_000_000
    ti.mode = 0o644 if kind != tarfile.DIRTYPE else 0o755
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def _file(name: str, data: bytes, **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.REGTYPE, size=len(data), **kw), data


def sample_layer() -> bytes:
    setuid = _file("bin/tool", b"#!/bin/sh\n", mode=0o4755)
    xattr_file = _file("etc/conf", b"k=v\n", pax_headers={"SCHILY.xattr.user.note": "hello"})
    return _tar(
        [
            (_info("./", tarfile.DIRTYPE), None),
            (_info("bin", tarfile.DIRTYPE), None),
            setuid,
            (_info("bin/tool-link", tarfile.LNKTYPE, linkname="bin/tool"), None),
            (_info("bin/sh", tarfile.SYMTYPE, linkname="tool"), None),
            (_info("etc", tarfile.DIRTYPE), None),
            xattr_file,
            _file("home/user/.profile", b"x", uid=1000, gid=1001),
            (_info("home/user/.wh.gone", size=0), b""),
            (_info("var", tarfile.DIRTYPE), None),
            (_info("var/.wh..wh..opq", size=0), b""),
            (_info("dev", tarfile.DIRTYPE), None),
            (_info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), None),
            (_info("dev/fifo", tarfile.FIFOTYPE), None),
        ]
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a/b", "a/b"), ("./a/./b/", "a/b"), ("/abs/x", "abs/x"), ("./", ""), ("a/../b", "b")],
)
def test_clean_name(name: str, expected: str) -> None:
    assert tar2ext4.clean_name(name) == expected


@pytest.mark.parametrize(("name", "expected"), [("../x", "x"), ("a/../../x", "x"), ("/../x/..", "")])
def test_clean_name_clamps_dotdot_at_the_layer_root(name: str, expected: str) -> None:
    # Like upstream (path.Clean("/" + name)): `..` never leaves the layer.
    assert tar2ext4.clean_name(name) == expected


def test_clean_name_backslash() -> None:
    assert tar2ext4.clean_name("a\\b", convert_backslash=True) == "a/b"


@needs_root
def test_unpack_preserves_metadata_and_converts_whiteouts(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    u = tar2ext4.unpack(io.BytesIO(sample_layer()), str(root))
    assert (u.whiteouts, u.opaque) == (1, 1)
    tool = os.lstat(root / "bin/tool")
    assert stat.S_IMODE(tool.st_mode) == 0o4755  # setuid survives the chown
    assert os.lstat(root / "bin/tool-link").st_ino == tool.st_ino
    assert os.readlink(root / "bin/sh") == "tool"
    assert os.getxattr(root / "etc/conf", "user.note") == b"hello"
    prof = os.lstat(root / "home/user/.profile")
    assert (prof.st_uid, prof.st_gid) == (1000, 1001)
    wh = os.lstat(root / "home/user/gone")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == os.makedev(0, 0)
    assert not (root / "home/user/.wh.gone").exists()
    assert os.getxattr(root / "var", "trusted.overlay.opaque") == b"y"
    assert not (root / "var/.wh..wh..opq").exists()
    null = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(root / "dev/fifo").st_mode)
    assert int(os.lstat(root / "bin").st_mtime) == 1_600_000_000


@needs_root
def test_unpack_without_whiteout_conversion_keeps_files(tmp_path: Path) -> None:
    tar2ext4.unpack(io.BytesIO(sample_layer()), str(tmp_path), tar2ext4.Options(convert_whiteouts=False))
    assert (tmp_path / "home/user/.wh.gone").is_file()


@needs_root
@pytest.mark.parametrize(
    "entries",
    [
        [(_info("link", tarfile.SYMTYPE, linkname="/etc"), None), _file("link/passwd", b"x")],
        [(_info("hard", tarfile.LNKTYPE, linkname="missing"), None)],
    ],
    ids=["through-symlink", "dangling-hardlink"],
)
def test_unsafe_layers_fail_and_leave_nothing(
    tmp_path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]
) -> None:
    out = tmp_path / "out" / "layer.vhd"
    out.parent.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(tar2ext4.LayerError):
        tar2ext4.convert(io.BytesIO(_tar(entries)), str(out), tmp_dir=str(work))
    assert os.listdir(out.parent) == []
    assert os.listdir(work) == []


@needs_root
def test_convert_writes_ext4_with_vhd_footer(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "layer.vhd"
    r = tar2ext4.convert(
        io.BytesIO(sample_layer()), str(out), tar2ext4.Options(append_vhd_footer=True), tmp_dir=str(work)
    )
    data = out.read_bytes()
    assert len(data) == r.size + 512
    assert data[1024 + 56 : 1024 + 58] == b"\x53\xef"  # ext4 superblock magic
    footer = vhd.read_footer_from_path(str(out))
    assert footer.current_size == r.size
    assert os.listdir(work) == []  # the unpacked tree is gone


@needs_root
def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tar_path = tmp_path / "l.tar"
    tar_path.write_bytes(sample_layer())
    out = tmp_path / "l.vhd"
    assert tar2ext4_cli.main(["-i", str(tar_path), "-o", str(out), "-vhd", "-inline"]) == 0
    assert vhd.is_fixed_vhd(str(out))
    assert "1 whiteouts" in capsys.readouterr().err
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 4096)
    assert tar2ext4_cli.main(["-o", str(raw), "-only-vhd"]) == 0
    assert vhd.is_fixed_vhd(str(raw))
    assert tar2ext4_cli.main(["-i", str(tmp_path / "missing.tar"), "-o", str(tmp_path / "x")]) == 1


def test_cache_digest_validation(tmp_path: Path) -> None:
    c = cache.LayerCache(str(tmp_path))
    with pytest.raises(cache.CacheError):
        c.path_for("sha256:../../etc")
    with pytest.raises(cache.CacheError):
        c.get("md5:abc")
    assert c.digests() == []


def test_cache_with_fake_producer_runs_once_under_concurrency(tmp_path: Path) -> None:
    c = cache.LayerCache(str(tmp_path))
    digest = "sha256:" + "ab" * 32
    calls: list[int] = []

    def produce(tmp: str) -> None:
        calls.append(1)
        time.sleep(0.2)  # long enough that every thread arrives while the first still produces
        with open(tmp, "wb") as f:
            f.write(b"layer")

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(c.ensure(digest, produce))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1
    assert Path(results[0]).read_bytes() == b"layer"
    assert c.digests() == [digest]
    assert digest in c
    assert os.listdir(tmp_path / "tmp") == []


def test_cache_with_fake_producer_failure_leaves_nothing(tmp_path: Path) -> None:
    c = cache.LayerCache(str(tmp_path))
    digest = "sha256:" + "cd" * 32

    def produce(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        c.ensure(digest, produce)
    assert c.get(digest) is None
    assert os.listdir(tmp_path / "tmp") == []
    assert not c.remove(digest)


@needs_root
def test_cache_import_tar(tmp_path: Path) -> None:
    tar_path = tmp_path / "l.tar"
    tar_path.write_bytes(sample_layer())
    c = cache.LayerCache(str(tmp_path / "cache"))
    digest = cache.file_digest(str(tar_path))
    path = c.import_tar(str(tar_path), digest)
    assert path == c.path_for(digest)
    assert vhd.is_fixed_vhd(path)
    assert c.import_tar(str(tar_path)) == path  # cached
    with pytest.raises(cache.CacheError, match="expected"):
        c.import_tar(str(tar_path), "sha256:" + "0" * 64)
    assert c.remove(digest)
    assert c.get(digest) is None
