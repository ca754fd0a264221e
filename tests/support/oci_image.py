"""A local busybox OCI image, built from Debian's busybox-static, for ``ctr images import``.

No registry is needed: one uncompressed layer with /bin/busybox and applet symlinks, an image config,
a manifest and an OCI layout ``index.json`` naming the image, all in one tarball. The same builder
makes the CRI pause image (same layer, a long ``sleep`` as entrypoint).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

BUSYBOX = "/bin/busybox"
DEFAULT_NAME = "docker.io/library/busybox:local"
PAUSE_NAME = "registry.k8s.io/pause:3.6"
APPLETS = (
    "sh",
    "echo",
    "cat",
    "sleep",
    "ls",
    "id",
    "true",
    "false",
    "hostname",
    "head",
    "stty",
    "tty",
    "ps",
    "touch",
    "mkdir",
    "rm",
    "env",
    "readlink",
    "uname",
    "wc",
    "test",
    "[",
)
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


def _add(tar: tarfile.TarFile, name: str, **kw: object) -> None:
    """A directory or symlink entry (no data)."""
    info = tarfile.TarInfo(name)
    info.mtime = 0
    for key, value in kw.items():
        setattr(info, key, value)
    tar.addfile(info)


def _layer(busybox: str) -> bytes:
    with open(busybox, "rb") as f:
        binary = f.read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "root", "run"):
            _add(tar, d, type=tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode, info.mtime = len(binary), 0o755, 0
        tar.addfile(info, io.BytesIO(binary))
        for applet in APPLETS:
            _add(tar, f"bin/{applet}", type=tarfile.SYMTYPE, linkname="busybox", mode=0o777)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            ("etc/group", "root:x:0:\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    """A layer blob's bytes: ``gzip`` (mtime 0, so the digest is stable) or ``zstd`` (the command)."""
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
    raise ValueError(f"unknown layer compression {compression!r}")


def build_image(
    path: str,
    name: str = DEFAULT_NAME,
    *,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    busybox: str = BUSYBOX,
    extra_layers: Sequence[bytes] = (),
    compression: str = "",
) -> str:
    """Write the OCI image tarball to ``path`` and return ``path``; ``extra_layers`` (uncompressed
    tars) go above the busybox layer, in order; ``compression`` ``gzip`` or ``zstd`` stores every
    layer compressed (media type ``...tar+gzip`` / ``+zstd``; the diff_ids stay the tars' digests)."""
    plain = [Blob(MEDIA_LAYER, data) for data in (_layer(busybox), *extra_layers)]
    blobs = (
        [Blob(MEDIA_LAYER + "+" + compression, compress(b.data, compression)) for b in plain]
        if compression
        else plain
    )
    layer, uppers = blobs[0], blobs[1:]
    config_doc = {
        "architecture": "amd64",
        "os": "linux",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0)),
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": entrypoint,
            "Cmd": cmd if cmd is not None else (None if entrypoint else ["sh"]),
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [b.digest for b in plain]},
    }
    config = Blob(MEDIA_CONFIG, json.dumps(config_doc, sort_keys=True).encode())
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config.descriptor(),
        "layers": [b.descriptor() for b in (layer, *uppers)],
    }
    manifest = Blob(MEDIA_MANIFEST, json.dumps(manifest_doc, sort_keys=True).encode())
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                **manifest.descriptor(),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for entry, data in (
            ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
            ("index.json", json.dumps(index).encode()),
        ):
            info = tarfile.TarInfo(entry)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for blob in (layer, *uppers, config, manifest):
            info = tarfile.TarInfo(f"blobs/sha256/{blob.digest.split(':', 1)[1]}")
            info.size, info.mode = len(blob.data), 0o644
            tar.addfile(info, io.BytesIO(blob.data))
    return path


def build_pause_image(path: str, name: str = PAUSE_NAME) -> str:
    return build_image(path, name, entrypoint=["/bin/sleep", "2147483647"], cmd=[])
