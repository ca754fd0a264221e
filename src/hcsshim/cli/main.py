"""The `hcsshim` command: a thin dispatcher over subcommand modules.

Each subcommand module exposes `add_parser(subparsers)` that registers its parser and sets
`func` (taking the parsed namespace, returning an exit code)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (subcommand module, help) - modules are imported lazily so `hcsshim doc` does not pay for QEMU code.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "doc": ("hcsshim.cli.doc", "print the HCS schema2 document a spec would become"),
    "uvm": ("hcsshim.cli.uvm", "build, check and run utility VMs"),
    "install": (
        "hcsshim.cli.install",
        "add the runtime handler to containerd's config, print a RuntimeClass",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="hcsshim", description="hcsshim for Python")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = args[0] if args and args[0] in SUBCOMMANDS else None
    for name, (module, help_text) in SUBCOMMANDS.items():
        if name == chosen:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text)
    ns = parser.parse_args(args)
    if ns.command is None:
        parser.print_help()
        return 2
    func = getattr(ns, "func", None)
    if func is None:
        parser.error(f"{ns.command}: not available")
    result: int = func(ns)
    return result


if __name__ == "__main__":
    sys.exit(main())
