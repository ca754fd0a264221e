"""The service VM's tools disk: what the guest needs to convert a layer exactly as the host does.

The UVM image has neither e2fsprogs nor Python's tarfile, and rebuilding it for a service VM would
tie the two to one image build; so the host's own mkfs.ext4 and debugfs (with their non-glibc
libraries and the host's mke2fs.conf: the same version inside and out by construction), the stdlib
modules the conversion imports (taken from the Python that matches the guest's), hcsshim.layers and
guest_convert.py go onto a small read-only ext4 disk, built once per content and cached under
HCSSHIM_RUN_DIR/servicevm/. Nothing of the host's file system is shared with the guest."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from hcsshim import settings
from hcsshim.layers import vhd
from hcsshim.layers.ext4 import Ext4Error, make_ext4

GUEST_SCRIPT = "guest_convert.py"
# The guest's interpreter (image builder's GUEST_PYTHON); the host's Debian python3.11 matches it.
GUEST_PYTHON = "/usr/bin/python3.11"
TOOLS = ("mkfs.ext4", "debugfs")
# What the conversion imports in the guest, beyond what the agent already loaded there.
STDLIB_MODULES = (
    "tarfile",
    "tempfile",
    "shutil",
    "json",
    "uuid",
    "hashlib",
    "gzip",
    "bz2",
    "lzma",
    "zlib",
    "subprocess",
    "contextlib",
    "dataclasses",
    "posixpath",
    "stat",
    "struct",
)
# Left to the guest: glibc must match the guest's own loader.
_GLIBC = ("libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "ld-linux", "linux-vdso")
_OUR_MODULES = (
    "hcsshim/__init__.py",
    "hcsshim/settings.py",
    "hcsshim/layers/__init__.py",
    "hcsshim/layers/tar2ext4.py",
    "hcsshim/layers/ext4.py",
    "hcsshim/layers/vhd.py",
)

_TRACE = r"""
import importlib, json, sys, sysconfig
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
roots = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
out = []
for m in list(sys.modules.values()):
    f = getattr(m, "__file__", None)
    if f:
        out.append(f)
print(json.dumps({"roots": sorted(roots), "files": sorted(set(out))}))
"""


class ToolsError(RuntimeError):
    pass


@dataclass(frozen=True)
class ToolsDisk:
    path: str  # a fixed VHD (ext4), attached read-only
    key: str


def host_python() -> str:
    return GUEST_PYTHON if os.path.exists(GUEST_PYTHON) else sys.executable


def _which(tool: str) -> str:
    search = "/usr/sbin:/sbin:/usr/bin:/bin:" + settings.inherited_environ().get("PATH", "")
    found = shutil.which(tool, path=search)
    if found is None:
        raise ToolsError(f"{tool} not found: install e2fsprogs")
    return os.path.realpath(found)


def _libraries(binary: str) -> list[str]:
    try:
        out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ToolsError(f"ldd {binary}: {e}") from e
    libs: list[str] = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/") and not any(g in os.path.basename(target) for g in _GLIBC):
                libs.append(target)
    return libs


def _mke2fs_conf() -> str:
    return settings.inherited_environ().get("MKE2FS_CONFIG") or "/etc/mke2fs.conf"


def _our_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _inputs() -> dict[str, str]:
    """Destination on the disk -> host source file."""
    files: dict[str, str] = {}
    for tool in TOOLS:
        binary = _which(tool)
        files[f"bin/{tool}"] = binary
        for lib in _libraries(binary):
            files[f"lib/{os.path.basename(lib)}"] = lib
    conf = _mke2fs_conf()
    if os.path.isfile(conf):
        files["etc/mke2fs.conf"] = conf
    python = host_python()
    try:
        traced = json.loads(
            subprocess.run(
                [python, "-S", "-c", _TRACE, json.dumps(list(STDLIB_MODULES))],
                check=True,
                capture_output=True,
                text=True,
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
            ).stdout
        )
    except (OSError, subprocess.CalledProcessError, ValueError) as e:
        raise ToolsError(f"tracing the stdlib with {python}: {e}") from e
    roots = [r.rstrip("/") + "/" for r in traced["roots"]]
    for f in traced["files"]:
        for root in roots:
            if f.startswith(root):
                rel = f[len(root) :]
                if rel.startswith("lib-dynload/"):
                    rel = rel[len("lib-dynload/") :]
                    for lib in _libraries(f):
                        files[f"lib/{os.path.basename(lib)}"] = lib
                if rel.startswith("site-packages/"):
                    break
                files[f"python/{rel}"] = f
                break
    src = _our_root()
    for rel in _OUR_MODULES:
        files[f"python/{rel}"] = os.path.join(src, rel)
    files[GUEST_SCRIPT] = os.path.join(os.path.dirname(os.path.abspath(__file__)), GUEST_SCRIPT)
    return files


def _key(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for dst in sorted(files):
        h.update(dst.encode() + b"\0")
        with open(files[dst], "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]


def default_dir() -> str:
    return os.path.join(settings.current().run_dir, "servicevm")


def ensure_tools_disk(directory: str | None = None) -> ToolsDisk:
    """The tools disk for what is on the host now (blocking: run it in a thread); built once per
    content under an exclusive lock, renamed into place whole."""
    directory = directory or default_dir()
    os.makedirs(directory, exist_ok=True)
    files = _inputs()
    key = _key(files)
    path = os.path.join(directory, f"tools-{key}.vhd")
    if os.path.isfile(path):
        return ToolsDisk(path, key)
    with open(os.path.join(directory, ".tools.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(path):
            return ToolsDisk(path, key)
        with tempfile.TemporaryDirectory(prefix=".tools-", dir=directory) as tmp:
            stage = os.path.join(tmp, "root")
            for dst, src in files.items():
                target = os.path.join(stage, dst)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy2(src, target)
            _compile(stage)
            image = os.path.join(tmp, "tools.vhd")
            try:
                make_ext4(stage, image, label="hcsshim-svm-tools")
            except Ext4Error as e:
                raise ToolsError(f"tools disk: {e}") from e
            vhd.append_footer_to_path(image, reproducible=True)
            os.replace(image, path)
        for name in os.listdir(directory):
            if name.startswith("tools-") and name.endswith(".vhd") and name != os.path.basename(path):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))
    return ToolsDisk(path, key)


def _compile(stage: str) -> None:
    """Bytecode beside the sources (the disk is read-only in the guest; compiling tarfile there
    under TCG costs more than reading it)."""
    python = host_python()
    cmd = [python, "-s", "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash", "-d", "/"]
    subprocess.run(
        [*cmd, os.path.join(stage, "python")], check=False, capture_output=True, env={"PATH": "/usr/bin:/bin"}
    )
