"""``shimdiag``: upstream's diagnostics tool for running shims (list, exec, stacks, tasks).

Shims are found by their server processes (``python -m hcsshim.cli.shim_* ... -socket <address> serve``)
and named as upstream names their pipes, ``containerd-shim-<namespace>-<id>``; a bare task id or a
``unix://`` socket address works too. Every command talks to the shim's ShimDiag ttrpc service.

    shimdiag list [--pids]
    shimdiag exec [-i] [-t] [--workdir DIR] SHIM COMMAND [ARG...]   # in the shim's UVM; its exit code
    shimdiag stacks SHIM                                        # shim threads/tasks, then the guest agent's
    shimdiag tasks [--execs] SHIM
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from hcsshim import procfs
from hcsshim.api.shimdiag import shimdiag_pb2 as diag
from hcsshim.shim.flags import FlagError, parse
from hcsshim.shim.io import open_fifo, read_some, write_all
from hcsshim.shim.service_diag import SERVICE
from hcsshim.ttrpc import Client, TtrpcError

SHIM_MODULES = ("hcsshim.cli.shim_runhcs_v1", "hcsshim.cli.shim_process_v2", "hcsshim.cli.shim_lcow_v2")
NAME_PREFIX = "containerd-shim-"
CONNECT_TIMEOUT = 5.0
CALL_TIMEOUT = 30.0


class ShimdiagError(RuntimeError):
    pass


@dataclass(frozen=True)
class Shim:
    namespace: str
    id: str
    address: str
    pid: int

    @property
    def name(self) -> str:
        return f"{NAME_PREFIX}{self.namespace}-{self.id}"


def _server_flags(argv: list[str]) -> list[str] | None:
    """The shim flags of a ``python -m <shim module> ... serve`` command line, else None."""
    for module in SHIM_MODULES:
        if module in argv and argv[-1:] == ["serve"]:
            return argv[argv.index(module) + 1 :]
    return None


def find_shims() -> list[Shim]:
    shims: list[Shim] = []
    for pid in procfs.pids():
        argv = [a.decode(errors="replace") for a in procfs.argv(pid) if a]
        args = _server_flags(argv)
        if args is None:
            continue
        try:
            flags = parse(args)
        except FlagError:
            continue
        if flags.socket:
            shims.append(Shim(flags.namespace, flags.id, flags.socket, pid))
    return sorted(shims, key=lambda s: s.name)


def resolve(name: str) -> Shim:
    """A shim by upstream-style name, task id, or socket address."""
    if name.startswith("unix://") or name.startswith("/"):
        return Shim("", "", name, 0)
    shims = find_shims()
    matches = [s for s in shims if name in (s.name, s.id)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        known = ", ".join(s.name for s in shims) or "none running"
        raise ShimdiagError(f"no shim named {name!r} (shims: {known})")
    raise ShimdiagError(f"{name!r} names several shims: {', '.join(s.name for s in matches)}")


async def _call(shim: Shim, method: str, request: Message, response: type[Message]) -> Message:
    try:
        client = await Client.connect(shim.address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise ShimdiagError(f"connect to {shim.name or shim.address}: {exc}") from exc
    try:
        # exec runs as long as the command does; the other calls answer at once.
        timeout = None if method == "DiagExecInHost" else CALL_TIMEOUT
        return await client.call(SERVICE, method, request, response, timeout=timeout)
    except TtrpcError as exc:
        raise ShimdiagError(f"{method}: {exc}") from exc
    finally:
        await client.close()


async def _copy_out(path: str, out_fd: int) -> None:
    fd = await open_fifo(path, os.O_RDONLY)
    try:
        while data := await read_some(fd):
            await asyncio.to_thread(os.write, out_fd, data)
    finally:
        os.close(fd)


def _stdin_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes]) -> None:
    while True:
        try:
            data = os.read(0, 32 * 1024)
        except OSError:
            data = b""
        loop.call_soon_threadsafe(queue.put_nowait, data)
        if not data:
            return


async def _copy_in(path: str) -> None:
    """Our stdin into the process's (its EOF closes the FIFO, which the guest sees as EOF). A daemon
    thread reads it: a read from a terminal cannot be cancelled, and must not hold up our exit."""
    fd = await open_fifo(path, os.O_WRONLY)
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    threading.Thread(target=_stdin_reader, args=(asyncio.get_running_loop(), queue), daemon=True).start()
    try:
        while data := await queue.get():
            await write_all(fd, data)
    finally:
        os.close(fd)


async def exec_in_shim(
    shim: Shim, args: Sequence[str], *, terminal: bool = False, stdin: bool = False, workdir: str = ""
) -> int:
    with tempfile.TemporaryDirectory(prefix="shimdiag-") as d:
        paths = {n: os.path.join(d, n) for n in ("stdin", "stdout", "stderr")}
        for p in paths.values():
            os.mkfifo(p, 0o600)
        req = diag.ExecProcessRequest(
            args=list(args),
            workdir=workdir,
            terminal=terminal,
            stdin=paths["stdin"] if stdin else "",
            stdout=paths["stdout"],
            stderr="" if terminal else paths["stderr"],
        )
        copies = [asyncio.create_task(_copy_out(paths["stdout"], 1))]
        if not terminal:
            copies.append(asyncio.create_task(_copy_out(paths["stderr"], 2)))
        stdin_task = asyncio.create_task(_copy_in(paths["stdin"])) if stdin else None
        try:
            resp = await _call(shim, "DiagExecInHost", req, diag.ExecProcessResponse)
            # The shim answers once it drained the output, so the copies end on their own.
            await asyncio.wait_for(asyncio.gather(*copies), timeout=CALL_TIMEOUT)
        finally:
            tasks = [*copies, *([stdin_task] if stdin_task is not None else [])]
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
        assert isinstance(resp, diag.ExecProcessResponse)
        return int(resp.exit_code)


def _cmd_list(ns: argparse.Namespace) -> int:
    for shim in find_shims():
        print(f"{shim.name}\t{shim.pid}" if ns.pids else shim.name)
    return 0


def _cmd_exec(ns: argparse.Namespace) -> int:
    shim = resolve(ns.shim)
    return asyncio.run(exec_in_shim(shim, ns.args, terminal=ns.tty, stdin=ns.interactive, workdir=ns.workdir))


def _cmd_stacks(ns: argparse.Namespace) -> int:
    resp = asyncio.run(_call(resolve(ns.shim), "DiagStacks", diag.StacksRequest(), diag.StacksResponse))
    assert isinstance(resp, diag.StacksResponse)
    print(resp.stacks)
    if resp.guest_stacks:
        print("\n--- guest ---\n" + resp.guest_stacks)
    return 0


def _cmd_tasks(ns: argparse.Namespace) -> int:
    request = diag.TasksRequest(execs=ns.execs)
    resp = asyncio.run(_call(resolve(ns.shim), "DiagTasks", request, diag.TasksResponse))
    assert isinstance(resp, diag.TasksResponse)
    for task in resp.tasks:
        print(task.id)
        for e in task.execs:
            print(f"  exec {e.id or '(init)'}\t{e.state}")
    return 0


def _cmd_stats(ns: argparse.Namespace) -> int:
    resp = asyncio.run(_call(resolve(ns.shim), "DiagStats", diag.VmStatsRequest(), diag.VmStatsResponse))
    assert isinstance(resp, diag.VmStatsResponse)
    mib = 1 << 20
    print(f"uvm\t{resp.uvm_id}")
    print(f"vmm pid\t{resp.vmm_pid}")
    print(f"vmm rss\t{resp.vmm_rss_bytes // mib} MiB")
    print(f"assigned memory\t{resp.assigned_memory_bytes // mib} MiB")
    print(f"guest MemTotal\t{resp.guest_mem_total_bytes // mib} MiB")
    print(f"guest MemAvailable\t{resp.guest_mem_available_bytes // mib} MiB")
    print(f"uptime\t{resp.uptime_ms / 1000:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shimdiag", description="diagnostics for running hcsshim shims")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("list", help="list the running shims")
    p.add_argument("--pids", action="store_true", help="also print each shim server's pid")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("exec", help="run a command in a shim's utility VM")
    p.add_argument("-i", "--interactive", action="store_true", help="pass our stdin to the command")
    p.add_argument("-t", "--tty", action="store_true", help="give the command a terminal")
    p.add_argument("--workdir", default="", help="working directory in the UVM (default /)")
    p.add_argument("shim")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    p.set_defaults(func=_cmd_exec)
    p = sub.add_parser("stacks", help="the shim's and its guest agent's stacks")
    p.add_argument("shim")
    p.set_defaults(func=_cmd_stacks)
    p = sub.add_parser("tasks", help="the tasks a shim serves")
    p.add_argument("--execs", action="store_true", help="with each task's processes and their states")
    p.add_argument("shim")
    p.set_defaults(func=_cmd_tasks)
    p = sub.add_parser("stats", help="the shim's utility VM: VMM memory, guest memory, uptime")
    p.add_argument("shim")
    p.set_defaults(func=_cmd_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if ns.command is None:
        parser.print_help()
        return 2
    if ns.command == "exec" and not ns.args:
        parser.error("exec: a command is required")
    try:
        code: int = ns.func(ns)
    except ShimdiagError as exc:
        print(f"shimdiag: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
