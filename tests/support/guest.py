"""Start the guest agent on this host (``python -m hcsshim.guest --transport unix:...``) and connect
a BridgeClient to it, the way a UVM's agent would be reached over the mux."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

from hcsshim.gcs.bridge import BridgeClient
from hcsshim.hvsock import MuxSession, Role, StreamTransport
from hcsshim.hvsock.abi import NULL_CONTAINER_ID

RUNC = "/usr/sbin/runc"


@dataclass
class GuestAgent:
    process: asyncio.subprocess.Process
    session: MuxSession
    client: BridgeClient
    root: str
    cgroup_parent: str
    socket_path: str
    notifications: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    async def reconnect(self, timeout: float = 20.0) -> BridgeClient:
        """Accept the agent's next bridge dial (after the old bridge was dropped)."""
        self.client = await BridgeClient.connect(
            self.session, timeout=timeout, notify=self.notifications.put_nowait
        )
        return self.client

    async def next_notification(self, container_id: str, timeout: float = 20.0) -> dict[str, Any]:
        while True:
            n = await asyncio.wait_for(self.notifications.get(), timeout)
            if n.get("ContainerId") == container_id:
                return n

    async def stop(self, timeout: float = 30.0) -> int:
        with contextlib.suppress(Exception):
            await self.client.shutdown_forced(NULL_CONTAINER_ID, timeout=timeout)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        await self.client.close()
        await self.session.aclose()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        return code


async def start_guest_agent(
    workdir: str,
    *,
    runc: str = RUNC,
    log_level: str = "info",
    timeout: float = 30.0,
    extra_args: tuple[str, ...] = (),
) -> GuestAgent:
    sock_path = os.path.join(workdir, "mux.sock")
    root = os.path.join(workdir, "gcs")
    cgroup_parent = f"/hcsshim-test-{uuid.uuid4().hex[:8]}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(1)
    server.setblocking(False)
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    stderr_path = os.path.join(workdir, "agent.log")
    with open(stderr_path, "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hcsshim.guest",
            "--transport",
            f"unix:{sock_path}",
            "--root",
            root,
            "--runc",
            runc,
            "--cgroup-parent",
            cgroup_parent,
            "--log-level",
            log_level,
            *extra_args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
    try:
        conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(server), timeout)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    finally:
        server.close()
    reader, writer = await asyncio.open_unix_connection(sock=conn, limit=1 << 20)
    session = MuxSession(StreamTransport(reader, writer), Role.HOST).start()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    client = await BridgeClient.connect(session, timeout=timeout, notify=queue.put_nowait)
    return GuestAgent(proc, session, client, root, cgroup_parent, sock_path, queue)


def make_busybox_rootfs(path: str, busybox: str = "/bin/busybox") -> str:
    """A minimal rootfs: a static busybox and symlinks for the applets the tests use."""
    for d in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        os.makedirs(os.path.join(path, d), exist_ok=True)
    with open(busybox, "rb") as src, open(os.path.join(path, "bin", "busybox"), "wb") as dst:
        dst.write(src.read())
    os.chmod(os.path.join(path, "bin", "busybox"), 0o755)
    for applet in (
        "sh",
        "echo",
        "cat",
        "sleep",
        "stty",
        "readlink",
        "ls",
        "hostname",
        "true",
        "head",
        "yes",
        "id",
    ):
        link = os.path.join(path, "bin", applet)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    return path


def oci_spec(
    args: list[str],
    *,
    terminal: bool = False,
    annotations: dict[str, str] | None = None,
    root: str = "rootfs",
    hostname: str = "",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "noNewPrivileges": True,
        },
        "root": {"path": root, "readonly": False},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"],
        },
        "annotations": annotations or {},
    }
    if hostname:
        spec["hostname"] = hostname
    return spec


def container_document(bundle: str, spec: dict[str, Any], scratch: str = "") -> dict[str, Any]:
    doc: dict[str, Any] = {
        "SchemaVersion": {"Major": 2, "Minor": 1},
        "OciBundlePath": bundle,
        "OciSpecification": spec,
    }
    if scratch:
        doc["ScratchDirPath"] = scratch
    return doc


async def read_all(ch: Any, timeout: float = 20.0) -> bytes:
    chunks: list[bytes] = []
    while True:
        data = await asyncio.wait_for(ch.read(), timeout)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def cgroup_dirs(parent: str, base: str = "/sys/fs/cgroup") -> list[str]:
    """The directories of cgroup ``parent`` in every hierarchy (v2, or each v1 controller)."""
    rel = parent.strip("/")
    cands = [os.path.join(base, rel)] + [os.path.join(base, c, rel) for c in os.listdir(base)]
    return [c for c in cands if rel and os.path.isdir(c)]


def remove_cgroup_parent(parent: str) -> list[str]:
    """Remove the (test-chosen) cgroup parent; returns child cgroups that were still there.

    rmdir of a cgroup that still holds processes fails with EBUSY, so success also proves no
    container process survived.
    """
    stray: list[str] = []
    for d in cgroup_dirs(parent):
        with contextlib.suppress(FileNotFoundError):
            stray += [n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n))]
        # cpu and cpuacct may be one hierarchy reached through two names, so trees can vanish early.
        for root, _, _ in sorted(os.walk(d), key=lambda t: -len(t[0])):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(root)
    return stray
