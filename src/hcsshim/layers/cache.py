"""A content-addressed cache of layer VHDs: `<root>/sha256/<hex>/layer.vhd`, keyed by the layer's
uncompressed tar digest (its OCI diff ID).

Concurrency: producers of the same digest serialize on an flock per digest and re-check after taking
it, so a layer is converted once however many shims ask at the same time; the image appears by
rename, so readers see either no file or a whole one."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator

from hcsshim.layers import tar2ext4

LAYER_FILE = "layer.vhd"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class CacheError(ValueError):
    pass


def check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise CacheError(f"not a sha256 digest: {digest!r}")
    return digest


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class LayerCache:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    def _dir(self, digest: str) -> str:
        return os.path.join(self.root, "sha256", check_digest(digest).split(":", 1)[1])

    def path_for(self, digest: str) -> str:
        return os.path.join(self._dir(digest), LAYER_FILE)

    def get(self, digest: str) -> str | None:
        p = self.path_for(digest)
        return p if os.path.isfile(p) else None

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, str) and self.get(digest) is not None

    def digests(self) -> list[str]:
        base = os.path.join(self.root, "sha256")
        try:
            names = sorted(os.listdir(base))
        except FileNotFoundError:
            return []
        return [f"sha256:{n}" for n in names if os.path.isfile(os.path.join(base, n, LAYER_FILE))]

    @contextlib.contextmanager
    def _lock(self, digest: str) -> Iterator[None]:
        locks = os.path.join(self.root, "locks")
        os.makedirs(locks, exist_ok=True)
        fd = os.open(
            os.path.join(locks, check_digest(digest).split(":", 1)[1]), os.O_RDWR | os.O_CREAT, 0o644
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def ensure(self, digest: str, produce: Callable[[str], None]) -> str:
        """Path of the layer; `produce(tmp_path)` writes it when it is not cached yet."""
        existing = self.get(digest)
        if existing:
            return existing
        with self._lock(digest):
            existing = self.get(digest)
            if existing:
                return existing
            tmp_root = os.path.join(self.root, "tmp")
            os.makedirs(tmp_root, exist_ok=True)
            work = tempfile.mkdtemp(prefix="layer-", dir=tmp_root)
            try:
                tmp = os.path.join(work, LAYER_FILE)
                produce(tmp)
                if not os.path.isfile(tmp):
                    raise CacheError(f"producing {digest} wrote no file")
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                final_dir = self._dir(digest)
                os.makedirs(os.path.dirname(final_dir), exist_ok=True)
                # Rename the directory holding the file: one atomic step makes both appear.
                if os.path.isdir(final_dir):
                    shutil.rmtree(final_dir)
                os.rename(work, final_dir)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
            return self.path_for(digest)

    def import_tar(
        self,
        tar_path: str,
        digest: str | None = None,
        opts: tar2ext4.Options | None = None,
    ) -> str:
        """The layer VHD for an uncompressed tar; with `digest`, the tar must hash to it."""
        actual = file_digest(tar_path)
        if digest is not None and check_digest(digest) != actual:
            raise CacheError(f"{tar_path} has digest {actual}, expected {digest}")
        options = opts or tar2ext4.Options(append_vhd_footer=True)

        def produce(tmp: str) -> None:
            tar2ext4.convert(tar_path, tmp, options)

        return self.ensure(actual, produce)

    def remove(self, digest: str) -> bool:
        with self._lock(digest):
            d = self._dir(digest)
            if not os.path.isdir(d):
                return False
            shutil.rmtree(d)
            return True
