"""The layering of src/hcsshim, held by reading every module's imports with ast.

The rules are the "must not" column of the layout table (README.md, docs/CONTRACTS.md): leaves import
nothing of ours, the guest (copied into the UVM image) only the stdlib and the wire formats, lower
layers never import higher ones, and the runtime never imports the image builder. An edge that
breaks a rule today and is not fixed yet is listed in KNOWN_VIOLATIONS with its reason; the test
fails on any other forbidden edge, and on a listed edge that no longer exists, so the list only
shrinks.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import hcsshim
from hcsshim.image import builder as image_builder

SRC = Path(hcsshim.__file__).parent
STDLIB = frozenset(sys.stdlib_module_names)


@dataclass(frozen=True)
class Rule:
    """Modules under ``scope`` may import, of ours, only modules under ``allowed`` (when set) and
    none under ``forbidden``; with ``stdlib_only`` every other import must be the stdlib's."""

    name: str
    scope: tuple[str, ...]
    allowed: tuple[str, ...] | None = None
    forbidden: tuple[str, ...] = ()
    stdlib_only: bool = False
    exempt: tuple[str, ...] = ()


def _h(*names: str) -> tuple[str, ...]:
    return tuple(f"hcsshim.{n}" if n else "hcsshim" for n in names)


# What a guest-side module may import of ours: the wire formats the image carries.
_GUEST_VISIBLE = _h("hvsock", "gcs.protocol", "loopwatch")


