"""``containerd-shim-lcow-v2``: the runtime ``io.containerd.lcow.v2`` (start, delete, serve).

The upstream V2 model: containerd's Sandbox API and Task v3 on one socket, a UVM built by the V2
pipeline, and each sandbox a pod in that UVM (``hcsshim.shim.service_sandbox``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hcsshim.shim.entry import main as shim_main
from hcsshim.shim.kind import LCOW_V2


def main(argv: Sequence[str] | None = None) -> int:
    return shim_main(LCOW_V2, argv)


if __name__ == "__main__":
    sys.exit(main())
