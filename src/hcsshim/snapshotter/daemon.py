"""``lcow-snapshotter``: the lcow snapshotter daemon (a containerd proxy plugin of type snapshot).

Where layer tars are parsed is the daemon's ``--convert-in`` choice, a LayerConverter built by the
composition root (hcsshim.cli.lcow_snapshotter, which may import the service VMs this package may
not) and handed to ``run()``; this module alone knows only the host converter."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

from hcsshim.layers.convert import HostConverter, LayerConverter
from hcsshim.snapshotter.core import DEFAULT_SCRATCH_GB, Snapshotter
from hcsshim.snapshotter.service import serve

DEFAULT_ROOT = "/var/lib/hcsshim-lcow-snapshotter"
DEFAULT_ADDRESS = "/run/hcsshim-lcow-snapshotter/snapshotter.sock"
DEFAULT_CONVERT_IN = "host"

ConverterFactory = Callable[[], LayerConverter]
HOST_ONLY: Mapping[str, ConverterFactory] = {"host": HostConverter}


async def run(root: str, address: str, scratch_size_gb: int, converter: LayerConverter | None = None) -> None:
    """Serve until SIGTERM/SIGINT. ``converter`` is where layer tars are parsed (default: on the
    host); whatever turns a layer tar into a VHD in this daemon (the differ) takes it from here, and
    it is closed (a global service VM stopped) when the daemon stops."""
    converter = converter if converter is not None else HostConverter()
    sn = await asyncio.to_thread(Snapshotter, root, scratch_size_gb=scratch_size_gb)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = await serve(sn, address)
        logging.getLogger("hcsshim.snapshotter").info("serving on %s (root %s)", address, root)
        print(f"lcow-snapshotter: serving on {address}", flush=True)
        await stop.wait()
        await server.stop(5)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        await asyncio.to_thread(sn.close)
        await converter.close()


def main(argv: Sequence[str] | None = None, converters: Mapping[str, ConverterFactory] = HOST_ONLY) -> int:
    """The daemon's command line; ``converters`` are the ``--convert-in`` choices (name -> factory)."""
    p = argparse.ArgumentParser(prog="lcow-snapshotter", description=__doc__)
    p.add_argument("--root", default=DEFAULT_ROOT, help=f"state directory (default {DEFAULT_ROOT})")
    p.add_argument("--address", default=DEFAULT_ADDRESS, help=f"unix socket (default {DEFAULT_ADDRESS})")
    p.add_argument(
        "--scratch-size-gb",
        type=int,
        default=DEFAULT_SCRATCH_GB,
        help="size of a container's sparse scratch disk unless the rootfs.size-gb label says otherwise",
    )
    p.add_argument(
        "--convert-in",
        default=DEFAULT_CONVERT_IN,
        choices=sorted(converters),
        help="where layer tars are parsed into ext4: on the host (default), in one long-lived service VM "
        "(global-vm) or in a service VM per layer (per-instance-vm)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ns = p.parse_args(argv)
    if ns.scratch_size_gb <= 0:
        p.error("--scratch-size-gb must be positive")
    logging.basicConfig(
        level=ns.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    converter = converters[ns.convert_in]()
    asyncio.run(run(ns.root, ns.address, ns.scratch_size_gb, converter))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
