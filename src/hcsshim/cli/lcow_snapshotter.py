"""``lcow-snapshotter``: the snapshotter daemon's composition root.

The snapshotter package may not boot UVMs; this module may import both, so it offers the daemon
every ``--convert-in`` choice: ``host`` (HostConverter), ``global-vm`` (one long-lived service VM)
and ``per-instance-vm`` (a service VM per layer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hcsshim.servicevm.converter import GlobalServiceVMConverter, PerInstanceServiceVMConverter
from hcsshim.snapshotter import daemon

CONVERTERS: Mapping[str, daemon.ConverterFactory] = {
    "host": daemon.host_converter,
    "global-vm": lambda _convert_dir: GlobalServiceVMConverter(),
    "per-instance-vm": lambda _convert_dir: PerInstanceServiceVMConverter(),
}


def main(argv: Sequence[str] | None = None) -> int:
    return daemon.main(argv, CONVERTERS)


if __name__ == "__main__":
    raise SystemExit(main())
