"""Pure dependency resolution for the UVM image: kernel modules, ELF shared libraries, Python imports."""

from __future__ import annotations

import ast
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------------
# Kernel modules


def module_name(path: str) -> str:
    """`kernel/net/9p/9pnet_virtio.ko` -> `9pnet_virtio` (dashes and underscores are the same to modprobe)."""
    base = os.path.basename(path)
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


@dataclass(frozen=True)
class ModuleIndex:
    """modules.dep (path -> dependency paths) and modules.builtin (names built into the kernel)."""

    deps: Mapping[str, tuple[str, ...]]
    builtin: frozenset[str]

    @classmethod
    def parse(cls, modules_dep: str, modules_builtin: str = "") -> ModuleIndex:
        deps: dict[str, tuple[str, ...]] = {}
        for line in modules_dep.splitlines():
            if ":" not in line:
                continue
            path, _, rest = line.partition(":")
            deps[path.strip()] = tuple(rest.split())
        builtin = frozenset(module_name(p) for p in modules_builtin.split() if p.strip())
        return cls(deps, builtin)

    def path_of(self, name: str) -> str | None:
        wanted = name.replace("-", "_")
        for path in self.deps:
            if module_name(path) == wanted:
                return path
        return None


@dataclass(frozen=True)
class ModulePlan:
    load_order: tuple[str, ...]  # module paths, dependencies first
    builtin: tuple[str, ...]  # requested names that need no loading
    missing: tuple[str, ...]  # requested names the kernel has neither built in nor as a module


def resolve_modules(wanted: Iterable[str], index: ModuleIndex) -> ModulePlan:
    """The modules to insmod for `wanted`, each after its dependencies, each once."""
    order: list[str] = []
    seen: set[str] = set()
    builtin: list[str] = []
    missing: list[str] = []

    def visit(path: str, stack: tuple[str, ...]) -> None:
        if path in seen:
            return
        if path in stack:
            raise ValueError(f"module dependency cycle: {' -> '.join((*stack, path))}")
        for dep in index.deps.get(path, ()):
            visit(dep, (*stack, path))
        seen.add(path)
        order.append(path)

    for name in wanted:
        norm = name.replace("-", "_")
        if norm in index.builtin:
            builtin.append(norm)
            continue
        path = index.path_of(norm)
        if path is None:
            missing.append(norm)
            continue
        visit(path, ())
    return ModulePlan(tuple(order), tuple(builtin), tuple(missing))


# File systems first: a disk or share can appear only after its bus driver loads, so by then the
# file system it carries is already there even when the rest loads in the background.
_FS_FIRST = ("crc32c_generic", "ext4", "overlay", "9pnet_virtio", "9p")


def split_load_order(
    early: Iterable[str], wanted: Iterable[str], index: ModuleIndex
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(modules to load before anything else, the rest), both dependency-ordered, no module twice."""
    wanted = list(wanted)
    norm = {w.replace("-", "_") for w in wanted}
    first = resolve_modules([e for e in early if e.replace("-", "_") in norm], index).load_order
    ordered = [w for w in _FS_FIRST if w in norm] + [
        w for w in wanted if w.replace("-", "_") not in _FS_FIRST
    ]
    rest = tuple(p for p in resolve_modules(ordered, index).load_order if p not in first)
    return first, rest


def filtered_modules_dep(plan: ModulePlan, index: ModuleIndex) -> str:
    """modules.dep for only the modules in the image, so modprobe in the guest still works."""
    return "".join(f"{p}: {' '.join(index.deps.get(p, ()))}".rstrip() + "\n" for p in plan.load_order)


# ---------------------------------------------------------------------------------------------------
# ELF DT_NEEDED

_DT_NEEDED = 1
_DT_STRTAB = 5
_PT_LOAD = 1
_PT_DYNAMIC = 2


def elf_needed(data: bytes) -> list[str]:
    """Sonames a 64-bit little-endian ELF file needs (empty for static binaries and non-ELF data)."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    (e_phoff,) = struct.unpack_from("<Q", data, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, off)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return []
    needed_offsets: list[int] = []
    strtab_vaddr = 0
    off, size = dynamic
    for pos in range(off, off + size, 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        if tag == _DT_NEEDED:
            needed_offsets.append(val)
        elif tag == _DT_STRTAB:
            strtab_vaddr = val
    strtab = strtab_vaddr
    for vaddr, foff, fsz in loads:
        if vaddr <= strtab_vaddr < vaddr + fsz:
            strtab = strtab_vaddr - vaddr + foff
            break
    names = []
    for n in needed_offsets:
        end = data.index(b"\0", strtab + n)
        names.append(data[strtab + n : end].decode())
    return names


# ---------------------------------------------------------------------------------------------------
# Python imports


def imported_names(source: str, package: str | None = None) -> set[str]:
    """Absolute module names imported anywhere in `source` (including inside functions).

    `package` is the module's package, used to resolve relative imports."""
    names: set[str] = set()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                if package is None:
                    continue
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base:
                names.add(base)
                # `from pkg import sub` may name a submodule; importing a non-module name just fails.
                for alias in node.names:
                    if alias.name != "*":
                        names.add(f"{base}.{alias.name}")
    return names


def scan_package_imports(root: str) -> set[str]:
    """Module names imported by every .py file under `root` (a directory on sys.path)."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for fn in sorted(filenames):
            if not fn.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, fn), root)[:-3].replace(os.sep, ".")
            is_pkg = rel.endswith(".__init__") or rel == "__init__"
            mod = rel.removesuffix(".__init__")
            package = mod if is_pkg else mod.rpartition(".")[0]
            with open(os.path.join(dirpath, fn), encoding="utf-8") as f:
                found |= imported_names(f.read(), package or None)
            found.add(mod)
    return found


# Run by the guest's own interpreter (on the build host) to list the files a set of imports loads:
# the guest's builtin modules differ from the host's, so only it can say which files it needs.
TRACE_SCRIPT = r"""
import importlib, json, sys
names = json.loads(sys.stdin.read())
for name in names:
    try:
        importlib.import_module(name)
    except BaseException:
        pass
files = set()
for mod in list(sys.modules.values()):
    f = getattr(mod, "__file__", None)
    if f:
        files.add(f)
print(json.dumps(sorted(files)))
"""

# Imported by Python itself at startup or by `-m`, so the trace must not depend on the agent for them.
STARTUP_MODULES = (
    "encodings",
    "encodings.utf_8",
    "encodings.latin_1",
    "encodings.ascii",
    "encodings.aliases",
    "codecs",
    "io",
    "abc",
    "site",
    "os",
    "stat",
    "posixpath",
    "genericpath",
    "_collections_abc",
    "_sitebuiltins",
    "runpy",
    "importlib",
    "importlib.util",
    "importlib.machinery",
    "pkgutil",
    # Imported lazily (module __getattr__ or inside functions), so tracing the agent's top-level
    # imports misses them: asyncio's run_in_executor needs the thread pool, socket needs idna.
    "concurrent.futures.thread",
    "encodings.idna",
    "stringprep",
)
