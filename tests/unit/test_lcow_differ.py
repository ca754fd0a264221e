"""The lcow differ: the blob codec (property tests), and Apply/Diff served over a real unix-socket
gRPC server, reading layer blobs from a fake containerd content store (a real gRPC server too)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcsshim.api.containerd.services.content.v1 import content_pb2
from hcsshim.api.containerd.services.diff.v1 import diff_pb2
from hcsshim.api.containerd.types import descriptor_pb2, mount_pb2
from hcsshim.layers import blob, lcow_mount, vhd
from hcsshim.snapshotter import core
from hcsshim.snapshotter.content import NAMESPACE_HEADER, ContentClient
from hcsshim.snapshotter.core import Snapshotter
from hcsshim.snapshotter.differ import Differ
from hcsshim.snapshotter.diffservice import DiffService
from hcsshim.snapshotter.errors import Kind as ErrKind
from hcsshim.snapshotter.errors import SnapshotError
from hcsshim.snapshotter.service import serve
from tests.support.snapshots_client import SnapshotsClient

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod in tar2ext4)")
CHAIN = "sha256:" + "a" * 64
NS = "k8s.io"


# ---- the codec -----------------------------------------------------------------------------------


def _chunks(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    prev = 0
    for p in [*points, len(data)]:
        yield data[prev:p]
        prev = p


def _sink_all(compression: blob.Compression, data: bytes, cuts: list[int], tmp: Path) -> tuple[bytes, Any]:
    path = tmp / f"out-{os.getpid()}-{hashlib.sha256(data).hexdigest()[:8]}-{len(cuts)}"
    with open(path, "w+b") as out:
        sink = blob.TarSink(compression, out)
        for c in _chunks(data, cuts):
            sink.write(c)
        digests = sink.close()
    result = path.read_bytes()
    path.unlink()
    return result, digests


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@settings(max_examples=80, deadline=None)
@given(
    members=st.lists(st.binary(max_size=4096), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12),
    level=st.integers(min_value=0, max_value=9),
)
def test_gzip_sink_decodes_any_members_in_any_chunks(
    members: list[bytes], cuts: list[int], level: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Several gzip members back to back are one stream (what Go's reader and `cat a.gz b.gz` do).
    compressed = b"".join(gzip.compress(m, compresslevel=level) for m in members)
    out, d = _sink_all(blob.Compression.GZIP, compressed, cuts, tmp_path_factory.mktemp("gz"))
    plain = b"".join(members)
    assert out == plain
    assert (d.blob_digest, d.blob_size) == (_sha(compressed), len(compressed))
    assert (d.diff_digest, d.diff_size) == (_sha(plain), len(plain))


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=8192), cuts=st.lists(st.integers(min_value=0, max_value=8192), max_size=8))
def test_uncompressed_sink_passes_bytes_through(
    data: bytes, cuts: list[int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    out, d = _sink_all(blob.Compression.NONE, data, cuts, tmp_path_factory.mktemp("tar"))
    assert out == data and d.blob_digest == d.diff_digest == _sha(data) and d.diff_size == len(data)


@settings(max_examples=10, deadline=None)
@given(data=st.binary(max_size=20000), cuts=st.lists(st.integers(min_value=0, max_value=30000), max_size=6))
def test_zstd_sink_decodes_in_any_chunks(
    data: bytes, cuts: list[int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    compressed = subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
    out, d = _sink_all(blob.Compression.ZSTD, compressed, cuts, tmp_path_factory.mktemp("zst"))
    assert out == data
    assert (d.blob_digest, d.diff_digest, d.diff_size) == (_sha(compressed), _sha(data), len(data))


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=1, max_size=4096), keep=st.floats(min_value=0.0, max_value=0.95))
def test_truncated_gzip_is_an_error_never_a_short_tar(
    data: bytes, keep: float, tmp_path_factory: pytest.TempPathFactory
) -> None:
    compressed = gzip.compress(data)
    cut = compressed[: max(1, int(len(compressed) * keep))]
    with pytest.raises(blob.BlobError, match="gzip"):
        _sink_all(blob.Compression.GZIP, cut, [], tmp_path_factory.mktemp("cut"))


@pytest.mark.parametrize(
    ("compression", "data"),
    [
        (blob.Compression.GZIP, b"this is not gzip\n" * 10),
        (blob.Compression.GZIP, gzip.compress(b"x") + b"trailing garbage"),
        (blob.Compression.GZIP, b""),
        (blob.Compression.ZSTD, b"this is not zstd\n" * 10),
    ],
)
def test_bad_compressed_streams_raise_blob_error(
    compression: blob.Compression, data: bytes, tmp_path: Path
) -> None:
    with pytest.raises(blob.BlobError, match=compression.value):
        _sink_all(compression, data, [7], tmp_path)


def test_media_types_map_to_their_compression() -> None:
    assert blob.compression_of("application/vnd.oci.image.layer.v1.tar+gzip") is blob.Compression.GZIP
    assert blob.compression_of("application/vnd.docker.image.rootfs.diff.tar.gzip") is blob.Compression.GZIP
    assert blob.compression_of("application/vnd.oci.image.layer.v1.tar+zstd") is blob.Compression.ZSTD
    assert blob.compression_of(blob.MEDIA_TYPE_TAR) is blob.Compression.NONE
    with pytest.raises(blob.UnsupportedMediaType, match=r"tar\+encrypted"):
        blob.compression_of("application/vnd.oci.image.layer.v1.tar+encrypted")


# ---- Apply over gRPC with a fake content store ---------------------------------------------------


class FakeContentStore:
    """containerd.services.content.v1.Content/Read from a dict, per namespace, in small chunks."""

    def __init__(self) -> None:
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.namespaces_seen: list[str] = []

    def add(self, ns: str, data: bytes) -> str:
        digest = _sha(data)
        self.blobs[(ns, digest)] = data
        return digest

    async def Read(self, req: content_pb2.ReadContentRequest, context: Any) -> AsyncIterator[Any]:
        ns = dict(context.invocation_metadata()).get(NAMESPACE_HEADER, "")
        self.namespaces_seen.append(ns)
        data = self.blobs.get((ns, req.digest))
        if data is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"content digest {req.digest}: not found")
        assert data is not None
        for off in range(0, len(data), 3000):
            yield content_pb2.ReadContentResponse(offset=off, data=data[off : off + 3000])

    def handler(self) -> Any:
        return grpc.method_handlers_generic_handler(
            "containerd.services.content.v1.Content",
            {
                "Read": grpc.unary_stream_rpc_method_handler(
                    self.Read,
                    request_deserializer=content_pb2.ReadContentRequest.FromString,
                    response_serializer=lambda m: m.SerializeToString(),
                )
            },
        )


class Env:
    def __init__(self, sn: Snapshotter, snapshots: SnapshotsClient, channel: Any, store: FakeContentStore):
        self.sn = sn
        self.snapshots = snapshots
        self.channel = channel
        self.store = store

    async def apply(
        self,
        mounts: list[Any],
        media_type: str,
        digest: str,
        size: int,
        annotations: dict[str, str] | None = None,
    ) -> diff_pb2.ApplyResponse:
        call = self.channel.unary_unary(
            "/containerd.services.diff.v1.Diff/Apply",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=diff_pb2.ApplyResponse.FromString,
        )
        desc = descriptor_pb2.Descriptor(
            media_type=media_type, digest=digest, size=size, annotations=annotations
        )
        req = diff_pb2.ApplyRequest(diff=desc, mounts=mounts)
        resp: diff_pb2.ApplyResponse = await call(req, timeout=60, metadata=((NAMESPACE_HEADER, NS),))
        return resp


@asynccontextmanager
async def served_with_fake_content(tmp: Path) -> AsyncIterator[Env]:
    store = FakeContentStore()
    content_sock = str(tmp / "containerd.sock")
    content_server = grpc.aio.server()
    content_server.add_generic_rpc_handlers((store.handler(),))
    content_server.add_insecure_port(f"unix:{content_sock}")
    await content_server.start()
    sn = await asyncio.to_thread(lambda: Snapshotter(str(tmp / "root"), scratch_size_gb=1, host_mounts=False))
    differ = Differ(sn, ContentClient(content_sock))
    sock = str(tmp / "sn.sock")
    server = await serve(sn, sock, [DiffService(differ).handler()])
    channel = grpc.aio.insecure_channel(f"unix:{sock}")
    snapshots = SnapshotsClient(sock)
    try:
        yield Env(sn, snapshots, channel, store)
    finally:
        await snapshots.close()
        await channel.close()
        await server.stop(1)
        await differ.close()
        await content_server.stop(1)
        await asyncio.to_thread(sn.close)


def _layer_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo("etc")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        for name, data in (("etc/hello.txt", b"hello from the differ\n"), ("etc/.wh.gone", b"")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _debugfs(image: Path, cmd: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", cmd, str(image)], capture_output=True, text=True, check=True
    ).stdout


def _upper(mounts: list[Any]) -> Path:
    return Path(next(o[len("upperdir=") :] for o in mounts[0].options if o.startswith("upperdir=")))


@needs_root
def test_apply_with_fake_content_writes_the_vhd_and_commit_adopts_it(tmp_path: Path) -> None:
    tar = _layer_tar()
    compressed = gzip.compress(tar)

    async def main() -> None:
        async with served_with_fake_content(tmp_path) as env:
            digest = env.store.add(NS, compressed)
            key = f"{NS}/1/extract-1 {CHAIN}"
            mounts = await env.snapshots.prepare(key, labels={core.LABEL_SNAPSHOT_REF: CHAIN})
            resp = await env.apply(
                mounts,
                blob.MEDIA_TYPE_TAR + "+gzip",
                digest,
                len(compressed),
                {"containerd.io/uncompressed": _sha(tar)},
            )
            assert resp.applied.digest == _sha(tar) and resp.applied.size == len(tar)
            assert resp.applied.media_type == blob.MEDIA_TYPE_TAR
            assert env.store.namespaces_seen == [NS]
            # The directory containerd was handed stays empty; the VHD waits in the snapshot.
            assert list(_upper(mounts).iterdir()) == []
            assert (_upper(mounts).parent / lcow_mount.LAYER_FILE).is_file()
            assert os.listdir(tmp_path / "root" / "tmp") == []
            await env.snapshots.commit(f"{NS}/2/{CHAIN}", key, labels={core.LABEL_SNAPSHOT_REF: CHAIN})
        layer = tmp_path / "root" / "layers" / CHAIN.split(":")[1] / lcow_mount.LAYER_FILE
        assert vhd.is_fixed_vhd(str(layer))
        assert _debugfs(layer, "cat /etc/hello.txt") == "hello from the differ\n"
        assert "Device major/minor number: 00:00" in _debugfs(layer, "stat /etc/gone")
        assert os.listdir(tmp_path / "root" / "snapshots") == []

    asyncio.run(main())


async def _expect(code: Any, pattern: str, coro: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    assert info.value.code() == code, info.value
    assert pattern in (info.value.details() or ""), info.value.details()


def _only_empty_unpack_dirs(root: Path) -> None:
    """No VHD (partial or whole), no tar and no conversion left anywhere under the root."""
    for top, _, files in os.walk(root):
        left = [f for f in files if f != "metadata.db" and not f.startswith("metadata.db-")]
        assert left == [], (top, left)


@needs_root
def test_malformed_layer_with_fake_content_fails_naming_it_and_leaves_nothing(tmp_path: Path) -> None:
    garbage = b"this is not a tar archive\n" * 64

    async def main() -> None:
        async with served_with_fake_content(tmp_path) as env:
            digest = env.store.add(NS, garbage)
            key = f"{NS}/1/extract-1 {CHAIN}"
            mounts = await env.snapshots.prepare(key, labels={core.LABEL_SNAPSHOT_REF: CHAIN})
            await _expect(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"layer {digest}",
                env.apply(mounts, blob.MEDIA_TYPE_TAR, digest, len(garbage)),
            )
            _only_empty_unpack_dirs(tmp_path / "root")
            # containerd then removes the snapshot; nothing of it stays.
            await env.snapshots.remove(key)
            assert os.listdir(tmp_path / "root" / "snapshots") == []

    asyncio.run(main())


@needs_root
def test_apply_with_fake_content_checks_digests(tmp_path: Path) -> None:
    tar = _layer_tar()
    compressed = gzip.compress(tar)
    truncated = compressed[: len(compressed) // 2]

    async def main() -> None:
        async with served_with_fake_content(tmp_path) as env:
            digest = env.store.add(NS, compressed)
            key = f"{NS}/1/extract-1 {CHAIN}"
            mounts = await env.snapshots.prepare(key, labels={core.LABEL_SNAPSHOT_REF: CHAIN})
            gz = blob.MEDIA_TYPE_TAR + "+gzip"
            wrong_diff = {"containerd.io/uncompressed": "sha256:" + "0" * 64}
            await _expect(
                grpc.StatusCode.INVALID_ARGUMENT,
                "uncompressed digest",
                env.apply(mounts, gz, digest, len(compressed), wrong_diff),
            )
            await _expect(
                grpc.StatusCode.INVALID_ARGUMENT, "the descriptor says", env.apply(mounts, gz, digest, 5)
            )
            # A blob stored under another digest than its own.
            env.store.blobs[(NS, "sha256:" + "b" * 64)] = compressed
            await _expect(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"has digest {digest}",
                env.apply(mounts, gz, "sha256:" + "b" * 64, len(compressed)),
            )
            cut = env.store.add(NS, truncated)
            await _expect(
                grpc.StatusCode.INVALID_ARGUMENT, "truncated", env.apply(mounts, gz, cut, len(truncated))
            )
            await _expect(
                grpc.StatusCode.NOT_FOUND,
                "sha256:" + "c" * 64,
                env.apply(mounts, gz, "sha256:" + "c" * 64, 10),
            )
            _only_empty_unpack_dirs(tmp_path / "root")

    asyncio.run(main())


def test_foreign_mounts_media_types_and_diff_are_not_implemented_with_fake_content(tmp_path: Path) -> None:
    async def main() -> None:
        async with served_with_fake_content(tmp_path) as env:
            digest = env.store.add(NS, b"x")
            tar = blob.MEDIA_TYPE_TAR
            bind = [mount_pb2.Mount(type="bind", source="/somewhere", options=["rbind"])]
            await _expect(
                grpc.StatusCode.UNIMPLEMENTED, "lcow differ: mounts (bind)", env.apply(bind, tar, digest, 1)
            )
            other = [mount_pb2.Mount(type="overlay", source="overlay", options=["upperdir=/var/lib/x/fs"])]
            await _expect(grpc.StatusCode.UNIMPLEMENTED, "/var/lib/x/fs", env.apply(other, tar, digest, 1))
            key = f"{NS}/1/extract-1 {CHAIN}"
            mounts = await env.snapshots.prepare(key, labels={core.LABEL_SNAPSHOT_REF: CHAIN})
            enc = tar + "+encrypted"
            await _expect(grpc.StatusCode.UNIMPLEMENTED, enc, env.apply(mounts, enc, digest, 1))
            call = env.channel.unary_unary(
                "/containerd.services.diff.v1.Diff/Diff",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=diff_pb2.DiffResponse.FromString,
            )
            await _expect(
                grpc.StatusCode.UNIMPLEMENTED, "Diff (snapshot -> layer tar)", call(diff_pb2.DiffRequest())
            )
            # A container snapshot's mounts are not an unpack target either.
            view = await env.snapshots.prepare(f"{NS}/3/container")
            await _expect(grpc.StatusCode.UNIMPLEMENTED, "lcow differ", env.apply(view, tar, digest, 1))

    asyncio.run(main())


@needs_root
def test_a_failed_commit_gives_the_applied_vhd_back_with_fake_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tar = _layer_tar()

    async def main() -> None:
        async with served_with_fake_content(tmp_path) as env:
            digest = env.store.add(NS, tar)
            key = f"{NS}/1/extract-1 {CHAIN}"
            mounts = await env.snapshots.prepare(key, labels={core.LABEL_SNAPSHOT_REF: CHAIN})
            await env.apply(mounts, blob.MEDIA_TYPE_TAR, digest, len(tar))

            def failing(*args: Any) -> Any:
                raise OSError("disk full (injected)")

            monkeypatch.setattr(env.sn.store, "commit", failing)
            with pytest.raises(grpc.aio.AioRpcError, match="injected"):
                await env.snapshots.commit(f"{NS}/2/{CHAIN}", key)
            # The snapshot is still active and its retried Commit succeeds.
            assert (await env.snapshots.stat(key)).kind == 2
            monkeypatch.undo()
            await env.snapshots.commit(f"{NS}/2/{CHAIN}", key)
            assert (await env.snapshots.stat(f"{NS}/2/{CHAIN}")).kind == 3
        layer = tmp_path / "root" / "layers" / CHAIN.split(":")[1] / lcow_mount.LAYER_FILE
        assert _debugfs(layer, "cat /etc/hello.txt") == "hello from the differ\n"

    asyncio.run(main())


@settings(max_examples=60, deadline=None)
@given(
    upper=st.one_of(
        st.text(alphabet="/abc.1", max_size=40),
        st.builds(
            lambda n, tail: f"ROOT/snapshots/{n}{tail}",
            st.text("0123456789x", max_size=4),
            st.sampled_from(["/fs", "/fs/..", "/work", "", "/fs/x"]),
        ),
    )
)
def test_only_an_unpack_snapshots_own_upperdir_is_an_apply_target(
    upper: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("sn")
    sn = Snapshotter(str(root / "root"), scratch_size_gb=1, host_mounts=False)
    try:
        mounts = sn.prepare(f"{NS}/1/extract-1 {CHAIN}", "", {})
        own = next(o for o in mounts[0].options if o.startswith("upperdir="))
        assert sn.unpack_target(mounts).key.endswith(CHAIN)
        opts = [o for o in mounts[0].options if o != own]
        candidate = upper.replace("ROOT", str(root / "root"))
        m = core.Mount("overlay", "overlay", (*opts, f"upperdir={candidate}"))
        if os.path.normpath(candidate) == own[len("upperdir=") :]:
            assert sn.unpack_target([m]).key.endswith(CHAIN)
        else:
            with pytest.raises(SnapshotError) as info:
                sn.unpack_target([m])
            assert info.value.kind in (ErrKind.NOT_IMPLEMENTED, ErrKind.NOT_FOUND)
    finally:
        sn.close()
