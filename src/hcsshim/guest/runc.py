"""Driving the runc binary: create/start/exec/kill/delete/ps/update, with stdio fds we own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from typing import Any

from hcsshim.gcs.protocol import GcsError

from . import log
from .reaper import REAPER, run, spawn

LOG = log.get("runc")


class RuncError(GcsError):
    pass


@dataclass
class Stdio:
    """The child's side of its stdio (given to runc) and our side (kept for the relay)."""

    child: list[int | None]
    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None

    @classmethod
    def pipes(cls, stdin: bool, stdout: bool, stderr: bool) -> Stdio:
        s = cls(child=[None, None, None])
        if stdin:
            r, w = os.pipe2(os.O_CLOEXEC)
            s.child[0], s.stdin = r, w
        if stdout:
            r, w = os.pipe2(os.O_CLOEXEC)
            s.child[1], s.stdout = w, r
        if stderr:
            r, w = os.pipe2(os.O_CLOEXEC)
            s.child[2], s.stderr = w, r
        return s

    def close_child(self) -> None:
        for fd in self.child:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.child = [None, None, None]

    def close_all(self) -> None:
        self.close_child()
        for name in ("stdin", "stdout", "stderr"):
            fd = getattr(self, name)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, None)


class ConsoleSocket:
    """A unix socket runc sends the pty master to (--console-socket)."""

    def __init__(self, directory: str) -> None:
        self.path = tempfile.mktemp(prefix="console-", suffix=".sock", dir=directory)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(1)
        self._sock.setblocking(False)
        self.master: int | None = None

    async def receive(self, timeout: float = 30.0) -> int:
        loop = asyncio.get_running_loop()
        conn, _ = await asyncio.wait_for(loop.sock_accept(self._sock), timeout)
        with conn:
            conn.setblocking(True)
            conn.settimeout(timeout)
            _, fds, _, _ = await loop.run_in_executor(None, socket.recv_fds, conn, 4096, 1)
        if not fds:
            raise RuncError("runc sent no console fd")
        os.set_inheritable(fds[0], False)
        return fds[0]

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Runc:
    def __init__(self, binary: str, root: str, no_pivot: bool | None = None) -> None:
        self.binary = binary
        self.root = root
        # pivot_root(2) fails when / is the initramfs (the UVM's initrd boot); the image's init says
        # so through HCSSHIM_ROOT_IS_RAMFS and runc must then use its MS_MOVE + chroot fallback.
        self.no_pivot = os.environ.get("HCSSHIM_ROOT_IS_RAMFS") == "1" if no_pivot is None else no_pivot
        os.makedirs(root, exist_ok=True)

    def _argv(self, log_path: str | None, *args: str) -> list[str]:
        argv = [self.binary, "--root", self.root]
        if log_path:
            argv += ["--log", log_path, "--log-format", "json"]
        return argv + list(args)

    async def _call(self, *args: str, stdin_data: bytes | None = None, timeout: float = 60.0) -> bytes:
        res = await run(self._argv(None, *args), stdin_data=stdin_data, timeout=timeout)
        if res.code != 0:
            msg = res.stderr.decode(errors="replace").strip() or res.stdout.decode(errors="replace").strip()
            raise RuncError(f"runc {args[0]} failed: {_runc_message(msg)}")
        return res.stdout

    async def _detached(
        self,
        args: list[str],
        bundle_or_dir: str,
        stdio: Stdio | None,
        console: ConsoleSocket | None,
        timeout: float = 60.0,
    ) -> int:
        """Run a runc command whose stdio becomes the container process's; returns that pid."""
        log_path = os.path.join(bundle_or_dir, f"runc-{args[0]}.log")
        pid_file = os.path.join(bundle_or_dir, f"{args[0]}-{os.getpid()}-{id(args)}.pid")
        argv = self._argv(log_path, args[0], "--pid-file", pid_file, *args[1:])
        child = stdio.child if stdio else [None, None, None]
        pid = spawn(argv, stdin=child[0], stdout=child[1], stderr=child[2])
        waiter = REAPER.wait(pid)
        if stdio:
            stdio.close_child()
        try:
            if console is not None:
                recv = asyncio.ensure_future(console.receive(timeout))
                done, _ = await asyncio.wait({recv, waiter}, timeout=timeout, return_when="FIRST_COMPLETED")
                if recv in done:
                    code = await asyncio.wait_for(waiter, timeout)
                    master = recv.result()
                    if code != 0:
                        os.close(master)
                        raise RuncError(f"runc {args[0]} failed: {_read_log(log_path)}")
                    console.master = master
                else:
                    recv.cancel()
                    code = await asyncio.wait_for(waiter, timeout)
                    raise RuncError(f"runc {args[0]} failed (exit {code}): {_read_log(log_path)}")
            else:
                code = await asyncio.wait_for(waiter, timeout)
                if code != 0:
                    raise RuncError(f"runc {args[0]} failed: {_read_log(log_path)}")
            with open(pid_file, encoding="ascii") as f:
                return int(f.read().strip())
        finally:
            with contextlib.suppress(OSError):
                os.unlink(pid_file)

    async def create(
        self, cid: str, bundle: str, stdio: Stdio | None, terminal: bool
    ) -> tuple[int, int | None]:
        """``runc create``; returns (init pid, pty master fd or None)."""
        console = ConsoleSocket(bundle) if terminal else None
        args = ["create", "--bundle", bundle]
        if self.no_pivot:
            args.append("--no-pivot")
        if console:
            args += ["--console-socket", console.path]
        args.append(cid)
        try:
            pid = await self._detached(args, bundle, None if terminal else stdio, console)
            return pid, (console.master if console else None)
        finally:
            if console:
                console.close()

    async def start(self, cid: str) -> None:
        await self._call("start", cid)

    async def exec(
        self, cid: str, process: dict[str, Any], workdir: str, stdio: Stdio | None
    ) -> tuple[int, int | None]:
        terminal = bool(process.get("terminal"))
        fd, proc_path = tempfile.mkstemp(prefix="process-", suffix=".json", dir=workdir)
        with os.fdopen(fd, "w") as f:
            json.dump(process, f)
        console = ConsoleSocket(workdir) if terminal else None
        args = ["exec", "--detach", "--process", proc_path]
        if console:
            args += ["--console-socket", console.path]
        args.append(cid)
        try:
            pid = await self._detached(args, workdir, None if terminal else stdio, console)
            return pid, (console.master if console else None)
        finally:
            if console:
                console.close()
            with contextlib.suppress(OSError):
                os.unlink(proc_path)

    async def kill(self, cid: str, sig: int, all_processes: bool = False) -> None:
        args = ["kill"] + (["--all"] if all_processes else []) + [cid, str(sig)]
        await self._call(*args)

    async def delete(self, cid: str, force: bool = True) -> None:
        await self._call("delete", *(["--force"] if force else []), cid)

    async def state(self, cid: str) -> dict[str, Any] | None:
        try:
            out = await self._call("state", cid)
        except RuncError:
            return None
        value = json.loads(out)
        return value if isinstance(value, dict) else None

    async def ps(self, cid: str) -> list[int]:
        out = await self._call("ps", "--format", "json", cid)
        pids = json.loads(out or b"[]") or []
        return [int(p) for p in pids]

    async def update(self, cid: str, resources: dict[str, Any]) -> None:
        await self._call("update", "--resources", "-", cid, stdin_data=json.dumps(resources).encode())

    async def list(self) -> list[str]:
        out = await self._call("list", "--format", "json")
        items = json.loads(out or b"null") or []
        return [str(i["id"]) for i in items]


def _runc_message(text: str) -> str:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            return line
        if isinstance(entry, dict) and "msg" in entry:
            return str(entry["msg"])
        return line
    return text or "unknown error"


def _read_log(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f.read().splitlines() if '"level":"error"' in ln or "level=error" in ln]
    except OSError:
        return "no runc log"
    return "; ".join(_runc_message(ln) for ln in lines[-3:]) or "unknown error (see runc log)"
