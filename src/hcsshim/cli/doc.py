"""`hcsshim doc`: print the HCS schema2 document an OCI spec would become."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

OPTIONS_HELP = """\
--options FILE holds runhcs Options (containerd.runhcs.v1.Options) fields by their proto names,
either as a JSON object ({"vm_memory_size_in_mb": 2048, "sandbox_platform": "linux/amd64"}) or as
textproto-like lines `name = value` / `name: value` (# comments; strings may be quoted;
default_container_annotations as `default_container_annotations = key=value`, once per entry).
"""

DESCRIPTION = """\
Render the document hcsshim would send for a spec: `lcow-uvm` the utility VM's ComputeSystem (V1
pipeline of containerd-shim-runhcs-v1, or --pipeline v2 for containerd-shim-lcow-v2), `lcow-container`
the container document the guest receives, `wcow-container` a process-isolated (or --hyperv) Windows
container. Output is indented JSON; --compact prints the exact bytes HCS would receive.
Boot files: --boot-files DIR is scanned; without it the default boot files directory is scanned when it
exists, else the layout `hcsshim uvm build` writes (kernel, initrd.img, rootfs.vhd) is assumed.
Invalid annotations exit with status 2 and name the annotation on stderr.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doc",
        help="print the HCS schema2 document a spec would become",
        description=DESCRIPTION,
        epilog=OPTIONS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=("lcow-uvm", "lcow-container", "wcow-container"))
    parser.add_argument("--spec", required=True, help="OCI runtime spec (config.json)")
    parser.add_argument("--options", help="runhcs Options file (JSON or key=value lines, see below)")
    parser.add_argument(
        "--annotation",
        "-a",
        action="append",
        default=[],
        metavar="K=V",
        help="add or override a spec annotation",
    )
    parser.add_argument("--boot-files", metavar="DIR", help="boot files directory to scan (lcow-uvm)")
    parser.add_argument("--pipeline", choices=("v1", "v2"), default="v1", help="lcow-uvm builder pipeline")
    parser.add_argument("--id", default="", help="container id (default: the spec file's directory name)")
    parser.add_argument("--owner", default="hcsshim", help="Owner field of ComputeSystem documents")
    parser.add_argument(
        "--hyperv", action="store_true", help="wcow-container: Hyper-V isolated (HostedSystem)"
    )
    parser.add_argument("--compact", action="store_true", help="print the compact JSON HCS receives")
    parser.add_argument(
        "--warn-unknown", action="store_true", help="list unknown io.microsoft.* annotations on stderr"
    )
    parser.set_defaults(func=run)


def parse_options_text(text: str) -> dict[str, Any]:
    """Options from JSON or `name = value` lines (see OPTIONS_HELP)."""
    stripped = text.strip()
    if stripped.startswith("{"):
        data = json.loads(stripped)
        if not isinstance(data, dict):
            raise ValueError("options JSON must be an object")
        return data
    out: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        sep = "=" if "=" in line and (":" not in line or line.index("=") < line.index(":")) else ":"
        if sep not in line:
            raise ValueError(f"options line {number}: expected `name = value`")
        name, value = (part.strip() for part in line.split(sep, 1))
        if name == "default_container_annotations":
            key, _, val = _unquote(value).partition("=")
            out.setdefault(name, {})[key] = val
            continue
        out[name] = _scalar(value)
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _scalar(value: str) -> Any:
    if value in ("true", "false"):
        return value == "true"
    try:
        return int(value)
    except ValueError:
        return _unquote(value)


def _runtime_options(data: dict[str, Any]) -> Any:
    from hcsshim.builder import RuntimeOptions

    known = set(RuntimeOptions.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown runhcs option(s): {', '.join(unknown)}")
    enums = {"debug_type": ("NPIPE", "FILE", "ETW"), "sandbox_isolation": ("PROCESS", "HYPERVISOR")}
    for name, names in enums.items():
        if isinstance(data.get(name), str):
            data[name] = names.index(data[name].upper())
    return RuntimeOptions(**data)


def run(ns: argparse.Namespace) -> int:
    from hcsshim.annotations import AnnotationError, unknown_annotations
    from hcsshim.builder import BuilderError
    from hcsshim.oci import SpecError
    from hcsshim.schema import SchemaError

    try:
        document = _render(ns)
    except AnnotationError as exc:
        print(f"hcsshim doc: invalid annotation {exc.key}: {exc}", file=sys.stderr)
        return 2
    except (BuilderError, SpecError, SchemaError, ValueError, OSError) as exc:
        print(f"hcsshim doc: {exc}", file=sys.stderr)
        return 1
    text, annotations = document
    if ns.warn_unknown:
        for key in unknown_annotations(annotations):
            print(f"hcsshim doc: warning: unknown annotation {key}", file=sys.stderr)
    print(text)
    return 0


def _render(ns: argparse.Namespace) -> tuple[str, dict[str, str]]:
    from hcsshim import builder
    from hcsshim.oci import Spec

    with open(ns.spec, encoding="utf-8") as f:
        spec = Spec.from_dict(json.load(f))
    for item in ns.annotation:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--annotation {item!r}: expected KEY=VALUE")
        spec.annotations[key] = value
    options_data: dict[str, Any] = {}
    if ns.options:
        with open(ns.options, encoding="utf-8") as f:
            options_data = parse_options_text(f.read())
    options = _runtime_options(options_data)
    container_id = ns.id or os.path.basename(os.path.dirname(os.path.abspath(ns.spec))) or "container"
    indent = None if ns.compact else 2

    if ns.kind == "lcow-uvm":
        if ns.pipeline == "v2" and not options.sandbox_platform:
            options.sandbox_platform = "linux/amd64"
        default_root = ns.boot_files or _default_boot_root()
        root = builder.resolve_boot_files_root(options, spec.annotations, default_root)
        files = (
            _boot_file_names(root)
            if (ns.boot_files or os.path.isdir(root))
            else builder.DEFAULT_LINUX_BOOT_FILES
        )
        boot = builder.BootFiles(root=root, files=files)
        if ns.pipeline == "v1":
            doc, _ = builder.build_lcow_uvm_v1(
                owner=ns.owner,
                spec=spec,
                options=options,
                boot_files=boot,
                bundle_path=os.path.dirname(ns.spec),
            )
        else:
            doc, _ = builder.build_lcow_uvm_v2(
                owner=ns.owner,
                annotations=spec.annotations,
                options=options,
                boot_files=boot,
                devices=(spec.windows or {}).get("devices") or (),
                bundle_path=os.path.dirname(os.path.abspath(ns.spec)),
            )
        return doc.to_json(indent=indent), spec.annotations
    if ns.kind == "lcow-container":
        from hcsshim.annotations import expand_annotations

        spec.annotations = expand_annotations(spec.annotations)
        cdoc = builder.build_lcow_container_document(container_id, spec)
        return cdoc.to_json(indent=indent), spec.annotations
    if ns.hyperv:
        hdoc = builder.build_wcow_hyperv_container_document(
            container_id,
            spec,
            uvm_processor_count=options.vm_processor_count or 2,
            scale_cpu_limits_to_sandbox=options.scale_cpu_limits_to_sandbox,
        )
        return hdoc.to_json(indent=indent), spec.annotations
    wdoc = builder.build_wcow_process_container_document(container_id, spec, owner=ns.owner)
    return wdoc.to_json(indent=indent), spec.annotations


def _default_boot_root() -> str:
    from hcsshim.uvm.document import boot_files_path

    return boot_files_path()


def _boot_file_names(root: str) -> frozenset[str]:
    from hcsshim.uvm.document import boot_file_names

    return boot_file_names(root)
