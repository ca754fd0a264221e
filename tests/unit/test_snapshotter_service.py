"""The lcow snapshotter served over a real unix-socket gRPC server, driven as containerd's snapshot
proxy drives it (backend keys ``<ns>/<id>/<key>``, extract- keys for unpack)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import stat
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest

from hcsshim.layers import lcow_mount, vhd
from hcsshim.layers.ext4 import Ext4Error
from hcsshim.snapshotter import core
from hcsshim.snapshotter.core import Snapshotter
from hcsshim.snapshotter.service import serve
from tests.support.snapshots_client import SnapshotsClient

CHAIN1 = "sha256:" + "1" * 64
CHAIN2 = "sha256:" + "2" * 64
REF = core.LABEL_SNAPSHOT_REF
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, loop mounts)")


@asynccontextmanager
async def served(root: Path, **kw: Any) -> AsyncIterator[tuple[SnapshotsClient, Snapshotter]]:
    sn = await asyncio.to_thread(lambda: Snapshotter(str(root), scratch_size_gb=1, **kw))
    sock = str(root.parent / f"{root.name}.sock")
    server = await serve(sn, sock)
    client = SnapshotsClient(sock)
    try:
        yield client, sn
    finally:
        await client.close()
        await server.stop(1)
        await asyncio.to_thread(sn.close)
        assert not os.path.exists(sock)  # grpc removes its socket on stop


def run(root: Path, body: Callable[[SnapshotsClient, Snapshotter], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with served(root, **kw) as (client, sn):
            await body(client, sn)

    asyncio.run(main())


def upper(mounts: list[Any]) -> str:
    assert len(mounts) == 1 and mounts[0].type == "overlay", mounts
    return str(next(o[len("upperdir=") :] for o in mounts[0].options if o.startswith("upperdir=")))


async def unpack_layer(
    client: SnapshotsClient, ns: str, chain: str, parent: str, fill: Callable[[Path], None]
) -> str:
    """What containerd's unpacker does: Prepare(extract-…), the differ writes the upperdir, Commit."""
    key = f"{ns}/{abs(hash(chain)) % 1000}/extract-1 {chain}"
    mounts = await client.prepare(key, parent, {REF: chain})
    await asyncio.to_thread(fill, Path(upper(mounts)))
    name = f"{ns}/{abs(hash(chain)) % 1000 + 1}/{chain}"
    await client.commit(name, key, {REF: chain})
    return name


