"""A layer blob as containerd stores it -> the uncompressed layer tar, with both digests.

:class:`TarSink` takes the blob in chunks of any size (as a content store streams it), checks
nothing itself and writes the uncompressed tar to a file; :meth:`TarSink.close` says what it saw:
the blob's digest and size (to compare with the descriptor) and the tar's (the image config's
diff_id). gzip runs in this process (every member of a multi-member stream, like Go's reader);
zstd through the ``zstd`` command, whose output goes straight to the file. The calls block: run
them in a worker thread."""

from __future__ import annotations

import contextlib
import enum
import hashlib
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from typing import BinaryIO

MEDIA_TYPE_TAR = "application/vnd.oci.image.layer.v1.tar"
_CHUNK = 1 << 20


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


# Layer media types containerd's differs accept without a stream processor.
MEDIA_TYPES: dict[str, Compression] = {
    MEDIA_TYPE_TAR: Compression.NONE,
    MEDIA_TYPE_TAR + "+gzip": Compression.GZIP,
    MEDIA_TYPE_TAR + "+zstd": Compression.ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": Compression.NONE,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": Compression.GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar": Compression.NONE,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": Compression.GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": Compression.GZIP,
}


class BlobError(ValueError):
    """The blob is not what its media type says (bad or truncated compression)."""


class UnsupportedMediaType(ValueError):
    pass


def compression_of(media_type: str) -> Compression:
    try:
        return MEDIA_TYPES[media_type]
    except KeyError:
        raise UnsupportedMediaType(f"layer media type {media_type!r} is not a (gzip/zstd) tar") from None


@dataclass(frozen=True)
class Digests:
    blob_digest: str  # "sha256:<hex>" of the bytes fed in
    blob_size: int
    diff_digest: str  # of the uncompressed tar
    diff_size: int


class _Gzip:
    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._started = False  # bytes of the current member seen

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            try:
                out.append(self._d.decompress(data))
            except zlib.error as e:
                raise BlobError(f"gzip: {e}") from None
            self._started = True
            if not self._d.eof:
                break
            # A member ended: whatever follows is the next member.
            data = self._d.unused_data
            self._d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            self._started = False
        return b"".join(out)

    def finish(self) -> bytes:
        if self._started and not self._d.eof:
            raise BlobError("gzip: the stream is truncated")
        return self._d.flush() if self._started else b""


class TarSink:
    """Blob chunks in, the uncompressed tar out to ``out``: a new file opened ``w+b`` (zstd writes
    it directly, and it is read back for the tar's digest)."""

    def __init__(self, compression: Compression, out: BinaryIO) -> None:
        self.compression = compression
        self._out = out
        self._blob = hashlib.sha256()
        self._blob_size = 0
        # Uncompressed, the blob is the tar: one hash serves both digests.
        self._tar = self._blob if compression == Compression.NONE else hashlib.sha256()
        self._tar_size = 0
        self._gzip = _Gzip() if compression == Compression.GZIP else None
        self._zstd: subprocess.Popen[bytes] | None = None
        self._seen_any = False
        if compression == Compression.ZSTD:
            exe = shutil.which("zstd")
            if exe is None:
                raise UnsupportedMediaType("zstd layers need the zstd command, which is not installed")
            out.flush()
            self._zstd = subprocess.Popen(
                [exe, "-d", "-c", "-q"], stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE
            )

    def _emit(self, data: bytes) -> None:
        if data:
            if self._tar is not self._blob:
                self._tar.update(data)
            self._tar_size += len(data)
            self._out.write(data)

    def write(self, chunk: bytes) -> None:
        self._blob.update(chunk)
        self._blob_size += len(chunk)
        if self._gzip is not None:
            if chunk:
                self._seen_any = True
            self._emit(self._gzip.feed(chunk))
        elif self._zstd is not None:
            assert self._zstd.stdin is not None
            try:
                self._zstd.stdin.write(chunk)
            except BrokenPipeError:
                raise BlobError(f"zstd: {self._zstd_failure()}") from None
        else:
            self._emit(chunk)

    def _zstd_failure(self) -> str:
        assert self._zstd is not None
        _, err = self._zstd.communicate()
        return err.decode(errors="replace").strip() or f"exit status {self._zstd.returncode}"

    def close(self) -> Digests:
        """Finish the stream; raises BlobError when the compressed stream is bad or incomplete."""
        if self._gzip is not None:
            if not self._seen_any:
                raise BlobError("gzip: the blob is empty")
            self._emit(self._gzip.finish())
        elif self._zstd is not None:
            assert self._zstd.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self._zstd.stdin.close()
            assert self._zstd.stderr is not None
            err = self._zstd.stderr.read()
            if self._zstd.wait() != 0:
                why = err.decode(errors="replace").strip() or f"exit status {self._zstd.returncode}"
                raise BlobError(f"zstd: {why}")
            self._rehash()
        self._out.flush()
        return Digests(
            "sha256:" + self._blob.hexdigest(),
            self._blob_size,
            "sha256:" + self._tar.hexdigest(),
            self._tar_size,
        )

    def _rehash(self) -> None:
        """The tar zstd wrote: read it back from the start of the file (page cache, one pass)."""
        with open(self._out.fileno(), "rb", closefd=False) as f:
            f.seek(0)
            while chunk := f.read(_CHUNK):
                self._tar.update(chunk)
                self._tar_size += len(chunk)

    def abort(self) -> None:
        """Stop a zstd child without waiting for the rest of the blob."""
        if self._zstd is not None and self._zstd.poll() is None:
            self._zstd.kill()
            self._zstd.communicate()
