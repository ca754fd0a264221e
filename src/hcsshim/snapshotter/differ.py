"""The lcow differ: containerd.services.diff.v1.Diff's Apply writes a layer's ext4 VHD straight from
its tar (a containerd proxy plugin of type diff, containerd 1.7.4+ and 2.x).

Apply gets the layer's descriptor and the mounts the snapshotter's Prepare returned for an unpack
(``extract-``) snapshot. It reads the blob from containerd's content store (gRPC Content/Read on
containerd's socket, in the caller's namespace), checks the blob's digest, decompresses it per media
type into a private file under the snapshotter's tmp/, has the LayerConverter turn that tar into
an ext4 VHD (with OCI whiteouts as overlay ones) and moves the VHD into the snapshot; the Commit
that follows adopts it. The overlay upperdir containerd was handed stays empty: no layer file tree
is ever unpacked where containerd could see it.

Mounts that are not an lcow unpack snapshot, media types it cannot decompress and stream processor
payloads answer NotImplemented, so containerd's diff service moves on to its next differ (walking).
Diff (snapshot -> tar) answers NotImplemented."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from hcsshim.layers import blob
from hcsshim.layers.convert import HostConverter, LayerConverter
from hcsshim.snapshotter.content import ContentSource
from hcsshim.snapshotter.core import Mount, Snapshotter
from hcsshim.snapshotter.errors import Kind, SnapshotError, invalid, not_implemented

log = logging.getLogger("hcsshim.snapshotter.differ")

LABEL_UNCOMPRESSED = "containerd.io/uncompressed"


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)


class Differ:
    def __init__(
        self, snapshotter: Snapshotter, content: ContentSource, converter: LayerConverter | None = None
    ) -> None:
        self.sn = snapshotter
        self.content = content
        self.converter: LayerConverter = converter or HostConverter(tmp_dir=snapshotter.convert_dir)

    async def apply(
        self, desc: Descriptor, mounts: Sequence[Mount], *, namespace: str, payloads: Sequence[str] = ()
    ) -> Descriptor:
        if payloads:
            raise not_implemented(f"lcow differ: stream processor payloads ({', '.join(sorted(payloads))})")
        try:
            compression = blob.compression_of(desc.media_type)
        except blob.UnsupportedMediaType as e:
            raise not_implemented(f"lcow differ: {e}") from None
        if not namespace:
            raise invalid(f"layer {desc.digest}: the request names no containerd namespace")
        rec = await asyncio.to_thread(self.sn.unpack_target, mounts)
        work = await asyncio.to_thread(self.sn.new_work, "apply-")
        try:
            tar_path = os.path.join(work, "layer.tar")
            digests = await asyncio.to_thread(self._fetch, desc, compression, namespace, tar_path)
            out = os.path.join(work, "layer.vhd")
            try:
                result = await self.converter.convert(tar_path, out, layer=desc.digest)
            except Exception as e:
                text = str(e)
                msg = text if desc.digest in text else f"layer {desc.digest}: {text}"
                raise SnapshotError(Kind.INVALID_ARGUMENT, f"{self.converter.name} conversion: {msg}") from e
            await asyncio.to_thread(os.unlink, tar_path)
            await asyncio.to_thread(self.sn.install_applied, rec, out, result.entries)
        finally:
            await asyncio.to_thread(self.sn.drop_work, work)
        log.info(
            "applied layer %s (%s, %d bytes) into %r as %s by the %s converter",
            desc.digest,
            compression.value,
            digests.diff_size,
            rec.key,
            digests.diff_digest,
            self.converter.name,
        )
        return Descriptor(blob.MEDIA_TYPE_TAR, digests.diff_digest, digests.diff_size)

    def _fetch(self, desc: Descriptor, compression: blob.Compression, ns: str, tar_path: str) -> blob.Digests:
        """Blob -> uncompressed tar at tar_path, digests checked (worker thread)."""
        with open(tar_path, "w+b") as out:
            try:
                sink = blob.TarSink(compression, out)
            except blob.UnsupportedMediaType as e:
                raise not_implemented(f"lcow differ: {e}") from None
            try:
                self.content.read(desc.digest, ns, sink.write)
                digests = sink.close()
            except blob.BlobError as e:
                raise invalid(f"layer {desc.digest} ({desc.media_type}): {e}") from None
            except BaseException:
                with contextlib.suppress(Exception):
                    sink.abort()
                raise
        if digests.blob_digest != desc.digest:
            raise invalid(f"layer {desc.digest}: the content store's blob has digest {digests.blob_digest}")
        if desc.size and digests.blob_size != desc.size:
            raise invalid(f"layer {desc.digest}: {digests.blob_size} bytes, the descriptor says {desc.size}")
        want = desc.annotations.get(LABEL_UNCOMPRESSED)
        if want and want != digests.diff_digest:
            raise invalid(f"layer {desc.digest}: uncompressed digest {digests.diff_digest}, expected {want}")
        return digests

    async def diff(self) -> NoReturn:
        raise not_implemented("lcow differ: Diff (snapshot -> layer tar) is not implemented")

    async def close(self) -> None:
        await self.converter.close()
        await asyncio.to_thread(self.content.close)
