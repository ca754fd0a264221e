"""Parked clones: a QEMU restored from a template and left paused, owned by no process, in a
directory of its own, until a process adopts it (QemuComputeSystem.adopt) or it is destroyed.

The directory holds what any process needs to take it over: QEMU's QMP socket (QEMU listens, so
whoever adopts it connects), the mux socket, the console and QEMU's log, its pid and PARKED_FILE.
QEMU is started in a session of its own without PDEATHSIG, so the process that parked it may exit.
Its guest has not run since the template was saved: a clone gets its identity when its adopter
starts it (hvsock/clone.py), so nothing of one adopter reaches another."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
from typing import Any

from qemu.qmp import QMPClient, QMPError

from hcsshim.hcs.errors import ErrInvalidData, ErrNotSupported, ErrVmcomputeUnexpectedExit, HcsError
from hcsshim.hcs.qemu import foreign, template, vsock
from hcsshim.hcs.qemu.accel import choose
from hcsshim.hcs.qemu.cmdline import Paths, build_argv
from hcsshim.hcs.qemu.config import parse_document
from hcsshim.hcs.qemu.mounts import remove_tree_safely
from hcsshim.hcs.qemu.system import PID_FILE, QMP_CONNECT_TIMEOUT, qemu_binary
from hcsshim.hcs.system import Document, document_to_dict

log = logging.getLogger(__name__)

OP = "ParkComputeSystem"


def paths_in(directory: str) -> Paths:
    """The same names QemuComputeSystem uses in its state directory: adopting is a rename."""
    return Paths(
        qmp=os.path.join(directory, "qmp.sock"),
        mux=os.path.join(directory, "mux.sock"),
        console=os.path.join(directory, "console.log"),
        plan9_root=os.path.join(directory, "plan9"),
    )


def unsupported(name: str = "") -> str | None:
    """Why clones cannot be parked on this host, or None."""
    decision = vsock.choose(name)
    if decision.transport != vsock.TRANSPORT_VIRTIO_SERIAL:
        return f"a parked clone is reached over virtio-serial; this host uses vsock ({decision.reason})"
    return None


async def park(directory: str, document: Document) -> int:
    """Start a clone of `document` (which has VirtualMachine.RestoreState) in the new directory
    `directory`, restore it and leave it paused with nobody connected; returns QEMU's pid. On any
    failure QEMU is killed and the directory removed."""
    name = "parked-" + os.path.basename(directory.rstrip("/")).lstrip(".")
    doc = document_to_dict(document, name, OP)
    cfg = await asyncio.to_thread(parse_document, doc, name, OP)
    if not cfg.restore_dir:
        raise ErrInvalidData(OP, name, "only a clone (VirtualMachine.RestoreState) can be parked")
    why = unsupported(name)
    if why:
        raise ErrNotSupported(OP, name, why)
    accel = await choose(qemu_binary(), cfg.kernel)
    ok, why = template.supported(accel.qemu_version)
    if not ok:
        raise ErrNotSupported(OP, name, why)
    paths = paths_in(directory)
    argv = build_argv(qemu_binary(), name, cfg, paths, accel.spec, qmp_server=True)
    await asyncio.to_thread(os.makedirs, paths.plan9_root, 0o700)
    proc: subprocess.Popen[bytes] | None = None
    qmp = QMPClient(name)
    try:
        proc = await asyncio.to_thread(_spawn, argv, os.path.join(directory, "qemu.log"))
        record = {"pid": proc.pid, "origin": directory, "memory_mb": cfg.memory_mb, "name": name}
        await asyncio.to_thread(_write, os.path.join(directory, PID_FILE), str(proc.pid))
        await asyncio.to_thread(_write, os.path.join(directory, foreign.PARKED_FILE), json.dumps(record))
        await _connect(qmp, paths.qmp, proc, name)

        async def execute(cmd: str, args: dict[str, Any] | None) -> Any:
            try:
                return await qmp.execute(cmd, args)
            except QMPError as e:
                raise HcsError(OP, name, f"QMP {cmd} failed: {e}") from e

        await template.restore(execute, name, cfg, lambda: proc is not None and proc.poll() is None)
        await qmp.disconnect()
    except BaseException:
        with contextlib.suppress(Exception):
            await qmp.disconnect()
        if proc is not None and proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        await asyncio.to_thread(remove_tree_safely, directory)
        raise
    log.info("parked a clone", extra={"dir": directory, "pid": proc.pid, "template": cfg.restore_dir})
    return proc.pid


def _spawn(argv: list[str], log_path: str) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as out:
        # Not asyncio's subprocess: its transport kills a child still running when the loop closes,
        # and a parked QEMU must outlive the process that parked it.
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True
        )


async def _connect(qmp: QMPClient, path: str, proc: subprocess.Popen[bytes], name: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + QMP_CONNECT_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise ErrVmcomputeUnexpectedExit(OP, name, f"QEMU exited with {proc.returncode} before QMP")
        if os.path.exists(path):
            try:
                await asyncio.wait_for(qmp.connect(path), QMP_CONNECT_TIMEOUT)
                return
            except (OSError, QMPError) as e:
                if loop.time() > deadline:
                    raise ErrInvalidData(OP, name, f"connecting to QEMU's QMP failed: {e}") from e
        if loop.time() > deadline:
            raise ErrInvalidData(OP, name, f"QEMU did not open its QMP socket in {QMP_CONNECT_TIMEOUT:.0f}s")
        await asyncio.sleep(0.01)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def alive(directory: str) -> bool:
    """Whether the QEMU parked in `directory` still runs."""
    return foreign.parked_pid(directory) is not None


def destroy(directory: str) -> None:
    """Kill the QEMU parked in `directory` (if it runs) and remove the directory. Blocking."""
    killed = foreign.kill_parked(directory)
    left = remove_tree_safely(directory)
    if left:
        log.error("parked clone left behind", extra={"dir": directory, "paths": left})
    else:
        log.info("destroyed a parked clone", extra={"dir": directory, "killed": killed})


def memory_mb(directory: str) -> int:
    body = foreign.read_parked(directory) or {}
    value = body.get("memory_mb")
    return value if isinstance(value, int) else 0
