"""`hcsshim uvm build`: the UVM boot files (kernel, initrd.img, rootfs.vhd) from Debian packages.

Layout of the boot files directory (`default_boot_files_path()`):

    kernel               vmlinuz of the Debian kernel package
    initrd.img           the whole userland + agent as an initramfs (gzip)
    rootfs.vhd           the same userland as ext4 + fixed VHD footer (QEMU: vpc)
    vhd-initrd.img       stage 1 for rootfs.vhd: loads virtio/SCSI/pmem modules, mounts root=, switch_root
    floor-initrd.img     benchmark floor: busybox init that prints READY and powers off
    manifest.json        package versions, module plan, agent hash
    .cache/              debs/, pkgs/<name>_<version>/ (extracted), base-<key>/ (userland without agent)

Caching: debs and their extracted trees are keyed by package version; the userland without the agent
("base") by the package versions, the module list and this builder's version; the final images by the
base key plus a hash of the agent sources and the init script, so an agent-only change only re-runs
the cheap final step."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from hcsshim.image import cpio, dependencies, init_script
from hcsshim.layers import vhd
from hcsshim.layers.ext4 import Ext4Error, make_ext4
from hcsshim.uvm.document import ENV_BOOT_FILES as ENV_BOOT_FILES
from hcsshim.uvm.document import boot_files_path

BUILDER_VERSION = "4"

# linux-image-cloud-amd64 has no 9p (CONFIG_NET_9P is not set), and Plan9 shares are part of the
# contract; the generic flavour has every module we need and a smaller vmlinuz.
DEFAULT_KERNEL_PACKAGE = "linux-image-amd64"
CLOUD_KERNEL_PACKAGE = "linux-image-cloud-amd64"

USERLAND_PACKAGES = (
    "busybox-static",
    "libc6",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "runc",
    "libseccomp2",
)

# What the guest needs, by module name; the ones built into the kernel are skipped.
GUEST_MODULES = (
    "virtio_pci",
    "virtio_console",  # virtio-serial: the mux port
    "virtio_rng",
    "virtio_scsi",
    "sd_mod",
    "virtio_blk",
    "virtio_pmem",
    "nd_pmem",
    "9pnet_virtio",
    "9p",
    "overlay",
    "crc32c_generic",  # ext4 asks the crypto API for crc32c at mount time; not a modules.dep dependency
    "ext4",
    "vmw_vsock_virtio_transport",
    "virtio_net",  # pod NICs (hot-added)
)
# Loaded before the agent starts even with hcsshim.modules=async: the mux port and the entropy source.
EARLY_MODULES = ("virtio_pci", "virtio_console", "virtio_rng")
# Enough for stage 1 to find a SCSI or pmem root disk.
STAGE1_MODULES = (
    "virtio_pci",
    "virtio_scsi",
    "sd_mod",
    "virtio_blk",
    "virtio_pmem",
    "nd_pmem",
    "crc32c_generic",
    "ext4",
)

AGENT_PARTS = ("__init__.py", "gcs", "guest", "hvsock", "loopwatch.py")
GUEST_PYTHON = "/usr/bin/python3.11"
GUEST_RUNC = "/usr/sbin/runc"
ELF_ROOTS = (GUEST_PYTHON, GUEST_RUNC)
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
PYTHON_LIB = "usr/lib/python3.11"
# zstd -19 saves a further ~1 MB over -12 but takes 15 s instead of 1.5 s on each agent change.
ZSTD_LEVEL = 12

Progress = Callable[[str], None]


def default_boot_files_path() -> str:
    return boot_files_path()


def _default_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def agent_source_root() -> str:
    """src/hcsshim of this checkout (or installed package): what is copied into the image."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    size: int
    arch: str = "amd64"

    @property
    def deb_name(self) -> str:
        # apt-get download writes the epoch's colon as %3a.
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"

    @property
    def key(self) -> str:
        return f"{self.name}_{self.version.replace(':', '_')}"


@dataclass
class BuildResult:
    out: str
    files: dict[str, str] = field(default_factory=dict)
    rebuilt: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------------
# Pure helpers (unit-tested)


