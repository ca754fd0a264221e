"""The shim binary's three modes: ``start``, ``delete`` and the long-lived ``serve``.

``start`` finds or launches the server and prints how to reach it (reference §2.3, §5): a CRI container
joins its pod's shim (like runhcs-v1, which dials the sandbox's pipe); anything else gets a new detached
server (own session, stdio on /dev/null, logs to the bundle's ``log`` FIFO) that inherits the already
listening socket, so containerd can connect as soon as ``start`` exits. ``delete`` cleans up after a
shim that is gone and prints a ``DeleteResponse``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

from google.protobuf import timestamp_pb2

from hcsshim import errdefs, procfs, settings
from hcsshim.api.containerd.task.v2 import shim_pb2 as task_v2
from hcsshim.shim.flags import Flags
from hcsshim.shim.kind import RUNHCS_V1, ShimKind
from hcsshim.shim.options import StartInput, decode_start_input, start_answer
from hcsshim.shim.rootfs import unmount
from hcsshim.shim.spec import Role, read_spec, role_and_sandbox
from hcsshim.ttrpc import Client

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
EXITED_STATUS = 255
# From the generated module, not the task service's: ``start`` must not import the whole service.
SERVICE_V2 = task_v2.DESCRIPTOR.services_by_name["Task"].full_name
SHIM_PID_FILE = "shim.pid"
ADDRESS_FILE = "address"


class StartError(RuntimeError):
    """``start`` failed; ``kind`` says why (containerd reads the message from stderr)."""

    def __init__(self, message: str, kind: errdefs.Kind) -> None:
        super().__init__(message)
        self.kind = kind


def socket_path(grpc_address: str, namespace: str, group: str, socket_dir: str = "") -> str:
    """containerd's convention: sha256 of ``<address>/<ns>/<group>`` under the socket directory."""
    digest = hashlib.sha256(os.path.join(grpc_address, namespace, group).encode()).hexdigest()
    # Tests point HCSSHIM_SHIM_SOCKET_DIR elsewhere; containerd itself uses /run/containerd/s for root.
    return os.path.join(socket_dir or settings.current().shim_socket_dir, digest)


def write_atomic(path: str, data: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
    os.replace(tmp, path)


def _connectable(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


async def _connect_shim(address: str, task_id: str, namespace: str) -> int:
    client = await Client.connect(address, timeout=CONNECT_TIMEOUT)
    try:
        resp = await client.call(
            SERVICE_V2,
            "Connect",
            task_v2.ConnectRequest(id=task_id),
            task_v2.ConnectResponse,
            timeout=CONNECT_TIMEOUT,
            metadata={"containerd-namespace-ttrpc": namespace},
        )
    finally:
        await client.close()
    return int(resp.shim_pid)


def _listen(path: str) -> socket.socket:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def _serve_argv(
    kind: ShimKind, flags: Flags, bundle: str, address: str, listen_fd: int, ready_fd: int
) -> list[str]:
    argv = [sys.executable, "-m", kind.module]
    argv += ["-namespace", flags.namespace, "-address", flags.address]
    argv += ["-publish-binary", flags.publish_binary, "-id", flags.id, "-bundle", bundle]
    argv += ["-socket", address, "-listen-fd", str(listen_fd), "-ready-fd", str(ready_fd)]
    if flags.debug:
        argv.append("-debug")
    return [*argv, "serve"]


def _spawn_server(
    kind: ShimKind, flags: Flags, bundle: str, path: str, stdin_data: bytes, start: StartInput
) -> int:
    address = "unix://" + path
    sock = _listen(path)
    ready_r, ready_w = os.pipe()
    env = settings.inherited_environ()
    if start.bootstrap is not None and start.bootstrap.containerd_ttrpc_address:
        env.setdefault("TTRPC_ADDRESS", start.bootstrap.containerd_ttrpc_address)
    try:
        argv = _serve_argv(kind, flags, bundle, address, sock.fileno(), ready_w)
        with open(os.devnull, "wb") as devnull:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=devnull,
                stderr=devnull,
                cwd=bundle,
                env=env,
                pass_fds=(sock.fileno(), ready_w),
                start_new_session=True,
            )
        os.close(ready_w)
        ready_w = -1
        assert proc.stdin is not None
        # The server decodes the same stdin again (it needs the options and bootstrap addresses).
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(stdin_data)
        proc.stdin.close()
        status = _read_ready(ready_r, READY_TIMEOUT)
        if status != "ok":
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            raise StartError(
                f"shim server for {flags.id} failed to start: {status or 'exited'}", errdefs.Kind.UNAVAILABLE
            )
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    finally:
        sock.close()
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)
    # Reaped by init once we exit: the server lives in its own session.
    return proc.pid


