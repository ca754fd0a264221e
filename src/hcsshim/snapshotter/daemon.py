"""``lcow-snapshotter``: the lcow snapshotter daemon: a containerd proxy plugin of type snapshot, and
on the same socket the lcow differ (a proxy plugin of type diff, containerd 1.7.4+ and 2.x).

Where the differ parses layer tars is the daemon's ``--convert-in`` choice, a LayerConverter built by
the composition root (hcsshim.cli.lcow_snapshotter, which may import the service VMs this package may
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
from hcsshim.snapshotter.content import DEFAULT_CONTAINERD_ADDRESS, ContentClient
from hcsshim.snapshotter.core import DEFAULT_SCRATCH_GB, Snapshotter
from hcsshim.snapshotter.differ import Differ
from hcsshim.snapshotter.diffservice import DiffService
from hcsshim.snapshotter.service import serve

DEFAULT_ROOT = "/var/lib/hcsshim-lcow-snapshotter"
DEFAULT_ADDRESS = "/run/hcsshim-lcow-snapshotter/snapshotter.sock"
DEFAULT_CONVERT_IN = "host"

# Called with the snapshotter's own conversion directory (emptied at every start), where a host
# conversion unpacks; a service VM converter has no use for it.
ConverterFactory = Callable[[str], LayerConverter]


def host_converter(convert_dir: str) -> LayerConverter:
    return HostConverter(tmp_dir=convert_dir)


HOST_ONLY: Mapping[str, ConverterFactory] = {"host": host_converter}


async def run(
    root: str,
    address: str,
    scratch_size_gb: int,
    containerd_address: str,
    converter: ConverterFactory = host_converter,
) -> None:
    """Serve until SIGTERM/SIGINT. The differ parses layer tars with what ``converter`` builds, and
    closes it (a global service VM stopped) when the daemon stops."""
    sn = await asyncio.to_thread(Snapshotter, root, scratch_size_gb=scratch_size_gb)
    differ = Differ(sn, ContentClient(containerd_address), converter(sn.convert_dir))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = await serve(sn, address, [DiffService(differ).handler()])
        logging.getLogger("hcsshim.snapshotter").info(
            "serving on %s (root %s, layers converted by %s)", address, root, differ.converter.name
        )
        print(f"lcow-snapshotter: serving on {address}", flush=True)
        await stop.wait()
        await server.stop(5)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        await differ.close()
        await asyncio.to_thread(sn.close)


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
        "--containerd-address",
        default=DEFAULT_CONTAINERD_ADDRESS,
        help="containerd's gRPC socket, where the differ reads layer blobs "
        f"(default {DEFAULT_CONTAINERD_ADDRESS})",
    )
    p.add_argument(
        "--convert-in",
        default=DEFAULT_CONVERT_IN,
        choices=sorted(converters),
        help="where the differ parses layer tars into ext4: on the host (default), in one long-lived "
        "service VM (global-vm) or in a service VM per layer (per-instance-vm)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ns = p.parse_args(argv)
    if ns.scratch_size_gb <= 0:
        p.error("--scratch-size-gb must be positive")
    logging.basicConfig(
        level=ns.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    factory = converters[ns.convert_in]
    asyncio.run(run(ns.root, ns.address, ns.scratch_size_gb, ns.containerd_address, factory))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