def parse_apt_show(text: str) -> dict[str, str]:
    """The first stanza of `apt-cache show` as a dict (continuation lines dropped)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        if line[0].isspace() or ":" not in line:
            continue
        k, _, v = line.partition(":")
        fields[k.strip()] = v.strip()
    return fields


def parse_apt_show_all(text: str) -> dict[str, dict[str, str]]:
    """Every stanza of `apt-cache show` by package name (the first stanza of each name wins)."""
    out: dict[str, dict[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields = parse_apt_show(stanza)
        name = fields.get("Package")
        if name and name not in out:
            out[name] = fields
    return out


def kernel_package_from_depends(depends: str) -> str | None:
    """The real `linux-image-<abi>-<flavour>` package behind a meta package's Depends."""
    for alt in depends.split(","):
        name = alt.split("|")[0].strip().split(" ")[0]
        if name.startswith("linux-image-") and name[len("linux-image-") : len("linux-image-") + 1].isdigit():
            return name
    return None


def hash_tree(root: str, parts: Sequence[str]) -> str:
    """Content hash of the .py files under root/part for each part (file names included)."""
    h = hashlib.sha256()
    for part in parts:
        top = os.path.join(root, part)
        if os.path.isfile(top):
            files = [top]
        else:
            files = []
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
                files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
        for f in files:
            h.update(os.path.relpath(f, root).encode() + b"\0")
            with open(f, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def base_key(packages: Sequence[Package], modules: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(f"builder={BUILDER_VERSION}\n".encode())
    for p in sorted(packages, key=lambda p: p.name):
        h.update(f"{p.name}={p.version}\n".encode())
    h.update(("modules=" + ",".join(modules) + "\n").encode())
    h.update(init_script.INIT_SCRIPT.encode())
    h.update(init_script.FLOOR_INIT_SCRIPT.encode())
    return h.hexdigest()[:16]


def final_key(base: str, agent_hash: str) -> str:
    return hashlib.sha256(f"{base}:{agent_hash}:{BUILDER_VERSION}".encode()).hexdigest()[:16]


def bzimage_payload(data: bytes) -> tuple[str, bytes]:
    """(compression, compressed kernel) inside a bzImage, from the boot protocol header."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise ImageError("not a bzImage (no HdrS boot protocol header)")
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = data[start : start + length]
    for magic, kind in ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd")):
        if payload.startswith(magic):
            return kind, payload
    raise ImageError(f"unknown kernel compression (payload starts {payload[:6].hex()})")


def decompress_kernel(bzimage: bytes) -> bytes:
    """The uncompressed ELF vmlinux: QEMU boots it through its PVH entry point, skipping the in-guest
    decompression that costs over 2 s under TCG."""
    kind, payload = bzimage_payload(bzimage)
    if kind == "xz":
        out = lzma.LZMADecompressor().decompress(payload)
    elif kind == "gzip":
        out = zlib.decompressobj(wbits=31).decompress(payload)
    else:
        out = _run_bytes(["zstd", "-d", "-c"], payload)
    if not out.startswith(b"\x7fELF"):
        raise ImageError("decompressed kernel is not an ELF file")
    return out


def compress_initrd(raw: bytes, level: int = ZSTD_LEVEL) -> bytes:
    """zstd when the host has it (smallest to load and fast to unpack under TCG), else gzip."""
    if shutil.which("zstd"):
        return _run_bytes(["zstd", "-q", "-c", "-T0", f"-{level}"], raw)
    return gzip.compress(raw, compresslevel=6, mtime=0)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# ---------------------------------------------------------------------------------------------------
# The builder


def _run(argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]
    except FileNotFoundError as e:
        raise ImageError(f"{argv[0]} not found: install it (scripts/setup.sh does)") from e
    except subprocess.CalledProcessError as e:
        raise ImageError(f"{' '.join(argv)} failed ({e.returncode}): {(e.stderr or e.stdout).strip()}") from e


def _run_bytes(argv: Sequence[str], data: bytes) -> bytes:
    try:
        proc = subprocess.run(list(argv), input=data, capture_output=True, check=True)
    except FileNotFoundError as e:
        raise ImageError(f"{argv[0]} not found: install it (scripts/setup.sh does)") from e
    except subprocess.CalledProcessError as e:
        raise ImageError(
            f"{' '.join(argv)} failed ({e.returncode}): {e.stderr.decode(errors='replace')}"
        ) from e
    return proc.stdout


@contextlib.contextmanager
def _temp_dir(parent: str, prefix: str) -> Iterator[str]:
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _copy(src: str, dst: str) -> None:
    """Copy one file, symlink or directory entry (not recursively), keeping modes."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.lexists(dst):
        return
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
    elif os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        shutil.copy2(src, dst)


class Builder:
    def __init__(
        self,
        out: str | None = None,
        *,
        kernel_package: str = DEFAULT_KERNEL_PACKAGE,
        force: bool = False,
        progress: Progress | None = None,
        agent_root: str | None = None,
    ) -> None:
        self.out = os.path.abspath(out or default_boot_files_path())
        self.cache = os.path.join(self.out, ".cache")
        self.kernel_meta = kernel_package
        self.force = force
        self.progress = progress or _default_progress
        self.agent_root = agent_root or agent_source_root()
        self._step = 0
        self._updated = False

    def step(self, msg: str) -> None:
        self._step += 1
        self.progress(f"[{self._step}] {msg}")

    # -- packages ------------------------------------------------------------------------------------

    def _show(self, *names: str) -> dict[str, dict[str, str]]:
        """`apt-cache show` for several packages in one call (each call costs ~0.5 s of cache loading)."""
        try:
            found = parse_apt_show_all(_run(["apt-cache", "show", "--no-all-versions", *names]).stdout)
        except ImageError:
            found = {}
        missing = [n for n in names if not found.get(n, {}).get("Version")]
        if missing and not self._updated and os.geteuid() == 0:
            # A fresh machine (or container) may have empty package lists.
            self._updated = True
            self.progress("    apt-get update (package lists are empty or stale)")
            _run(["apt-get", "update", "-qq"])
            return self._show(*names)
        if missing:
            raise ImageError(f"apt knows no package {', '.join(missing)}: run apt-get update")
        return found

    def resolve(self) -> tuple[Package, list[Package]]:
        kname = self.kernel_meta
        if not kname.removeprefix("linux-image-")[:1].isdigit():
            real = kernel_package_from_depends(self._show(kname)[kname].get("Depends", ""))
            if real is None:
                raise ImageError(f"cannot find the kernel package behind {kname}")
            kname = real
        names = (kname, *USERLAND_PACKAGES)
        shown = self._show(*names)
        pkgs = [
            Package(
                n, shown[n]["Version"], int(shown[n].get("Size", "0")), shown[n].get("Architecture", "amd64")
            )
            for n in names
        ]
        return pkgs[0], pkgs

    def download(self, pkgs: Sequence[Package]) -> None:
        debs = os.path.join(self.cache, "debs")
        os.makedirs(debs, exist_ok=True)
        # apt drops privileges to _apt for downloads when it can write the directory as that user.
        with contextlib.suppress(OSError):
            os.chmod(debs, 0o777)
        todo = [p for p in pkgs if not os.path.exists(os.path.join(debs, p.deb_name))]
        cached = len(pkgs) - len(todo)
        total = sum(p.size for p in todo)
        self.step(f"download {len(todo)} packages ({human(total)}), {cached} cached")
        for i, p in enumerate(todo, 1):
            self.progress(f"    ({i}/{len(todo)}) {p.name} {p.version} {human(p.size)}")
            t = time.monotonic()
            _run(["apt-get", "download", "-q", f"{p.name}={p.version}"], cwd=debs)
            if not os.path.exists(os.path.join(debs, p.deb_name)):
                raise ImageError(f"apt-get download {p.name} did not produce {p.deb_name}")
            dt = time.monotonic() - t
            self.progress(f"          done in {dt:.1f}s")

    def extract(self, pkgs: Sequence[Package]) -> dict[str, str]:
        root = os.path.join(self.cache, "pkgs")
        os.makedirs(root, exist_ok=True)
        trees: dict[str, str] = {}
        todo = [p for p in pkgs if not os.path.isdir(os.path.join(root, p.key))]
        self.step(f"extract {len(todo)} packages, {len(pkgs) - len(todo)} cached")
        for p in pkgs:
            dst = os.path.join(root, p.key)
            if not os.path.isdir(dst):
                self.progress(f"    {p.name}")
                tmp = tempfile.mkdtemp(prefix=f".{p.key}.", dir=root)
                try:
                    _run(["dpkg-deb", "-x", os.path.join(self.cache, "debs", p.deb_name), tmp])
                    os.rename(tmp, dst)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            trees[p.name] = dst
        return trees

    # -- base userland ------------------------------------------------------------------------------

    def _find_lib(self, trees: dict[str, str], soname: str) -> tuple[str, str] | None:
        for tree in trees.values():
            for d in LIB_DIRS:
                p = os.path.join(tree, d, soname)
                if os.path.lexists(p):
                    return tree, os.path.join(d, soname)
        return None

    def _copy_with_libs(self, trees: dict[str, str], stage: str, tree: str, rel: str) -> None:
        """Copy tree/rel into stage and every shared library it needs, transitively."""
        queue = [(tree, rel)]
        seen: set[str] = set()
        while queue:
            t, r = queue.pop()
            if r in seen:
                continue
            seen.add(r)
            src = os.path.join(t, r)
            real = os.path.realpath(src)
            if os.path.islink(src):
                # Copy the target beside the link (sonames are links to versioned files).
                target_rel = os.path.relpath(real, t)
                _copy(src, os.path.join(stage, r))
                queue.append((t, target_rel))
                continue
            _copy(src, os.path.join(stage, r))
            with open(real, "rb") as f:
                needed = dependencies.elf_needed(f.read())
            for so in needed:
                found = self._find_lib(trees, so)
                if found is None:
                    raise ImageError(f"{r} needs {so}, which no package in the image provides")
                queue.append(found)

    def _kernel_modules(self, ktree: str) -> tuple[str, dependencies.ModulePlan, dependencies.ModuleIndex]:
        mods = os.path.join(ktree, "lib", "modules")
        versions = os.listdir(mods)
        if len(versions) != 1:
            raise ImageError(f"expected one kernel version in {mods}, found {versions}")
        kver = versions[0]
        if not os.path.exists(os.path.join(mods, kver, "modules.dep")):
            # The package's postinst runs depmod; extracting with dpkg-deb -x does not.
            self.progress(f"    depmod {kver}")
            _run(["depmod", "-b", ktree, kver])
        with open(os.path.join(mods, kver, "modules.dep")) as f:
            dep = f.read()
        builtin = ""
        with contextlib.suppress(FileNotFoundError), open(os.path.join(mods, kver, "modules.builtin")) as f:
            builtin = f.read()
        index = dependencies.ModuleIndex.parse(dep, builtin)
        plan = dependencies.resolve_modules(GUEST_MODULES, index)
        return kver, plan, index

    def _write_modules(
        self,
        stage: str,
        ktree: str,
        kver: str,
        index: dependencies.ModuleIndex,
        wanted: Sequence[str],
    ) -> dependencies.ModulePlan:
        plan = dependencies.resolve_modules(wanted, index)
        if plan.missing:
            raise ImageError(f"kernel {kver} has neither built in nor as modules: {', '.join(plan.missing)}")
        mdir = f"lib/modules/{kver}"
        for rel in plan.load_order:
            _copy(os.path.join(ktree, mdir, rel), os.path.join(stage, mdir, rel))
        for extra in ("modules.builtin", "modules.order", "modules.builtin.modinfo"):
            src = os.path.join(ktree, mdir, extra)
            if os.path.exists(src):
                _copy(src, os.path.join(stage, mdir, extra))
        with open(os.path.join(stage, mdir, "modules.dep"), "w") as f:
            f.write(dependencies.filtered_modules_dep(plan, index))
        os.makedirs(os.path.join(stage, "etc/hcsshim"), exist_ok=True)
        early, rest = dependencies.split_load_order(EARLY_MODULES, wanted, index)
        for fname, paths in (("modules.early", early), ("modules", rest)):
            with open(os.path.join(stage, "etc/hcsshim", fname), "w") as f:
                for rel in paths:
                    f.write(f"{dependencies.module_name(rel)} /{mdir}/{rel}\n")
        return plan

    def _skeleton(self, stage: str, busybox_tree: str) -> None:
        for d in ("proc", "sys", "dev", "run", "tmp", "etc", "root", "var/tmp", "mnt", "bin", "sbin"):
            os.makedirs(os.path.join(stage, d), exist_ok=True)
        os.chmod(os.path.join(stage, "tmp"), 0o1777)
        _copy(os.path.join(busybox_tree, "bin/busybox"), os.path.join(stage, "bin/busybox"))
        listing = _run([os.path.join(busybox_tree, "bin/busybox"), "--list-full"]).stdout.split()
        for applet in listing:
            dst = os.path.join(stage, applet)
            if os.path.lexists(dst):
                continue
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.symlink(os.path.relpath(os.path.join(stage, "bin/busybox"), os.path.dirname(dst)), dst)
        with open(os.path.join(stage, "etc/passwd"), "w") as f:
            f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        with open(os.path.join(stage, "etc/group"), "w") as f:
            f.write("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n")
        with open(os.path.join(stage, "etc/hosts"), "w") as f:
            f.write("127.0.0.1 localhost\n")

    def _write_init(self, stage: str, text: str) -> None:
        path = os.path.join(stage, "init")
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)

    def build_base(
        self, kpkg: Package, pkgs: Sequence[Package], trees: dict[str, str]
    ) -> tuple[str, dict[str, object]]:
        """The userland without the agent and Python's stdlib modules (they depend on the agent)."""
        key = base_key(pkgs, GUEST_MODULES)
        base = os.path.join(self.cache, f"base-{key}")
        meta_path = os.path.join(base, ".meta.json")
        if os.path.exists(meta_path) and not self.force:
            self.step(f"userland base {key}: cached")
            with open(meta_path) as f:
                meta: dict[str, object] = json.load(f)
            return base, meta
        self.step(f"userland base {key}: busybox, libc, python, runc, kernel modules")
        ktree = trees[kpkg.name]
        with _temp_dir(self.cache, ".base-") as tmp:
            stage = os.path.join(tmp, "root")
            os.makedirs(stage)
            self._skeleton(stage, trees["busybox-static"])
            py_tree = trees["python3.11-minimal"]
            self._copy_with_libs(trees, stage, py_tree, GUEST_PYTHON.lstrip("/"))
            os.symlink("python3.11", os.path.join(stage, "usr/bin/python3"))
            self._copy_with_libs(trees, stage, trees["runc"], GUEST_RUNC.lstrip("/"))
            # The dynamic loader is found by its absolute path, /lib64/ld-linux-x86-64.so.2.
            libc = trees["libc6"]
            for rel in ("lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"):
                if os.path.lexists(os.path.join(libc, rel)):
                    self._copy_with_libs(trees, stage, libc, rel)
            # Extension modules' libraries: copied with the libraries they need, whether used or not
            # (a few hundred KiB), so the final step never needs the package trees' ELF walk.
            dyn = os.path.join(trees["libpython3.11-stdlib"], PYTHON_LIB, "lib-dynload")
            for so in sorted(os.listdir(dyn)):
                if so.startswith(("_test", "xx", "_ctypes_test")):
                    continue
                with open(os.path.join(dyn, so), "rb") as sof:
                    needed = dependencies.elf_needed(sof.read())
                for lib in needed:
                    found = self._find_lib(trees, lib)
                    if found is not None:
                        self._copy_with_libs(trees, stage, *found)
            kver, _, index = self._kernel_modules(ktree)
            plan = self._write_modules(stage, ktree, kver, index, GUEST_MODULES)
            self._write_init(stage, init_script.INIT_SCRIPT)

            # Stage 1 for rootfs.vhd: busybox + block modules.
            s1 = os.path.join(tmp, "stage1")
            os.makedirs(s1)
            self._skeleton(s1, trees["busybox-static"])
            self._write_modules(s1, ktree, kver, index, STAGE1_MODULES)
            self._write_init(s1, init_script.INIT_SCRIPT)
            os.makedirs(os.path.join(s1, "newroot"))
            with open(os.path.join(s1, init_script.STAGE1_MARKER.lstrip("/")), "w") as f:
                f.write("")

            floor = os.path.join(tmp, "floor")
            os.makedirs(floor)
            for d in ("proc", "sys", "dev", "bin"):
                os.makedirs(os.path.join(floor, d))
            _copy(os.path.join(trees["busybox-static"], "bin/busybox"), os.path.join(floor, "bin/busybox"))
            for applet in ("sh", "cut", "poweroff", "mount", "echo"):
                os.symlink("busybox", os.path.join(floor, "bin", applet))
            self._write_init(floor, init_script.FLOOR_INIT_SCRIPT)

            kernel_src = os.path.join(ktree, "boot")
            vmlinuz = next(f for f in os.listdir(kernel_src) if f.startswith("vmlinuz-"))
            shutil.copy2(os.path.join(kernel_src, vmlinuz), os.path.join(tmp, "kernel"))
            self.progress("    vmlinux (uncompressed kernel)")
            with open(os.path.join(tmp, "kernel"), "rb") as kf:
                elf = decompress_kernel(kf.read())
            with open(os.path.join(tmp, "vmlinux"), "wb") as vf:
                vf.write(elf)

            meta = {
                "key": key,
                "kernel_package": kpkg.name,
                "kernel_version": kpkg.version,
                "kernel_release": kver,
                "packages": {p.name: p.version for p in pkgs},
                "modules": [dependencies.module_name(m) for m in plan.load_order],
                "builtin_modules": list(plan.builtin),
            }
            with open(os.path.join(tmp, ".meta.json"), "w") as f:
                json.dump(meta, f, indent=1)
            if os.path.isdir(base):
                shutil.rmtree(base)
            os.rename(tmp, base)
            os.makedirs(tmp)  # so the context manager's cleanup has something to remove
        # Older bases are dead weight once a new one exists.
        for name in os.listdir(self.cache):
            if name.startswith("base-") and name != f"base-{key}":
                shutil.rmtree(os.path.join(self.cache, name), ignore_errors=True)
        return base, meta

    # -- final images -------------------------------------------------------------------------------

    def _add_python(self, trees: dict[str, str], stage: str) -> int:
        """Copy the stdlib files the agent's imports load in the guest's Python, then precompile.

        The guest's own interpreter (it runs on the build host) does both: its builtin modules differ
        from the host Python's, and its .pyc magic is the one that counts."""
        with _temp_dir(self.cache, ".pyfull-") as tmp:
            for pkg in ("libpython3.11-minimal", "libpython3.11-stdlib"):
                src = os.path.join(trees[pkg], PYTHON_LIB)
                shutil.copytree(src, os.path.join(tmp, PYTHON_LIB), symlinks=True, dirs_exist_ok=True)
            agent_dir = os.path.join(stage, init_script.AGENT_DIR.lstrip("/"))
            names = sorted(dependencies.scan_package_imports(agent_dir) | set(dependencies.STARTUP_MODULES))
            env = {
                "PYTHONHOME": os.path.join(tmp, "usr"),
                "PYTHONPATH": agent_dir,
                "PATH": "/usr/bin:/bin",
                "LC_ALL": "C.UTF-8",
            }
            python = os.path.join(trees["python3.11-minimal"], GUEST_PYTHON.lstrip("/"))
            proc = _run(
                [python, "-B", "-s", "-c", dependencies.TRACE_SCRIPT], input=json.dumps(names), env=env
            )
            files = json.loads(proc.stdout.strip().splitlines()[-1])
            pylib = os.path.join(tmp, PYTHON_LIB)
            rels = sorted({os.path.relpath(f, pylib) for f in files if f.startswith(pylib + os.sep)})
            for rel in rels:
                _copy(os.path.join(pylib, rel), os.path.join(stage, PYTHON_LIB, rel))
            self.progress(f"    {len(rels)} stdlib files; precompiling")
            del env["PYTHONPATH"]
            compile_cmd = [python, "-s", "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash"]
            # Stdlib: sourceless .pyc beside where the .py was (saves ~3 MB of initrd and a stat per
            # import); unchecked-hash pycs are never re-validated against mtimes.
            stdlib = os.path.join(stage, PYTHON_LIB)
            _run([*compile_cmd, "-b", "-s", stage, "-p", "/", stdlib], env=env)
            for dirpath, _dirs, filenames in os.walk(stdlib):
                for fn in filenames:
                    if fn.endswith(".py") and os.path.exists(os.path.join(dirpath, fn + "c")):
                        os.unlink(os.path.join(dirpath, fn))
            # The agent keeps its sources so tracebacks from the guest show code.
            _run([*compile_cmd, "-s", stage, "-p", "/", agent_dir], env=env)
            return len(rels)

    def build_final(
        self, base: str, meta: dict[str, object], trees: dict[str, str], kpkg: Package
    ) -> BuildResult:
        agent_hash = hash_tree(self.agent_root, AGENT_PARTS)
        key = final_key(str(meta["key"]), agent_hash)
        result = BuildResult(self.out)
        stamp = os.path.join(self.out, ".final-key")
        outputs = ("kernel", "vmlinux", "initrd.img", "rootfs.vhd", "vhd-initrd.img", "floor-initrd.img")
        try:
            with open(stamp) as f:
                current = f.read().strip()
        except FileNotFoundError:
            current = ""
        if (
            current == key
            and not self.force
            and all(os.path.exists(os.path.join(self.out, o)) for o in outputs)
        ):
            self.step(f"images {key}: up to date")
            result.files = {o: os.path.join(self.out, o) for o in outputs}
            return result
        self.step(f"images {key}: agent {agent_hash[:12]}, python stdlib, initrd, rootfs.vhd")
        with _temp_dir(self.cache, ".final-") as tmp:
            stage = os.path.join(tmp, "root")
            shutil.copytree(os.path.join(base, "root"), stage, symlinks=True)
            agent_dst = os.path.join(stage, init_script.AGENT_DIR.lstrip("/"), "hcsshim")
            for part in AGENT_PARTS:
                src = os.path.join(self.agent_root, part)
                dst = os.path.join(agent_dst, part)
                if os.path.isdir(src):
                    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    os.makedirs(agent_dst, exist_ok=True)
                    shutil.copy2(src, dst)
            self.progress("    tracing the agent's stdlib imports with the guest's python")
            n_py = self._add_python(trees, stage)
            for name in ("kernel", "vmlinux"):
                shutil.copy2(os.path.join(base, name), os.path.join(tmp, name))
            self.progress("    initrd.img")
            self._cpio(stage, os.path.join(tmp, "initrd.img"))
            self._cpio(os.path.join(base, "stage1"), os.path.join(tmp, "vhd-initrd.img"))
            self._cpio(os.path.join(base, "floor"), os.path.join(tmp, "floor-initrd.img"))
            self.progress("    rootfs.vhd")
            try:
                make_ext4(stage, os.path.join(tmp, "rootfs.vhd"), label="hcsshim-uvm")
            except Ext4Error as e:
                raise ImageError(str(e)) from e
            vhd.append_footer_to_path(os.path.join(tmp, "rootfs.vhd"))
            manifest = dict(meta)
            manifest.update({"final_key": key, "agent_hash": agent_hash, "python_files": n_py})
            with open(os.path.join(tmp, "manifest.json"), "w") as f:
                json.dump(manifest, f, indent=1)
            os.makedirs(self.out, exist_ok=True)
            # Each file appears whole (rename) so a VM booting meanwhile sees old or new, never half.
            for name in (*outputs, "manifest.json"):
                os.replace(os.path.join(tmp, name), os.path.join(self.out, name))
                result.files[name] = os.path.join(self.out, name)
                result.rebuilt.append(name)
            with open(stamp + ".tmp", "w") as f:
                f.write(key)
            os.replace(stamp + ".tmp", stamp)
        return result

    def _cpio(self, root: str, dst: str) -> None:
        buf = io.BytesIO()
        cpio.write_tree(root, buf)
        with open(dst, "wb") as f:
            f.write(compress_initrd(buf.getvalue()))

    def build(self) -> BuildResult:
        t0 = time.monotonic()
        os.makedirs(self.cache, exist_ok=True)
        # Two builds at once (make image from two shells) would race on the same cache entries.
        lock_fd = os.open(os.path.join(self.cache, "build.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.progress("waiting for another `hcsshim uvm build` on this directory")
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
            result = self._build()
        finally:
            os.close(lock_fd)
        result.seconds = time.monotonic() - t0
        self.progress(f"done in {result.seconds:.1f}s: {self.out}")
        return result

    def _build(self) -> BuildResult:
        self.step(
            f"resolve packages ({self.kernel_meta} + {len(USERLAND_PACKAGES)} userland) into {self.out}"
        )
        kpkg, pkgs = self.resolve()
        self.progress(f"    kernel: {kpkg.name} {kpkg.version}")
        self.download(pkgs)
        trees = self.extract(pkgs)
        base, meta = self.build_base(kpkg, pkgs, trees)
        result = self.build_final(base, meta, trees, kpkg)
        for name, path in sorted(result.files.items()):
            self.progress(f"    {name:18} {human(os.path.getsize(path))}")
        return result


# ---------------------------------------------------------------------------------------------------
# check


@dataclass(frozen=True)
class CheckItem:
    name: str
    ok: bool
    detail: str


def check(out: str | None = None, *, host_tools: bool = True) -> list[CheckItem]:
    """What a VM boot needs, present or not."""
    out = os.path.abspath(out or default_boot_files_path())
    items: list[CheckItem] = []
    for name, why in (
        ("kernel", "vmlinuz"),
        ("vmlinux", "uncompressed kernel (PVH boot, 2 s faster under TCG)"),
        ("initrd.img", "initramfs with the agent"),
        ("rootfs.vhd", "ext4 + VHD footer with the agent"),
        ("vhd-initrd.img", "stage 1 for rootfs.vhd boots"),
        ("floor-initrd.img", "benchmark floor"),
    ):
        p = os.path.join(out, name)
        ok = os.path.isfile(p) and os.path.getsize(p) > 0
        detail = f"{why}: {human(os.path.getsize(p))}" if ok else f"{why}: missing ({p})"
        if ok and name == "rootfs.vhd" and not vhd.is_fixed_vhd(p):
            ok, detail = False, f"{p} has no valid fixed VHD footer"
        items.append(CheckItem(name, ok, detail))
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest):
        try:
            with open(manifest) as f:
                m = json.load(f)
            current = hash_tree(agent_source_root(), AGENT_PARTS)
            fresh = m.get("agent_hash") == current
            items.append(
                CheckItem(
                    "agent",
                    fresh,
                    "agent in the image matches the sources" if fresh else "agent sources changed: rebuild",
                )
            )
        except (OSError, ValueError) as e:
            items.append(CheckItem("manifest.json", False, f"unreadable: {e}"))
    else:
        items.append(CheckItem("manifest.json", False, "missing: run `hcsshim uvm build`"))
    if host_tools:
        for tool in ("apt-get", "apt-cache", "dpkg-deb", "mkfs.ext4", "qemu-system-x86_64"):
            found = shutil.which(tool)
            items.append(
                CheckItem(tool, found is not None, found or "not on PATH (scripts/setup.sh installs it)")
            )
    return items


def build(
    out: str | None = None,
    *,
    force: bool = False,
    kernel_package: str = DEFAULT_KERNEL_PACKAGE,
    progress: Progress | None = None,
) -> BuildResult:
    return Builder(out, kernel_package=kernel_package, force=force, progress=progress).build()


def build_floor_initrd(out: str | None = None, progress: Progress | None = None) -> str:
    """Path of floor-initrd.img (building the image first when it is missing)."""
    path = os.path.join(os.path.abspath(out or default_boot_files_path()), "floor-initrd.img")
    if not os.path.exists(path):
        build(out, progress=progress)
    return path