def _read_ready(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    import select

    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\n"):
            break
    return data.decode(errors="replace").strip()


def start(flags: Flags, stdin_data: bytes, bundle: str, kind: ShimKind = RUNHCS_V1) -> bytes:
    """Everything ``start`` prints on stdout; raises on failure (the caller prints to stderr)."""
    if not flags.namespace:
        raise StartError(
            "shim namespace cannot be empty",
            errdefs.Kind.INVALID_ARGUMENT,
        )
    if not flags.id:
        raise StartError(
            "shim id cannot be empty",
            errdefs.Kind.INVALID_ARGUMENT,
        )
    start_input = decode_start_input(stdin_data, flags.id, flags.namespace)
    socket_dir = ""
    if start_input.bootstrap is not None and start_input.bootstrap.HasField("socket_dir"):
        socket_dir = start_input.bootstrap.socket_dir
    grpc_address = flags.address
    if start_input.bootstrap is not None and start_input.bootstrap.containerd_grpc_address:
        grpc_address = grpc_address or start_input.bootstrap.containerd_grpc_address
    role, sandbox_id = role_and_sandbox(read_spec(bundle), flags.id)
    if role is Role.CONTAINER:
        # Join the pod's shim: it is the one serving the sandbox task.
        path = socket_path(grpc_address, flags.namespace, sandbox_id, socket_dir)
        address = "unix://" + path
        try:
            asyncio.run(_connect_shim(address, sandbox_id, flags.namespace))
        except Exception as exc:
            raise StartError(
                f"connect to the shim of sandbox {sandbox_id} at {address}: {exc}", errdefs.Kind.UNAVAILABLE
            ) from exc
    else:
        path = socket_path(grpc_address, flags.namespace, flags.id, socket_dir)
        address = "unix://" + path
        if os.path.exists(path):
            if _connectable(path):
                raise StartError(
                    f"a shim for {flags.id} already serves {address}", errdefs.Kind.ALREADY_EXISTS
                )
            os.unlink(path)  # stale: its server died without cleaning up
        pid = _spawn_server(kind, flags, bundle, path, stdin_data, start_input)
        write_atomic(os.path.join(bundle, SHIM_PID_FILE), str(pid))
    write_atomic(os.path.join(bundle, ADDRESS_FILE), address)
    return start_answer(start_input, address)


# ---- delete ------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_server(bundle: str, shim_id: str) -> None:
    try:
        with open(os.path.join(bundle, SHIM_PID_FILE)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return
    argv = procfs.argv(pid)
    if shim_id.encode() not in argv or b"serve" not in argv:
        return  # not our server (pid reused)
    # containerd runs delete right after Shutdown; give a server that is exiting a moment to finish.
    for sig in (0, signal.SIGTERM, signal.SIGKILL):
        if sig:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and _pid_alive(pid) and procfs.argv(pid):
            time.sleep(0.02)
        if not procfs.argv(pid):
            return


def kill_uvm(shim_id: str) -> None:
    """The VM dies with its shim; this covers one whose process or state is left behind."""
    from hcsshim.hcs import ErrNotSupported, cleanup_orphan

    try:
        cleanup_orphan(f"{shim_id}@vm")
    except ErrNotSupported as e:
        log.info("no orphan cleanup", extra={"id": shim_id, "why": str(e)})


def _remove_dead_socket(bundle: str) -> None:
    """A server that was killed cannot remove its socket; its address file names it."""
    try:
        with open(os.path.join(bundle, ADDRESS_FILE)) as f:
            address = f.read().strip()
    except OSError:
        return
    path = address.removeprefix("unix://")
    if os.path.isabs(path) and os.path.exists(path) and not _connectable(path):
        with contextlib.suppress(OSError):
            os.unlink(path)


def delete(flags: Flags, bundle: str, kind: ShimKind = RUNHCS_V1) -> bytes:
    _stop_server(bundle, flags.id)
    kind.cleanup(flags.id)
    _remove_dead_socket(bundle)
    with contextlib.suppress(OSError):
        unmount(os.path.join(bundle, "rootfs"))
    exited_at = timestamp_pb2.Timestamp()
    exited_at.GetCurrentTime()
    response = task_v2.DeleteResponse(exit_status=EXITED_STATUS, exited_at=exited_at)
    return response.SerializeToString()


def version_text(kind: ShimKind) -> str:
    from importlib import metadata

    try:
        ver = metadata.version("hcsshim")
    except metadata.PackageNotFoundError:
        ver = "unknown"
    return f"{kind.binary}:\n  version: {ver}\n  runtime: {kind.runtime}\n"


def bundle_dir(flags: Flags) -> str:
    return os.path.abspath(flags.bundle or os.getcwd())


def run(
    flags: Flags, stdin: Sequence[bytes] | None = None, kind: ShimKind = RUNHCS_V1
) -> tuple[int, bytes, str]:
    """(exit code, stdout bytes, stderr text) for start/delete; serve is handled by the server module."""
    if flags.version:
        return 0, version_text(kind).encode(), ""
    if flags.info:
        from hcsshim.shim.info import InfoError, runtime_info

        data = b"".join(stdin) if stdin is not None else sys.stdin.buffer.read()
        try:
            return 0, runtime_info(kind, data), ""
        except InfoError as exc:
            return 1, b"", f"{kind.binary}: {exc}\n"
    action = flags.action
    with _logs_held() as held:
        try:
            if action == "start":
                data = b"".join(stdin) if stdin is not None else sys.stdin.buffer.read()
                if kind.sandbox_api:
                    from hcsshim.shim import manager_v2

                    return 0, manager_v2.start(flags, data, bundle_dir(flags), kind), ""
                return 0, start(flags, data, bundle_dir(flags), kind), ""
            if action == "delete":
                if kind.sandbox_api:
                    from hcsshim.shim import manager_v2

                    return 0, manager_v2.delete(flags, bundle_dir(flags), kind), ""
                return 0, delete(flags, bundle_dir(flags), kind), ""
        except Exception as exc:
            return 1, b"", f"{kind.binary} {action}: {exc}\n" + "".join(f"  {line}\n" for line in held)
    return 2, b"", f"{kind.binary}: unknown action {action!r} (start, delete, serve)\n"


class _HeldLines(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname.lower()}: {record.getMessage()}")


@contextlib.contextmanager
def _logs_held() -> Iterator[list[str]]:
    """containerd reads what start and delete print as their answer, and containerd 1.6 reads their
    stderr into the same answer (CombinedOutput): one log line there (asyncio's debug mode reporting
    a slow callback, a Python warning) and the socket address it dials is garbage. Their warnings are
    held instead, and shown only with an error."""
    held: list[str] = []
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers[:] = [_HeldLines(held)]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    try:
        yield held
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
