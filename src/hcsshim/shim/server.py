"""The long-lived shim server (``serve``): ttrpc on the socket ``start`` handed down, events to containerd.

It tells ``start`` it is serving through the ready pipe (``ok`` or the error text), logs to the bundle's
``log`` FIFO, and exits once containerd's ``Shutdown`` finds no task left, or on SIGTERM/SIGINT, after
tearing down whatever UVM is left and flushing queued events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import sys

from hcsshim import loopwatch, settings
from hcsshim.shim import logs
from hcsshim.shim.flags import Flags
from hcsshim.shim.kind import RUNHCS_V1, ShimKind
from hcsshim.shim.options import StartInput, decode_start_input, log_level
from hcsshim.shim.service_diag import DiagService
from hcsshim.shim.service_task import TaskService
from hcsshim.ttrpc import Server
from hcsshim.ttrpc.address import socket_address

log = logging.getLogger("hcsshim.shim.server")

SHUTDOWN_GRACE = 0.05
EVENT_FLUSH_TIMEOUT = 5.0


def _signal_ready(fd: int, text: str) -> None:
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        os.write(fd, (text.replace("\n", " ") + "\n").encode())
    with contextlib.suppress(OSError):
        os.close(fd)


def _socket_inode(address: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        path = socket_address(address)
        if not path.startswith("\0"):
            return os.lstat(path).st_ino
    return 0


def _remove_socket(address: str, inode: int = 0) -> None:
    """Unlink the socket file; with ``inode``, only while it is still ours (an lcow-v2 group shim
    unlinks it early, and a new shim of the group may have bound the path since)."""
    with contextlib.suppress(OSError, ValueError):
        path = socket_address(address)
        if not path.startswith("\0"):
            st = os.lstat(path)
            if stat.S_ISSOCK(st.st_mode) and (not inode or st.st_ino == inode):
                os.unlink(path)


def dump_tasks() -> None:
    """SIGUSR1: log where every asyncio task is waiting (a hung RPC shows up here)."""
    import io

    for task in asyncio.all_tasks():
        buf = io.StringIO()
        task.print_stack(limit=12, file=buf)
        log.warning("task stack", extra={"task": task.get_name(), "stack": buf.getvalue()})


def watch_slow_callbacks() -> None:
    """HCSSHIM_SLOW_CALLBACK_MS: log each callback that holds the shim's loop longer than that."""
    ms = settings.current().slow_callback_ms
    if ms <= 0:
        return
    loopwatch.install_logging(ms / 1000, log)


def ttrpc_address(flags: Flags) -> str:
    return settings.current().ttrpc_address or (flags.address + ".ttrpc" if flags.address else "")


async def _serve(flags: Flags, start_input: StartInput, kind: ShimKind) -> int:
    from hcsshim.shim.publisher import Publisher

    publisher = Publisher(ttrpc_address(flags), flags.namespace)
    stop = asyncio.Event()
    service: TaskService
    if kind.sandbox_api:
        from hcsshim.shim.manager_v2 import served_uvm_id
        from hcsshim.shim.service_sandbox import SandboxShimService, create_shared_vm

        bundle = os.path.abspath(flags.bundle or os.getcwd())
        service = SandboxShimService(
            publisher,
            create_shared_vm,
            namespace=flags.namespace,
            uvm_id=served_uvm_id(bundle, flags.id),
            default_options=start_input.options,
            on_shutdown=stop.set,
            log_bundle=bundle,
            relog=logs.redirect_stderr_to_fifo,
        )
    else:
        service = TaskService(
            publisher,
            kind.host_factory,
            namespace=flags.namespace,
            default_options=start_input.options,
            on_shutdown=stop.set,
        )
    server = Server()
    service.register(server)
    DiagService(service.host_pod, service.pods).register(server)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    if flags.listen_fd >= 0:
        await server.start_fd(flags.listen_fd)
    else:
        await server.start(flags.socket)
    _signal_ready(flags.ready_fd, "ok")
    inode = _socket_inode(flags.socket)
    log.info("shim serving", extra={"address": flags.socket, "pid": os.getpid()})
    await stop.wait()
    # No new connections find a shim on its way out (an lcow-v2 group's next sandbox starts a new one).
    _remove_socket(flags.socket, inode)
    log.info("shim shutting down", extra={"requested": service.shutdown_requested})
    await asyncio.sleep(SHUTDOWN_GRACE)  # let the Shutdown response reach containerd
    await service.close()
    await publisher.close(timeout=EVENT_FLUSH_TIMEOUT)
    await server.close()
    _remove_socket(flags.socket, inode)
    if kind.sandbox_api:
        from hcsshim.shim.manager_v2 import remove_group_lock

        with contextlib.suppress(OSError, ValueError):
            await asyncio.to_thread(remove_group_lock, socket_address(flags.socket))
    return 0


def serve(flags: Flags, kind: ShimKind = RUNHCS_V1) -> int:
    stdin_data = sys.stdin.buffer.read()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.close(devnull)
    bundle = os.path.abspath(flags.bundle or os.getcwd())
    logs.redirect_stderr_to_fifo(os.path.join(bundle, "log"))
    try:
        start_input = decode_start_input(stdin_data, flags.id, flags.namespace)
        level = log_level(start_input, flags.debug)
    except Exception as exc:
        _signal_ready(flags.ready_fd, f"bad options: {exc}")
        return 1
    logs.configure(level, {"id": flags.id, "namespace": flags.namespace}, runtime=kind.runtime)
    try:
        watch_slow_callbacks()
        return asyncio.run(_serve(flags, start_input, kind))
    except BaseException as exc:
        _signal_ready(flags.ready_fd, f"{type(exc).__name__}: {exc}")
        log.exception("shim server failed")
        _remove_socket(flags.socket)
        return 1
