"""``containerd-shim-lcow-v2 start`` and ``delete``: one shim (one UVM) per sandbox, or per UVM group.

containerd's sandbox controller (2.x, ``sandboxer = "shim"``) runs ``start`` once per sandbox, with
``-id`` = the sandbox id and the sandbox's bundle, and dials whatever address ``start`` prints; every
container of that sandbox then goes to that address over Task v3 without another ``start``. The answer
is version 3: a ``BootstrapResult`` protobuf when containerd sent ``BootstrapParams`` (2.3+), else the
JSON ``{"version": 3, "address": ..., "protocol": "ttrpc"}`` that containerd 2.0-2.2 parse.

Several pods in one UVM (upstream lcow-v2 keeps a pod per sandbox inside its VM): a sandbox whose
annotations (the bundle's ``config.json``), or else the runtime handler's
``default_container_annotations`` (the options on stdin), or else ``HCSSHIM_LCOW_V2_UVM_GROUP``, name
a group (:data:`UVM_GROUP` = ``<name>``) goes to the shim that serves that group in the same
containerd and namespace: ``start`` prints the running shim's address (containerd reuses it, as
runhcs-v1 does with a pod's containers) and that shim's CreateSandbox adds the pod to its UVM. The
first sandbox of a group starts the shim. Without a group a sandbox gets a shim and UVM of its own.
``start`` of one group is serialised by a lock file beside the group's socket.

``delete`` (containerd runs it when its connection to the sandbox's shim closes, and for bundles it
finds after a restart): if the shim still answers, the sandbox is shut down there (only that pod; the
shim exits after its last); if it is gone, the UVM it left (``<bundle>/uvm-id``) is cleaned up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator

from google.protobuf import timestamp_pb2

from hcsshim import errdefs, settings
from hcsshim.api.containerd.bootstrap.v1 import bootstrap_pb2
from hcsshim.api.containerd.sandbox.v1 import sandbox_pb2 as sb
from hcsshim.api.containerd.task.v2 import shim_pb2 as task_v2
from hcsshim.api.shimdiag import shimdiag_pb2 as diag
from hcsshim.shim.flags import Flags
from hcsshim.shim.kind import ShimKind
from hcsshim.shim.manager import (
    ADDRESS_FILE,
    CONNECT_TIMEOUT,
    EXITED_STATUS,
    SHIM_PID_FILE,
    StartError,
    _connectable,
    _spawn_server,
    socket_path,
    write_atomic,
)
from hcsshim.shim.options import PROTOCOL, SANDBOX_TASK_API_VERSION, StartInput, decode_start_input
from hcsshim.shim.rootfs import unmount
from hcsshim.shim.spec import read_spec, spec_annotations
from hcsshim.ttrpc import Client, TtrpcError
from hcsshim.ttrpc.status import Code

log = logging.getLogger(__name__)

TASK_API_VERSION = SANDBOX_TASK_API_VERSION
# hcsshim's annotation: sandboxes naming the same group share one lcow-v2 shim and UVM.
UVM_GROUP = "io.hcsshim.lcow-v2.uvm-group"
UVM_ID_FILE = "uvm-id"
SANDBOX_SERVICE = sb.DESCRIPTOR.services_by_name["Sandbox"].full_name
DIAG_SERVICE = diag.DESCRIPTOR.services_by_name["ShimDiag"].full_name
_GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def uvm_group(bundle_annotations: dict[str, str], start: StartInput) -> str:
    """The sandbox's UVM group: its own annotation, else the runtime handler's default, else
    HCSSHIM_LCOW_V2_UVM_GROUP."""
    value = bundle_annotations.get(UVM_GROUP, "")
    if not value and start.options is not None:
        value = str(start.options.default_container_annotations.get(UVM_GROUP, ""))
    value = value or settings.current().lcow_v2_uvm_group
    if value and not _GROUP_NAME.match(value):
        raise StartError(
            f"annotation {UVM_GROUP}={value!r}: a group name is 1-64 of [A-Za-z0-9._-]",
            errdefs.Kind.INVALID_ARGUMENT,
        )
    return value


def group_shim_id(group: str, socket: str) -> str:
    """The id of a group's shim and UVM (compute system ``<id>@vm``): the group's name and its socket's
    digest."""
    return f"group-{group}-{hashlib.sha256(socket.encode()).hexdigest()[:12]}"


def start_answer_v3(start: StartInput, address: str) -> bytes:
    if start.is_bootstrap:
        result = bootstrap_pb2.BootstrapResult(version=TASK_API_VERSION, address=address, protocol=PROTOCOL)
        return result.SerializeToString()
    return json.dumps({"version": TASK_API_VERSION, "address": address, "protocol": PROTOCOL}).encode()


async def _shim_pid(address: str, namespace: str) -> int:
    client = await Client.connect(address, timeout=CONNECT_TIMEOUT)
    try:
        resp = await client.call(
            DIAG_SERVICE,
            "DiagPid",
            diag.PidRequest(),
            diag.PidResponse,
            timeout=CONNECT_TIMEOUT,
            metadata={"containerd-namespace-ttrpc": namespace},
        )
    finally:
        await client.close()
    return int(resp.pid)


def start(flags: Flags, stdin_data: bytes, bundle: str, kind: ShimKind) -> bytes:
    if not flags.namespace:
        raise StartError("shim namespace cannot be empty", errdefs.Kind.INVALID_ARGUMENT)
    if not flags.id:
        raise StartError("shim id cannot be empty", errdefs.Kind.INVALID_ARGUMENT)
    start_input = decode_start_input(stdin_data, flags.id, flags.namespace)
    socket_dir = ""
    if start_input.bootstrap is not None and start_input.bootstrap.HasField("socket_dir"):
        socket_dir = start_input.bootstrap.socket_dir
    grpc_address = flags.address
    if start_input.bootstrap is not None and start_input.bootstrap.containerd_grpc_address:
        grpc_address = grpc_address or start_input.bootstrap.containerd_grpc_address
    group = uvm_group(spec_annotations(read_spec(bundle)), start_input)
    if not group:
        path = socket_path(grpc_address, flags.namespace, flags.id, socket_dir)
        if os.path.exists(path):
            if _connectable(path):
                raise StartError(
                    f"a shim for {flags.id} already serves unix://{path}", errdefs.Kind.ALREADY_EXISTS
                )
            os.unlink(path)
        write_atomic(os.path.join(bundle, UVM_ID_FILE), flags.id)
        pid = _spawn_server(kind, flags, bundle, path, stdin_data, start_input)
        write_atomic(os.path.join(bundle, SHIM_PID_FILE), str(pid))
    else:
        path = socket_path(grpc_address, flags.namespace, f"lcow-v2-group/{group}", socket_dir)
        shim_id = group_shim_id(group, path)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with group_lock(path):
            joined = False
            if os.path.exists(path):
                if _connectable(path):
                    try:
                        asyncio.run(_shim_pid("unix://" + path, flags.namespace))
                        joined = True
                    except Exception as exc:
                        raise StartError(
                            f"the shim of UVM group {group} at unix://{path} does not answer: {exc}",
                            errdefs.Kind.UNAVAILABLE,
                        ) from exc
                else:
                    os.unlink(path)
            write_atomic(os.path.join(bundle, UVM_ID_FILE), shim_id)
            if not joined:
                pid = _spawn_server(kind, flags, bundle, path, stdin_data, start_input)
                write_atomic(os.path.join(bundle, SHIM_PID_FILE), str(pid))
    address = "unix://" + path
    write_atomic(os.path.join(bundle, ADDRESS_FILE), address)
    return start_answer_v3(start_input, address)


@contextlib.contextmanager
def group_lock(socket: str) -> Iterator[None]:
    """Hold the lock of the UVM group whose shim serves ``socket`` (``<socket>.lock``). The group's
    last shim removes the file on its way out (remove_group_lock), so a holder checks that the file
    it locked is still the one at the path; otherwise it locked a removed file and tries again."""
    lock_path = socket + ".lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock_path).st_ino
            except FileNotFoundError:
                current = -1
            if current == os.fstat(fd).st_ino:
                yield
                return
        finally:
            os.close(fd)


def remove_group_lock(socket: str) -> None:
    """A group shim's last act: drop the group's lock file unless a new shim of the group has bound
    the socket path since (then the lock is that shim's)."""
    if not os.path.exists(socket + ".lock"):
        return
    with group_lock(socket):
        if not os.path.exists(socket):
            os.unlink(socket + ".lock")


def served_uvm_id(bundle: str, shim_id: str) -> str:
    """The UVM id ``start`` chose for the server in this bundle (``serve`` reads it); its compute
    system is ``<id>@vm``."""
    try:
        with open(os.path.join(bundle, UVM_ID_FILE)) as f:
            return f.read().strip() or shim_id
    except OSError:
        return shim_id


async def _shutdown_sandbox(address: str, sandbox_id: str, namespace: str) -> None:
    client = await Client.connect(address, timeout=CONNECT_TIMEOUT)
    try:
        await client.call(
            SANDBOX_SERVICE,
            "ShutdownSandbox",
            sb.ShutdownSandboxRequest(sandbox_id=sandbox_id),
            sb.ShutdownSandboxResponse,
            timeout=60.0,
            metadata={"containerd-namespace-ttrpc": namespace},
        )
    except TtrpcError as exc:
        if exc.code != Code.NOT_FOUND:
            raise
    finally:
        await client.close()


def delete(flags: Flags, bundle: str, kind: ShimKind) -> bytes:
    try:
        with open(os.path.join(bundle, ADDRESS_FILE)) as f:
            address = f.read().strip()
    except OSError:
        address = ""
    path = address.removeprefix("unix://")
    alive = bool(path) and os.path.isabs(path) and os.path.exists(path) and _connectable(path)
    if alive:
        # The shim may serve other sandboxes: only this one goes (a no-op when it is gone already).
        asyncio.run(_shutdown_sandbox(address, flags.id, flags.namespace))
    else:
        from hcsshim.hcs import ErrNotSupported, cleanup_orphan

        uvm_id = served_uvm_id(bundle, flags.id)
        try:
            cleanup_orphan(f"{uvm_id}@vm")
        except ErrNotSupported as exc:
            log.info("no orphan cleanup", extra={"uvm": uvm_id, "why": str(exc)})
        if path and os.path.isabs(path) and os.path.exists(path):
            with contextlib.suppress(OSError):
                os.unlink(path)
    with contextlib.suppress(OSError):
        unmount(os.path.join(bundle, "rootfs"))
    exited_at = timestamp_pb2.Timestamp()
    exited_at.GetCurrentTime()
    return task_v2.DeleteResponse(exit_status=EXITED_STATUS, exited_at=exited_at).SerializeToString()
