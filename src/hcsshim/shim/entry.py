"""The ``main`` of every ``containerd-shim-*`` entry point: flags, then start, delete or serve."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hcsshim.shim.flags import FlagError, parse
from hcsshim.shim.kind import ShimKind


def main(kind: ShimKind, argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        flags = parse(args)
    except FlagError as exc:
        sys.stderr.write(f"{kind.binary}: {exc}\n")
        return 2
    if flags.action == "serve":
        from hcsshim.shim.server import serve

        return serve(flags, kind)
    from hcsshim.shim.manager import run

    code, out, err = run(flags, kind=kind)
    if out:
        sys.stdout.buffer.write(out)
        sys.stdout.buffer.flush()
    if err:
        sys.stderr.write(err)
    return code