def _exact_or_under(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _allowed(module: str, allowed: tuple[str, ...]) -> bool:
    """``module`` is allowed, under an allowed one, or a package above one (importing
    hcsshim.gcs.protocol runs hcsshim/gcs/__init__.py anyway)."""
    return _exact_or_under(module, allowed) or any(p.startswith(module + ".") for p in allowed)


RULES: tuple[Rule, ...] = (
    Rule("hvsock is a stdlib-only leaf", _h("hvsock"), allowed=_h("hvsock"), stdlib_only=True),
    Rule("errdefs imports nothing of ours", _h("errdefs"), allowed=_h("errdefs")),
    Rule("settings is a stdlib-only leaf", _h("settings"), allowed=_h("settings"), stdlib_only=True),
    Rule("loopwatch is a stdlib-only leaf", _h("loopwatch"), allowed=_h("loopwatch"), stdlib_only=True),
    Rule("procfs is a stdlib-only leaf", _h("procfs"), allowed=_h("procfs"), stdlib_only=True),
    Rule(
        "the guest imports only the stdlib, hvsock, gcs.protocol and loopwatch",
        _h("guest"),
        allowed=(*_GUEST_VISIBLE, *_h("guest")),
        stdlib_only=True,
    ),
    Rule(
        "gcs.protocol is a stdlib-only wire format",
        _h("gcs.protocol"),
        allowed=(*_GUEST_VISIBLE,),
        stdlib_only=True,
    ),
    Rule("gcs imports nothing the guest cannot", _h("gcs"), allowed=(*_GUEST_VISIBLE, *_h("gcs"))),
    Rule(
        "hcs knows nothing of the bridge, the agent, UVMs or containerd",
        _h("hcs"),
        forbidden=_h("gcs", "guest", "uvm", "shim", "cli", "snapshotter", "api.containerd"),
    ),
    Rule("schema does no upward imports", _h("schema"), allowed=_h("schema", "hvsock", "errdefs")),
    Rule("annotations does no upward imports", _h("annotations"), allowed=_h("annotations", "errdefs")),
    Rule("oci does no upward imports", _h("oci"), allowed=_h("oci", "annotations", "errdefs")),
    Rule(
        "builder does no upward imports",
        _h("builder"),
        allowed=_h("builder", "schema", "annotations", "oci", "hvsock", "errdefs"),
    ),
    Rule("layers does no upward imports", _h("layers"), allowed=_h("layers", "errdefs", "settings")),
    Rule("ttrpc does no upward imports", _h("ttrpc"), allowed=_h("ttrpc", "api", "errdefs")),
    Rule(
        "uvm does not speak ttrpc",
        _h("uvm"),
        forbidden=_h("ttrpc", "shim", "cli", "servicevm", "api.containerd"),
    ),
    Rule("uvm goes through the ComputeSystem interface", _h("uvm"), forbidden=_h("hcs.qemu", "hcs.windows")),
    Rule("network knows nothing of containerd's services", _h("network"), forbidden=_h("shim", "api", "cli")),
    Rule(
        "snapshotter knows nothing of the Task API or of UVMs",
        _h("snapshotter"),
        forbidden=_h("shim", "uvm", "cli", "servicevm"),
    ),
    Rule(
        "servicevm sits on uvm and layers, below the snapshotter daemon's composition in cli",
        _h("servicevm"),
        allowed=_h("servicevm", "uvm", "hcs", "gcs", "layers", "errdefs", "settings"),
    ),
    Rule(
        "the guest half of a service VM conversion imports only the stdlib and layers",
        _h("servicevm.guest_convert"),
        allowed=_h("layers"),
        stdlib_only=True,
    ),
    Rule(
        "the shim does not know which backend it runs on", _h("shim"), forbidden=_h("hcs.qemu", "hcs.windows")
    ),
    Rule(
        "the runtime does not import the image builder",
        ("hcsshim",),
        forbidden=_h("image"),
        exempt=_h("image", "cli"),
    ),
)

# (importer, imported) -> why it is still there. Remove an entry when its edge goes.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Source:
    text: str
    is_package: bool = False


def load_tree() -> dict[str, Source]:
    return dict(_load_tree(SRC, "hcsshim"))


@functools.cache
def _load_tree(root: Path, package: str) -> Mapping[str, Source]:
    modules: dict[str, Source] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = [package, *rel.parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = Source(path.read_text(), is_package)
    return modules


@functools.cache
def _parsed_imports(module: str, text: str, is_package: bool) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(module, names): ``import m`` is (m, ()), ``from m import a, b`` is (m, (a, b)), with
    relative imports made absolute."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for node in ast.walk(ast.parse(text, filename=module)):
        if isinstance(node, ast.Import):
            out.extend((a.name, ()) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            out.append((target, tuple(a.name for a in node.names)))
    return tuple(out)


def imports_of(module: str, source: Source, known: Iterable[str]) -> set[str]:
    """Absolute names of what ``module`` imports, anywhere in it (function bodies, TYPE_CHECKING
    blocks too); ``from pkg import name`` counts as pkg.name when that is a module of ours."""
    known_set = known if isinstance(known, (set, frozenset, dict)) else set(known)
    out: set[str] = set()
    for target, names in _parsed_imports(module, source.text, source.is_package):
        submodules = {f"{target}.{n}" for n in names if f"{target}.{n}" in known_set}
        out.update(submodules)
        if not names or len(submodules) < len(names):
            out.add(target)
    return out


def violations(modules: Mapping[str, Source], rules: Iterable[Rule] = RULES) -> dict[tuple[str, str], str]:
    """(importer, imported) -> the rule it breaks, for every forbidden edge in ``modules``."""
    found: dict[tuple[str, str], str] = {}
    for module, source in modules.items():
        targets = imports_of(module, source, modules)
        for rule in rules:
            if not _exact_or_under(module, rule.scope) or _exact_or_under(module, rule.exempt):
                continue
            for target in sorted(targets):
                ours = target == "hcsshim" or target.startswith("hcsshim.")
                if ours:
                    bad = (
                        rule.allowed is not None and not _allowed(target, rule.allowed)
                    ) or _exact_or_under(target, rule.forbidden)
                else:
                    bad = rule.stdlib_only and target.split(".")[0] not in STDLIB
                if bad:
                    found.setdefault((module, target), rule.name)
    return found


def compare(
    found: Mapping[tuple[str, str], str], known: Mapping[tuple[str, str], str]
) -> tuple[list[str], list[str]]:
    """(forbidden edges not listed as known, listed edges that no longer occur), as report lines."""
    new = [f"  {a} -> {b}: {rule}" for (a, b), rule in sorted(found.items()) if (a, b) not in known]
    gone = [f"  {a} -> {b}" for a, b in sorted(known) if (a, b) not in found]
    return new, gone


def test_no_forbidden_import_beyond_the_known_ones() -> None:
    new, _ = compare(violations(load_tree()), KNOWN_VIOLATIONS)
    assert not new, "forbidden imports:\n" + "\n".join(new)


def test_known_violations_still_exist() -> None:
    _, gone = compare(violations(load_tree()), KNOWN_VIOLATIONS)
    assert not gone, "fixed, remove from KNOWN_VIOLATIONS:\n" + "\n".join(gone)


def test_compare_flags_a_known_violation_that_was_fixed() -> None:
    # The list is empty today; a listed edge made with a fake module shows both directions.
    edge = ("hcsshim.shim.fake_module", "hcsshim.hcs.qemu.system")
    known = {**KNOWN_VIOLATIONS, edge: "fake: orphan cleanup knows QEMU's state dir"}
    with_edge = _with(edge[0], "from hcsshim.hcs.qemu.system import state_dir_for\n")
    new, gone = compare(violations(with_edge), known)
    assert not new and not gone
    without_edge = _with(edge[0], "import os\n")  # the importer without its edge
    new, gone = compare(violations(without_edge), known)
    assert gone == [f"  {edge[0]} -> {edge[1]}"]
    assert new == compare(violations(load_tree()), KNOWN_VIOLATIONS)[0]


def _with(module: str, text: str, *, is_package: bool = False) -> dict[str, Source]:
    tree = load_tree()
    tree[module] = Source(text, is_package)
    return tree


def test_checker_catches_hcs_importing_the_bridge() -> None:
    found = violations(_with("hcsshim.hcs.qemu.fake_backend", "import hcsshim.gcs.bridge\n"))
    assert found[("hcsshim.hcs.qemu.fake_backend", "hcsshim.gcs.bridge")].startswith("hcs knows nothing")


def test_checker_catches_the_guest_importing_outside_stdlib_and_wire_formats() -> None:
    text = "from __future__ import annotations\nimport json\nimport yaml\nfrom hcsshim.gcs import bridge\n"
    found = violations(_with("hcsshim.guest.fake_module", text))
    assert ("hcsshim.guest.fake_module", "yaml") in found
    assert ("hcsshim.guest.fake_module", "hcsshim.gcs.bridge") in found
    assert ("hcsshim.guest.fake_module", "json") not in found
    assert ("hcsshim.guest.fake_module", "__future__") not in found


def test_checker_resolves_relative_and_function_level_imports() -> None:
    # A lazy import inside a function is still an edge; `from .. import x` resolves against the package.
    text = "def f() -> None:\n    from hcsshim.image import builder\n\nfrom ..gcs import bridge\n"
    found = violations(_with("hcsshim.shim.fake_module", text))
    assert (
        found[("hcsshim.shim.fake_module", "hcsshim.image.builder")]
        == "the runtime does not import the image builder"
    )
    leaf = violations(_with("hcsshim.hvsock.fake_module", "from ..gcs import protocol\n"))
    assert ("hcsshim.hvsock.fake_module", "hcsshim.gcs.protocol") in leaf


def test_checker_catches_the_snapshotter_importing_a_service_vm() -> None:
    found = violations(_with("hcsshim.snapshotter.fake_module", "from hcsshim.servicevm import converter\n"))
    assert ("hcsshim.snapshotter.fake_module", "hcsshim.servicevm.converter") in found
    shim = violations(_with("hcsshim.servicevm.fake_module", "from hcsshim.shim import host\n"))
    assert ("hcsshim.servicevm.fake_module", "hcsshim.shim.host") in shim


def test_the_image_carries_every_module_the_guest_imports() -> None:
    # The image copies image_builder.AGENT_PARTS; the agent's own imports, followed transitively, must
    # stay inside them or the agent fails to start in the UVM.
    modules = load_tree()
    todo = [m for m in modules if _exact_or_under(m, _h("guest"))]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(t for t in imports_of(module, modules[module], modules) if t in modules)
    parts = {p.removesuffix(".py") for p in image_builder.AGENT_PARTS}
    outside = sorted(m for m in seen if m != "hcsshim" and m.split(".")[1] not in parts)
    assert not outside, f"the guest imports modules the image does not carry: {outside}"
    assert "hcsshim.hvsock.session" in seen
