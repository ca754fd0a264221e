"""``python -m hcsshim.guest --transport unix:PATH|virtio:PATH|vsock:PORT``: the guest agent (GCS)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from hcsshim import hvsock as mux
from hcsshim import loopwatch
from hcsshim.hvsock import clone

from . import log, storage
from .clone import apply_identity
from .reaper import REAPER
from .runtime import Host
from .server import BridgeServer
from .syscalls import set_child_subreaper

LOG = log.get("main")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m hcsshim.guest", description=__doc__)
    ap.add_argument(
        "--transport",
        required=True,
        help="unix:PATH (dial a host unix socket), virtio:PATH (a virtio-serial char device), "
        "vsock:PORT or vsock:CID:PORT (dial AF_VSOCK, CID defaults to 2, the host)",
    )
    ap.add_argument(
        "--root", default="/run/gcs", help="agent state: bundles in ROOT/c/<id>, runc state in ROOT/runc"
    )
    ap.add_argument("--runc", default="runc", help="runc binary")
    ap.add_argument(
        "--cgroup-parent", default="", help="cgroup prefix for container cgroups (default: the root)"
    )
    ap.add_argument("--sysfs-root", default="", help=argparse.SUPPRESS)  # tests: a fake /sys prefix
    ap.add_argument(
        "--modules-done",
        default=os.environ.get(storage.MODULES_DONE_ENV, ""),
        help="wait for this file (written by the UVM's /init when its kernel modules are loaded) before "
        f"mounts, device operations and container creation (default: ${storage.MODULES_DONE_ENV}; "
        "empty: do not wait)",
    )
    ap.add_argument(
        "--hold-device-key",
        action="store_true",
        help="attach an allow-all BPF device program to the root cgroup, so that runc's device "
        "filters never live-patch the kernel's cgroup BPF key (in a UVM only: never on a host)",
    )
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ap.add_argument("--log-format", default="text", choices=["text", "json"])
    ap.add_argument(
        "--log-port",
        type=lambda v: int(v, 0),
        default=109,
        help="also send JSON log lines to this host port if the host listens on it (0: stderr only)",
    )
    return ap.parse_args(argv)


async def open_transport(spec: str) -> mux.Transport:
    scheme, _, rest = spec.partition(":")
    if scheme == "unix":
        return await mux.connect_unix(rest)
    if scheme == "virtio":
        return mux.open_char_device(rest or "/dev/virtio-ports/hcsshim.mux")
    if scheme == "vsock":
        parts = rest.split(":")
        cid, port = (int(parts[0]), int(parts[1])) if len(parts) == 2 else (2, int(parts[0] or 0x40000000))
        return await mux.connect_vsock(port, cid)
    raise SystemExit(f"unknown transport {spec!r}")


async def _forward_logs(session: mux.MuxSession, port: int) -> log.ChannelHandler | None:
    if not port:
        return None
    try:
        ch = await session.dial(port, timeout=5)
    except (ConnectionError, TimeoutError):
        return None  # the host does not collect guest logs (e.g. the agent runs on a Linux host)
    return log.forward_to(ch.write)


async def _wait_for_clone_host(session: mux.MuxSession, nonce: str) -> None:
    """Listen for the host of a clone restored from this VM, and take on the identity it sends."""
    listener = await session.listen(clone.RESUME_PORT)
    # The template's host saves the VM once this line is on the console: from here on the agent
    # only waits, so every clone starts at this point.
    await asyncio.to_thread(_console_line, clone.ready_line(nonce))
    try:
        while True:
            ch = await listener.accept()
            data = b""
            while not data.endswith(b"\n") and len(data) <= clone.MAX_IDENTITY_BYTES:
                chunk = await ch.read()
                if not chunk:
                    break
                data += chunk
            error = ""
            try:
                await apply_identity(clone.decode_identity(data))
            except (clone.CloneProtocolError, OSError) as e:
                error = str(e)
                LOG.error("clone identity refused", extra={"error": error})
            await ch.write(clone.encode_ack(error))
            ch.close()
            if not error:
                return
    finally:
        listener.close()


def _console_line(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


async def _hold_device_key() -> None:
    try:
        from . import static_keys
    except ImportError:  # no ctypes in this image
        LOG.warning("cannot hold the cgroup BPF device key (no ctypes)")
        return
    try:
        attached = await asyncio.to_thread(static_keys.hold_device_filter_key)
    except OSError as e:
        # Containers still run; their device filters just patch the key on the way.
        LOG.warning("cannot hold the cgroup BPF device key", extra={"error": str(e)})
        return
    LOG.info("cgroup BPF device key held", extra={"attached": attached})


async def amain(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    if not set_child_subreaper():
        LOG.warning("cannot become a child subreaper (no ctypes); exit codes of exec'd processes may be lost")
    REAPER.install(loop)
    os.makedirs(args.root, exist_ok=True)
    if args.hold_device_key:
        await _hold_device_key()
    modules = storage.ModuleGate(args.modules_done)
    if args.transport.startswith("vsock:"):
        await modules.wait("vsock transport")  # vmw_vsock_virtio_transport may be loading still
    host = Host(args.root, args.runc, args.cgroup_parent, args.sysfs_root, modules)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    template_nonce: str | None = None
    waiters: list[asyncio.Task[Any]] = []
    log_handler: log.ChannelHandler | None = None
    reason = "signal"
    while True:
        transport = await open_transport(args.transport)
        session = mux.MuxSession(transport, mux.Role.GUEST).start()
        if template_nonce is not None:
            waiting = asyncio.create_task(_wait_for_clone_host(session, template_nonce))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({waiting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not waiting.done():
                waiting.cancel()
                break
            waiting.result()
        log_handler = await _forward_logs(session, args.log_port)
        server = BridgeServer(host, session)
        LOG.info("agent started", extra={"transport": args.transport, "root": args.root, "pid": os.getpid()})
        serve = asyncio.create_task(server.serve_forever())
        waiters = [
            asyncio.create_task(stop.wait()),
            asyncio.create_task(server.shutdown_requested.wait()),
            asyncio.create_task(session.wait_closed()),
            serve,
        ]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        reason = (
            "signal"
            if stop.is_set()
            else "shutdown request"
            if server.shutdown_requested.is_set()
            else "transport closed"
        )
        if reason == "transport closed" and server.template_nonce is not None:
            # The template's host hung up as asked: wait, on a new session, to be restored as a clone.
            LOG.info("template host hung up", extra={"nonce": server.template_nonce})
            template_nonce = server.template_nonce
            for t in waiters:
                t.cancel()
            if log_handler is not None:
                log_handler.close()
            await session.aclose("template host hung up")
            waiters, log_handler = [], None
            continue
        break
    LOG.info("agent stopping", extra={"reason": reason})
    await host.shutdown()
    await asyncio.sleep(0.05)  # let the ShutdownForced response reach the host
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(session.flush(), 2)
    for t in waiters:
        t.cancel()
    if log_handler is not None:
        log_handler.close()
    await session.aclose("agent exit")
    REAPER.uninstall()
    return 0


def watch_slow_callbacks(cmdline_path: str = "/proc/cmdline") -> float | None:
    """Install the slow-callback watch when the kernel command line asks for it; the threshold."""
    try:
        with open(cmdline_path) as f:
            threshold = loopwatch.threshold_from_cmdline(f.read())
    except OSError:
        return None
    except ValueError as e:
        LOG.warning("slow-callback watch not installed", extra={"error": str(e)})
        return None
    if threshold is None:
        return None
    loopwatch.install_logging(threshold, LOG)
    return threshold


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log.setup(args.log_level, args.log_format == "json")
    watch_slow_callbacks()
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
