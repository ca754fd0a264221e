"""`hcsshim uvm ...`: build and check the UVM boot files (and, later, run a UVM).

Each subcommand is one `_add_<name>(sub)` function that registers its parser and sets `func`;
adding a subcommand means writing one such function and listing it in SUBCOMMANDS."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

Subparsers = Any  # argparse's _SubParsersAction is private


def _print_check(out: str | None) -> int:
    from hcsshim.image import builder

    items = builder.check(out)
    width = max(len(i.name) for i in items)
    for item in items:
        print(f"{'ok     ' if item.ok else 'MISSING'} {item.name:{width}}  {item.detail}")
    print(_accel_line(builder.default_boot_files_path() if out is None else out))
    bad = [i.name for i in items if not i.ok]
    if bad:
        print(f"missing or stale: {', '.join(bad)}; run `hcsshim uvm build`", file=sys.stderr)
        return 1
    return 0


def _accel_line(boot_files: str) -> str:
    """The QEMU a UVM would run on and the accelerator it would get, with the reason."""
    import asyncio
    import os

    from hcsshim.hcs.qemu import accel
    from hcsshim.hcs.qemu.system import qemu_binary

    kernel = os.path.join(boot_files, "vmlinux")
    if not os.path.isfile(kernel):
        kernel = os.path.join(boot_files, "kernel")
    qemu = qemu_binary()
    chosen = asyncio.run(accel.choose(qemu, kernel))
    return f"qemu    {qemu} {chosen.qemu_version}; accel {chosen.spec} ({chosen.why})"


def _cmd_build(ns: argparse.Namespace) -> int:
    from hcsshim.image import builder

    if ns.check:
        return _print_check(ns.out)
    try:
        builder.build(ns.out, force=ns.force, kernel_package=ns.kernel_package)
    except (builder.ImageError, OSError) as e:
        print(f"hcsshim uvm build: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_check(ns: argparse.Namespace) -> int:
    return _print_check(ns.out)


def _out_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        default=None,
        help="boot files directory (default: $HCSSHIM_BOOT_FILES or /var/cache/hcsshim/uvm)",
    )


def _add_build(sub: Subparsers) -> None:
    p = sub.add_parser("build", help="build kernel, initrd.img and rootfs.vhd from Debian packages")
    _out_arg(p)
    p.add_argument("--force", action="store_true", help="rebuild the userland and images even when cached")
    p.add_argument("--check", action="store_true", help="only say what is missing (exit 1 if anything is)")
    p.add_argument(
        "--kernel-package",
        default="linux-image-amd64",
        help="Debian kernel (meta) package; linux-image-cloud-amd64 lacks 9p (no Plan9 shares)",
    )
    p.set_defaults(func=_cmd_build)


def _add_check(sub: Subparsers) -> None:
    p = sub.add_parser("check", help="say which boot files are missing or stale (exit 1 if any)")
    _out_arg(p)
    p.set_defaults(func=_cmd_check)


def _cmd_template(ns: argparse.Namespace) -> int:
    import asyncio
    import os

    from hcsshim.uvm.template import TemplateStore

    store = TemplateStore(ns.root)
    if ns.template_command == "list":
        entries = store.list()
        if not entries:
            print(f"no uvm templates in {store.root}")
        for e in entries:
            used = os.stat(os.path.join(e["dir"], "template.json")).st_mtime
            size = sum(os.stat(os.path.join(e["dir"], f)).st_blocks * 512 for f in os.listdir(e["dir"]))
            print(f"{e['key']}  {size / (1 << 20):7.1f} MiB on disk  last used {_ago(used)}  {e['dir']}")
        return 0
    if ns.template_command == "prune":
        removed = store.remove_all() if ns.all else store.prune_stale(keep=ns.keep)
        for key in removed:
            print(f"removed {key}")
        from hcsshim.uvm.pool import Pool

        # Pooled clones of a removed template would keep its memory file alive: they go too.
        for entry in Pool(store=store).sweep():
            print(f"removed pooled clone {entry}")
        return 0
    from hcsshim.annotations.parse import AnnotationError
    from hcsshim.hcs import HcsError
    from hcsshim.shim.host import build_uvm_document
    from hcsshim.uvm.template import TemplateUnavailable

    annotations = dict(a.split("=", 1) for a in ns.annotation)
    try:
        document = build_uvm_document("hcsshim-uvm-template", {"annotations": annotations}, None)
        key, directory = asyncio.run(store.build_for(document))
    except (AnnotationError, HcsError, TemplateUnavailable, OSError) as e:
        print(f"hcsshim uvm template build: {e}", file=sys.stderr)
        return 1
    print(f"{key}  {directory}")
    return 0


def _ago(when: float) -> str:
    import time

    seconds = max(0, int(time.time() - when))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m ago" if seconds >= 3600 else f"{seconds // 60}m ago"
    )


def _add_template(sub: Subparsers) -> None:
    p = sub.add_parser("template", help="list, build ahead of time, or prune UVM templates")
    p.add_argument("--root", default=None, help="template directory (default: beside the boot files)")
    tsub = p.add_subparsers(dest="template_command", metavar="TEMPLATE_COMMAND", required=True)
    tsub.add_parser("list", help="the saved templates, their size on disk and last use")
    build = tsub.add_parser(
        "build", help="build the template runhcs-v1 pods use (with these annotations), so no pod waits for it"
    )
    build.add_argument(
        "--annotation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_key_value,
        help="a pod annotation",
    )
    prune = tsub.add_parser("prune", help="remove stale templates and the least recently used beyond --keep")
    prune.add_argument("--keep", type=int, default=8, help="how many to keep (default 8)")
    prune.add_argument("--all", action="store_true", help="remove every template")
    p.set_defaults(func=_cmd_template)


def _cmd_pool(ns: argparse.Namespace) -> int:
    import asyncio
    import time

    from hcsshim.uvm.pool import Pool
    from hcsshim.uvm.template import TemplateStore

    pool = Pool(ns.root, TemplateStore(ns.templates))
    if ns.pool_command == "list":
        entries = pool.entries()
        if not entries:
            print(f"no pooled uvms in {pool.root}")
        for e in entries:
            age = _ago(float(e.get("created") or time.time()))
            print(
                f"{e['key']}  {e['state']:8}  pid {e.get('pid', '-')!s:>7}  {e.get('memory_mb', 0)} MB  "
                f"parked {age}  {e['dir']}"
            )
        return 0
    if ns.pool_command == "drain":
        for path in pool.drain(ns.key):
            print(f"removed {path}")
        return 0
    from hcsshim.annotations.parse import AnnotationError
    from hcsshim.hcs import HcsError
    from hcsshim.shim.host import build_uvm_document, pool_config
    from hcsshim.uvm.document import uvm_document
    from hcsshim.uvm.template import PoolConfig, TemplateUnavailable, restored_document

    spec = {"annotations": dict(a.split("=", 1) for a in ns.annotation)}
    try:
        configured = pool_config(spec, None)
        config = PoolConfig(
            size=configured.size if ns.size is None else ns.size,
            memory_mb=configured.memory_mb if ns.memory_mb is None else ns.memory_mb,
        )
        document = uvm_document(build_uvm_document("hcsshim-uvm-pool", spec, None), "hcsshim-uvm-pool")
        key, directory = asyncio.run(pool.store.build_for(document))
        added = asyncio.run(pool.fill(key, config, restored_document(document, key, directory)))
    except (AnnotationError, HcsError, TemplateUnavailable, OSError) as e:
        print(f"hcsshim uvm pool fill: {e}", file=sys.stderr)
        return 1
    print(f"{key}  {len(pool.ready(key))} ready ({added} added)")
    return 0


def _add_pool(sub: Subparsers) -> None:
    p = sub.add_parser("pool", help="list, fill or drain the warm pool of paused UVM clones")
    p.add_argument("--root", default=None, help="pool directory (default: $HCSSHIM_RUN_DIR/pool)")
    p.add_argument("--templates", default=None, help="template directory (default: beside the boot files)")
    psub = p.add_subparsers(dest="pool_command", metavar="POOL_COMMAND", required=True)
    psub.add_parser("list", help="the pooled clones: template key, state, QEMU pid, memory, age")
    fill = psub.add_parser(
        "fill", help="park clones of the UVM runhcs-v1 pods use (with these annotations) up to --size, now"
    )
    fill.add_argument("--size", type=int, default=None, help="clones to keep (default: the annotation's)")
    fill.add_argument("--memory-mb", type=int, default=None, help="cap on their guest memory (0: none)")
    fill.add_argument(
        "--annotation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_key_value,
        help="a pod annotation",
    )
    drain = psub.add_parser("drain", help="stop the fillers, kill every pooled clone and remove the pool")
    drain.add_argument("--key", default=None, help="only this template key")
    p.set_defaults(func=_cmd_pool)


def _key_value(text: str) -> str:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return text


def _add_run(sub: Subparsers) -> None:
    from hcsshim.cli import uvm_run

    uvm_run.register(sub)


SUBCOMMANDS: list[Callable[[Subparsers], None]] = [_add_build, _add_check, _add_template, _add_pool, _add_run]


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("uvm", help="build, check and run utility VMs")
    sub = parser.add_subparsers(dest="uvm_command", metavar="UVM_COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
