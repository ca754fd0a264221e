"""``containerd-shim-runhcs-v1``: the runtime ``io.containerd.runhcs.v1`` (start, delete, serve)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hcsshim.shim.entry import main as shim_main
from hcsshim.shim.kind import RUNHCS_V1


def main(argv: Sequence[str] | None = None) -> int:
    return shim_main(RUNHCS_V1, argv)


if __name__ == "__main__":
    sys.exit(main())
