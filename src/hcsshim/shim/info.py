"""``<shim> -info``: the ``containerd.types.RuntimeInfo`` containerd 2.x reads from a shim's stdout.

containerd (the Introspection service's PluginInfo, which CRI calls for every handler at start-up) runs
the binary with ``-info``, writes the runtime options as a serialized ``google.protobuf.Any`` (or
nothing) on stdin and decodes stdout as a serialized RuntimeInfo (reference containerd-shim.md §2.8).

``features`` is the OCI runtime-spec features document of the runc that actually runs the containers:
the host's for process-v2; for the UVM shims the guest's, which is the host's build when the UVM
image's manifest records the same runc package version as the host's ``runc --version`` (the image is
built from the same Debian packages). When that cannot be shown, ``features`` is left out: containerd
treats a missing document as "unknown", which is the truth.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from importlib import metadata

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from hcsshim import errdefs
from hcsshim.api.containerd.types import introspection_pb2
from hcsshim.shim.kind import PROCESS_V2, ShimKind
from hcsshim.shim.options import (
    OPTIONS_TYPE,
    SANDBOX_TASK_API_VERSION,
    TASK_API_VERSION,
    OptionsError,
    type_matches,
    unpack_options,
)

FEATURES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
RUNC_TIMEOUT = 10.0
# Shim annotations (RuntimeInfo.annotations, not the OCI features' annotations).
ANNOTATION_RUNTIME = "io.github.hcsshim.runtime"
ANNOTATION_TASK_API = "io.github.hcsshim.task-api-version"
ANNOTATION_ISOLATION = "io.github.hcsshim.isolation"
ANNOTATION_FEATURES_SOURCE = "io.github.hcsshim.features-source"


class InfoError(ValueError):
    kind = errdefs.Kind.INVALID_ARGUMENT
    pass


def package_version() -> str:
    try:
        return metadata.version("hcsshim")
    except metadata.PackageNotFoundError:
        return "unknown"


def decode_options(data: bytes) -> any_pb2.Any | None:
    """The options Any from stdin: runhcs Options are parsed (and so validated), other types echoed."""
    if not data:
        return None
    value = any_pb2.Any()
    try:
        value.ParseFromString(data)
    except DecodeError as exc:
        raise InfoError(f"-info: stdin is not a serialized google.protobuf.Any: {exc}") from exc
    if not value.type_url:
        raise InfoError("-info: the options Any on stdin has no type_url")
    if type_matches(value.type_url, OPTIONS_TYPE):
        try:
            options = unpack_options(value)
        except OptionsError as exc:
            raise InfoError(f"-info: {exc}") from exc
        assert options is not None
        return any_pb2.Any(type_url=value.type_url, value=options.SerializeToString())
    return value


def _runc_features(runc: str) -> bytes | None:
    try:
        proc = subprocess.run(
            [runc, "features"],
            capture_output=True,
            timeout=RUNC_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    try:
        json.loads(proc.stdout)
    except ValueError:
        return None
    return bytes(proc.stdout)


def _runc_package_version(runc: str) -> str:
    """Debian's runc prints its package version as ``commit: <version>``."""
    try:
        proc = subprocess.run(
            [runc, "--version"], capture_output=True, text=True, timeout=RUNC_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in proc.stdout.splitlines():
        if line.startswith("commit:"):
            return line.split(":", 1)[1].strip()
    return ""


def _guest_runc_version(boot_files: str) -> str:
    try:
        with open(os.path.join(boot_files, "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return ""
    packages = manifest.get("packages") if isinstance(manifest, dict) else None
    version = packages.get("runc", "") if isinstance(packages, dict) else ""
    return version if isinstance(version, str) else ""


def features(kind: ShimKind, boot_files: str | None = None) -> tuple[bytes | None, str]:
    """(features JSON or None, where it came from)."""
    runc = shutil.which("runc")
    if runc is None:
        return None, "no runc on this host"
    if kind.binary == PROCESS_V2.binary:
        data = _runc_features(runc)
        return data, "host runc" if data is not None else "host runc has no `features` command"
    if boot_files is None:
        from hcsshim.uvm.document import boot_files_path

        boot_files = boot_files_path()
    guest = _guest_runc_version(boot_files)
    host = _runc_package_version(runc)
    if not guest:
        return None, f"no runc version in {boot_files}/manifest.json"
    if guest != host:
        return None, f"UVM runc {guest} differs from host runc {host or 'unknown'}"
    data = _runc_features(runc)
    if data is None:
        return None, "runc features failed"
    return data, f"UVM runc {guest} (same build as the host's)"


def runtime_info(kind: ShimKind, stdin_data: bytes, boot_files: str | None = None) -> bytes:
    options = decode_options(stdin_data)
    info = introspection_pb2.RuntimeInfo(
        name=kind.runtime,
        version=introspection_pb2.RuntimeVersion(version=package_version()),
    )
    if options is not None:
        info.options.CopyFrom(options)
    data, source = features(kind, boot_files)
    if data is not None:
        info.features.type_url = FEATURES_TYPE_URL
        info.features.value = data
    info.annotations[ANNOTATION_RUNTIME] = kind.runtime
    info.annotations[ANNOTATION_TASK_API] = str(
        SANDBOX_TASK_API_VERSION if kind.sandbox_api else TASK_API_VERSION
    )
    info.annotations[ANNOTATION_ISOLATION] = "process" if kind.binary == PROCESS_V2.binary else "uvm"
    info.annotations[ANNOTATION_FEATURES_SOURCE] = source
    return info.SerializeToString()
