"""A pod host without a VM: the guest agent (``python -m hcsshim.guest``) runs on this machine and drives
runc here, reached over the same mux and bridge as inside a UVM. ``containerd-shim-process-v2`` uses it
for every pod; tests use it to exercise the containerd path without QEMU.

Plan9 shares are the host paths themselves: the agent sees the host's filesystem. The agent dies with
the shim (PDEATHSIG) and stops its containers when it is told to shut down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
from typing import Any

from hcsshim import children, settings
from hcsshim.api.runhcs.options import runhcs_pb2
from hcsshim.gcs.bridge import BridgeClient
from hcsshim.gcs.connection import ExitCallback, GuestConnection, OomCallback
from hcsshim.hvsock.abi import NULL_CONTAINER_ID
from hcsshim.hvsock.session import MuxSession, Role
from hcsshim.hvsock.transports import StreamTransport

log = logging.getLogger("hcsshim.shim.local")

CONNECT_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def state_dir(host_id: str) -> str:
    # Short and safe: the mux socket path must stay under 108 bytes.
    return os.path.join(settings.current().local_state, hashlib.sha256(host_id.encode()).hexdigest()[:16])


def runc_binary() -> str:
    return shutil.which("runc") or "/usr/sbin/runc"


class LocalHost:
    def __init__(
        self,
        host_id: str,
        process: asyncio.subprocess.Process,
        connection: GuestConnection,
        client: BridgeClient,
        workdir: str,
    ) -> None:
        self.id = host_id
        self.process = process
        self.connection = connection
        self.client = client
        self.workdir = workdir
        self._exit = asyncio.ensure_future(process.wait())

    @property
    def session(self) -> MuxSession:
        return self.connection.session

    @property
    def bridge(self) -> BridgeClient:
        return self.client

    @property
    def system(self) -> None:
        """No VM: nothing to pause a pod with."""
        return None

    def subscribe(self, *, on_exit: ExitCallback | None = None, on_oom: OomCallback | None = None) -> None:
        self.connection.subscribe(on_exit=on_exit, on_oom=on_oom)

    @property
    def bundle_root(self) -> str:
        """Container bundles live in the agent's state directory, not in the host's /run/gcs."""
        return os.path.join(self.workdir, "gcs", "c")

    def adjust_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Containers here share the host's OOM scores: a score below ours would need
        CAP_SYS_RESOURCE, so it is raised to ours (containerd's ``restrict_oom_score_adj``)."""
        process = spec.get("process")
        if not isinstance(process, dict) or "oomScoreAdj" not in process:
            return spec
        try:
            with open("/proc/self/oom_score_adj") as f:
                current = int(f.read().strip())
        except (OSError, ValueError):
            return spec
        if int(process["oomScoreAdj"]) >= current:
            return spec
        return {**spec, "process": {**process, "oomScoreAdj": current}}

    async def add_plan9(self, host_path: str, read_only: bool = True) -> str:
        return os.path.abspath(host_path)

    async def remove_plan9(self, host_path: str) -> None:
        return None

    async def terminate(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.shutdown_forced(NULL_CONTAINER_ID, timeout=STOP_TIMEOUT)
        try:
            await asyncio.wait_for(asyncio.shield(self._exit), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self._exit
        await self.connection.close("agent stopped")
        await asyncio.to_thread(shutil.rmtree, self.workdir, ignore_errors=True)

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    def exit_reason(self) -> str:
        return f"local agent of {self.id} exited with status {self.process.returncode}"


async def start_agent(host_id: str, workdir: str) -> LocalHost:
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    sock_path = os.path.join(workdir, "mux.sock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)
    listener.setblocking(False)
    argv = [sys.executable, "-m", "hcsshim.guest", "--transport", f"unix:{sock_path}"]
    argv += ["--root", os.path.join(workdir, "gcs"), "--runc", runc_binary(), "--log-port", "0"]
    argv += ["--cgroup-parent", f"/hcsshim-local/{os.path.basename(workdir)}"]
    try:
        with open(os.path.join(workdir, "agent.log"), "ab") as agent_log:
            process = await children.spawn(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=agent_log
            )
        try:
            conn, _ = await asyncio.wait_for(
                asyncio.get_running_loop().sock_accept(listener), CONNECT_TIMEOUT
            )
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock_path)
    reader, writer = await asyncio.open_unix_connection(sock=conn, limit=1 << 20)
    session = MuxSession(StreamTransport(reader, writer), Role.HOST).start()
    # The agent runs with --log-port 0: its log is agent.log, not a mux channel.
    connection = GuestConnection(session, host_id)
    client = await connection.connect(CONNECT_TIMEOUT)
    log.info("local agent ready", extra={"host": host_id, "pid": process.pid})
    return LocalHost(host_id, process, connection, client, workdir)


async def create_local_host(
    host_id: str, spec: dict[str, Any], options: runhcs_pb2.Options | None
) -> LocalHost:
    """HostFactory: one agent per pod, state under ``/run/hcsshim/local/<hash of the id>``."""
    return await start_agent(host_id, state_dir(host_id))


def cleanup(host_id: str) -> None:
    """``delete`` after a dead shim: its agent died with it, but runc containers outlive the agent."""
    workdir = state_dir(host_id)
    if not os.path.isdir(workdir):
        return
    root = os.path.join(workdir, "gcs", "runc")
    runc = runc_binary()
    argv = [runc, "--root", root, "list", "-q"]
    listing = subprocess.run(argv, capture_output=True, text=True, check=False)
    for cid in listing.stdout.split():
        subprocess.run([runc, "--root", root, "kill", "--all", cid, "KILL"], capture_output=True, check=False)
        subprocess.run([runc, "--root", root, "delete", "--force", cid], capture_output=True, check=False)
    for point in reversed(_mounts_under(workdir)):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    shutil.rmtree(workdir, ignore_errors=True)


def _mounts_under(path: str) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(path.rstrip("/") + "/"):
                found.append(point)
    return sorted(found, key=len)
