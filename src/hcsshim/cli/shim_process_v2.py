"""``containerd-shim-process-v2``: the runtime ``io.containerd.process.v2`` (start, delete, serve).

No UVM: the pod's containers run on this host under runc, driven by the same agent that runs inside
UVMs (``python -m hcsshim.guest``), started per pod by the shim."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hcsshim.shim.entry import main as shim_main
from hcsshim.shim.kind import PROCESS_V2


def main(argv: Sequence[str] | None = None) -> int:
    return shim_main(PROCESS_V2, argv)


if __name__ == "__main__":
    sys.exit(main())