def base_fill(d: Path) -> None:
    (d / "etc").mkdir()
    (d / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (d / "keep").write_text("base\n")
    (d / "gone").write_text("whited out above\n")
    (d / "dir").mkdir()
    (d / "dir" / "old").write_text("hidden by an opaque dir\n")


def upper_fill(d: Path) -> None:
    (d / "top").write_text("from the upper layer\n")
    os.mknod(d / "gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    (d / "dir").mkdir()
    os.setxattr(d / "dir", "trusted.overlay.opaque", b"y")


async def debugfs(image: str, cmd: str) -> str:
    argv = ["debugfs", "-R", cmd, image]
    proc = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, check=True)
    return proc.stdout


@needs_root
def test_unpack_commit_writes_a_layer_vhd_with_overlay_whiteouts(tmp_path: Path) -> None:
    async def body(client: SnapshotsClient, sn: Snapshotter) -> None:
        base = await unpack_layer(client, "default", CHAIN1, "", base_fill)
        top = await unpack_layer(client, "default", CHAIN2, base, upper_fill)
        info = await client.stat(top)
        assert info.kind == 3 and info.parent == base and info.labels[REF] == CHAIN2
        layer = tmp_path / "sn" / "layers" / CHAIN2.split(":")[1] / "layer.vhd"
        assert vhd.is_fixed_vhd(str(layer))
        out = await debugfs(str(layer), "stat /gone")
        assert "character special" in out and "Device major/minor number: 00:00" in out
        assert 'trusted.overlay.opaque (1) = "y"' in await debugfs(str(layer), "ea_list /dir")
        assert "top" in await debugfs(str(layer), "ls /")
        # The unpack directory is gone once the layer exists; nothing is left in tmp/.
        assert os.listdir(tmp_path / "sn" / "snapshots") == []
        assert os.listdir(tmp_path / "sn" / "tmp") == []
        size, inodes = await client.usage(top)
        assert size > 0 and inodes >= 3

    run(tmp_path / "sn", body)


@needs_root
def test_container_snapshot_is_a_scratch_vhd_plus_lcow_layer_mount_that_also_mounts_on_the_host(
    tmp_path: Path,
) -> None:
    async def body(client: SnapshotsClient, sn: Snapshotter) -> None:
        base = await unpack_layer(client, "default", CHAIN1, "", base_fill)
        top = await unpack_layer(client, "default", CHAIN2, base, upper_fill)
        mounts = await client.prepare("default/9/ctr1", top)
        assert [m.type for m in mounts] == ["overlay", lcow_mount.TYPE]
        parsed = lcow_mount.parse(mounts[1])
        layers = tmp_path / "sn" / "layers"
        assert parsed.layers == (
            str(layers / CHAIN2.split(":")[1] / "layer.vhd"),
            str(layers / CHAIN1.split(":")[1] / "layer.vhd"),
        )
        st = os.stat(parsed.scratch)
        assert vhd.is_fixed_vhd(parsed.scratch) and st.st_blocks * 512 < st.st_size // 10  # sparse
        assert mounts[1].options[0] == "rw"
        # Mount the list as containerd's mount.All does for CRI's /etc/passwd lookup: in order, at one
        # target, the unknown options of the second going to mount(2)'s data.
        await asyncio.to_thread(check_host_mount, mounts, tmp_path / "tmpmount")
        assert (await client.mounts("default/9/ctr1"))[1].source == mounts[1].source
        await client.remove("default/9/ctr1")
        assert not os.path.exists(os.path.dirname(parsed.scratch))

    run(tmp_path / "sn", body)


def check_host_mount(mounts: list[Any], target: Path) -> None:
    target.mkdir()
    try:
        for m in mounts:
            containerd_mount(m, str(target))
        assert (target / "etc" / "passwd").read_text().startswith("root:")
        assert (target / "top").read_text() == "from the upper layer\n"
        assert not (target / "gone").exists() and (target / "keep").exists()
        assert os.listdir(target / "dir") == []
        with pytest.raises(OSError):
            (target / "new").write_text("x")  # read-only: nothing lands on the host
    finally:
        while subprocess.run(["umount", str(target)], capture_output=True).returncode == 0:
            pass


_FLAGS = {"ro": 1, "bind": 4096, "rbind": 4096 | 16384, "remount": 32}


def containerd_mount(m: Any, target: str) -> None:
    """containerd 1.6's mount.Mount on Linux, minus loop/propagation: known options become flags, the
    rest data; a read-only bind is remounted read-only afterwards."""
    flags = 0
    data: list[str] = []
    for o in m.options:
        if o == "rw":
            flags &= ~1
        elif o in _FLAGS:
            flags |= _FLAGS[o]
        else:
            data.append(o)
    libc = ctypes.CDLL(None, use_errno=True)
    src, dst, fstype, data_s = m.source.encode(), target.encode(), m.type.encode(), ",".join(data).encode()
    if (not flags & 32 or data) and libc.mount(src, dst, fstype, flags, data_s):
        e = ctypes.get_errno()
        raise OSError(e, f"mount {m.type} {m.source}: {os.strerror(e)}")
    if flags & (4096 | 1) == 4096 | 1 and libc.mount(b"", target.encode(), b"", flags | 32, b""):
        e = ctypes.get_errno()
        raise OSError(e, f"remount ro {target}: {os.strerror(e)}")


@needs_root
def test_layers_are_shared_across_namespaces_and_removed_with_the_last_snapshot(tmp_path: Path) -> None:
    async def body(client: SnapshotsClient, sn: Snapshotter) -> None:
        a = await unpack_layer(client, "ns-a", CHAIN1, "", base_fill)
        # Another namespace's unpack of the same chain: AlreadyExists, and the metadata layer's
        # filter finds the committed snapshot to adopt (containerd's remote-snapshot protocol).
        with pytest.raises(grpc.aio.AioRpcError) as already:
            await client.prepare(f"ns-b/7/extract-2 {CHAIN1}", "", {REF: CHAIN1})
        assert already.value.code() == grpc.StatusCode.ALREADY_EXISTS
        found = await client.list([f'labels."{REF}"=={CHAIN1},parent==""'])
        assert [i.name for i in found] == [a]
        # Without the ref label (another unpack path) the commit still reuses the layer file.
        key = "ns-b/8/extract-3 x"
        fill = await client.prepare(key, "")
        (Path(upper(fill)) / "other").mkdir()
        b = f"ns-b/9/{CHAIN1}"
        await client.commit(b, key)
        layers = tmp_path / "sn" / "layers"
        assert os.listdir(layers) == [CHAIN1.split(":")[1]]
        # The second unpack reused the first layer rather than converting again.
        assert "keep" in await debugfs(str(layers / CHAIN1.split(":")[1] / "layer.vhd"), "ls /")
        await client.prepare("ns-a/50/c", a)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await client.remove(a)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await client.remove("ns-a/50/c")
        await client.remove(a)
        assert os.listdir(layers) == [CHAIN1.split(":")[1]]
        await client.remove(b)
        assert os.listdir(layers) == []

    run(tmp_path / "sn", body)


@needs_root
def test_errors_carry_containerd_status_codes(tmp_path: Path) -> None:
    async def body(client: SnapshotsClient, sn: Snapshotter) -> None:
        base = await unpack_layer(client, "default", CHAIN1, "", base_fill)

        async def code(call: Awaitable[Any]) -> Any:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            return e.value.code(), e.value.details()

        assert (await code(client.stat("default/1/nope")))[0] == grpc.StatusCode.NOT_FOUND
        assert (await code(client.prepare(base)))[0] == grpc.StatusCode.ALREADY_EXISTS
        c, msg = await code(client.prepare("default/3/x", "default/1/missing"))
        assert c == grpc.StatusCode.NOT_FOUND and "missing" in msg
        await client.prepare("default/4/active", base)
        c, msg = await code(client.prepare("default/5/y", "default/4/active"))
        assert c == grpc.StatusCode.FAILED_PRECONDITION and "not committed" in msg
        c, msg = await code(client.commit("default/6/z", "default/4/active"))
        assert c == grpc.StatusCode.UNIMPLEMENTED and "scratch" in msg
        c, msg = await code(client.update(base, {}, ["parent"]))
        assert c == grpc.StatusCode.INVALID_ARGUMENT and "parent" in msg
        c, msg = await code(client.mounts(base))
        assert c == grpc.StatusCode.FAILED_PRECONDITION
        c, msg = await code(client.list(["bogus==1"]))
        assert c == grpc.StatusCode.INVALID_ARGUMENT and "bogus" in msg
        c, msg = await code(client.prepare("default/7/c", base, {core.LABEL_ROOTFS_SIZE_GB: "zero"}))
        assert c == grpc.StatusCode.INVALID_ARGUMENT and core.LABEL_ROOTFS_SIZE_GB in msg
        assert not os.path.exists(tmp_path / "sn" / "snapshots" / "7")

    run(tmp_path / "sn", body)


@needs_root
def test_update_list_filters_and_state_survive_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "sn"
    names: list[str] = []

    async def first(client: SnapshotsClient, sn: Snapshotter) -> None:
        base = await unpack_layer(client, "default", CHAIN1, "", base_fill)
        top = await unpack_layer(client, "default", CHAIN2, base, upper_fill)
        names.extend([base, top])
        await client.prepare("default/20/c1", top, {"containerd.io/snapshot/x": "1"})
        info = await client.update(top, {"a": "1", "b": "2"}, ["labels.a", "labels.b"])
        assert info.labels == {REF: CHAIN2, "a": "1", "b": "2"}
        info = await client.update(top, {"a": "9"}, ["labels.a", "labels.b"])
        assert info.labels == {REF: CHAIN2, "a": "9"}
        assert info.updated_at.ToNanoseconds() > info.created_at.ToNanoseconds()

    async def second(client: SnapshotsClient, sn: Snapshotter) -> None:
        base, top = names
        everything = {i.name: i.kind for i in await client.list()}
        assert everything == {base: 3, top: 3, "default/20/c1": 2}
        found = await client.list([f'labels."{REF}"=={CHAIN2},parent=={base}'])
        assert [i.name for i in found] == [top]
        found = await client.list(["kind==active", f"name=={base}"])
        assert sorted(i.name for i in found) == sorted([base, "default/20/c1"])
        assert (await client.stat(top)).labels["a"] == "9"
        mounts = await client.mounts("default/20/c1")
        assert lcow_mount.parse(mounts[1]).layers[0].endswith(CHAIN2.split(":")[1] + "/layer.vhd")

    run(root, first)
    run(root, second)


@needs_root
def test_a_failed_or_crashed_commit_leaves_no_half_written_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "sn"

    def broken(src: str, dst: str, **kw: Any) -> int:
        with open(dst, "wb") as f:
            f.write(b"partial")
        raise Ext4Error("disk full (simulated)")

    async def failing(client: SnapshotsClient, sn: Snapshotter) -> None:
        key = f"default/1/extract-1 {CHAIN1}"
        mounts = await client.prepare(key, "", {REF: CHAIN1})
        await asyncio.to_thread(base_fill, Path(upper(mounts)))
        monkeypatch.setattr(core, "make_ext4", broken)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await client.commit(f"default/2/{CHAIN1}", key)
        assert e.value.code() == grpc.StatusCode.INTERNAL and "disk full" in e.value.details()
        assert os.listdir(root / "layers") == [] and os.listdir(root / "tmp") == []
        assert (await client.stat(key)).kind == 2  # still active: containerd removes or retries it
        monkeypatch.undo()

    run(root, failing)
    # A crash after the conversion, before the row changed: a finished layer directory nobody
    # references and a half-written one under tmp/. Start-up removes both.
    (root / "layers" / ("3" * 64)).mkdir()
    (root / "layers" / ("3" * 64) / "layer.vhd").write_bytes(b"orphan")
    (root / "tmp" / "commit-crashed").mkdir()
    (root / "tmp" / "commit-crashed" / "layer.vhd").write_bytes(b"half")

    async def after(client: SnapshotsClient, sn: Snapshotter) -> None:
        assert os.listdir(root / "layers") == [] and os.listdir(root / "tmp") == []
        key = f"default/1/extract-1 {CHAIN1}"
        await client.commit(f"default/2/{CHAIN1}", key)
        assert vhd.is_fixed_vhd(str(root / "layers" / CHAIN1.split(":")[1] / "layer.vhd"))

    run(root, after)


def test_lcow_mount_parse_rejects_bad_options_naming_them(tmp_path: Path) -> None:
    class M:
        def __init__(self, source: str, options: list[str]) -> None:
            self.type, self.source, self.options = lcow_mount.TYPE, source, options

    with pytest.raises(lcow_mount.LcowMountError, match="not JSON"):
        lcow_mount.parse(M(str(tmp_path), ["rw", "parentLayerPaths=[oops"]))
    with pytest.raises(lcow_mount.LcowMountError, match="no scratch disk"):
        lcow_mount.parse(M(str(tmp_path), ["rw", "parentLayerPaths=[]"]))
    (tmp_path / "sandbox.vhd").write_bytes(b"")
    with pytest.raises(lcow_mount.LcowMountError, match=r"layer .*/p/layer\.vhd does not exist"):
        lcow_mount.parse(M(str(tmp_path), lcow_mount.options(True, [str(tmp_path / "p")])))


@needs_root
def test_a_parent_that_cannot_be_mounted_fails_prepare_naming_the_layer_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    async def body(client: SnapshotsClient, sn: Snapshotter) -> None:
        base = await unpack_layer(client, "default", CHAIN1, "", base_fill)
        layer = tmp_path / "sn" / "layers" / CHAIN1.split(":")[1] / "layer.vhd"
        os.chmod(layer, 0o644)
        layer.write_bytes(b"\0" * 8192)  # no ext4 any more
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await client.prepare("default/5/ctr", base)
        assert e.value.code() == grpc.StatusCode.INTERNAL and CHAIN1.split(":")[1] in e.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await client.stat("default/5/ctr")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert os.listdir(tmp_path / "sn" / "snapshots") == []

    run(tmp_path / "sn", body)


@needs_root
def test_daemon_serves_on_its_socket_and_sigterm_removes_socket_and_mounts(tmp_path: Path) -> None:
    from tests.support.lcow import running_lcow_snapshotter

    base = tmp_path / "d"

    async def use(address: str) -> None:
        client = SnapshotsClient(address)
        try:
            base = await unpack_layer(client, "default", CHAIN1, "", base_fill)
            mounts = await client.prepare("default/3/c", base)
            assert lcow_mount.find(mounts) is not None
        finally:
            await client.close()

    with running_lcow_snapshotter(base) as sn:
        asyncio.run(use(sn.address))
        layer_mnt = next((sn.root / "layers").glob("*/mnt"))
        assert subprocess.run(["mountpoint", "-q", str(layer_mnt)]).returncode == 0
    assert sn.process.returncode == 0
    assert not os.path.exists(sn.address)
    assert subprocess.run(["mountpoint", "-q", str(layer_mnt)]).returncode != 0
