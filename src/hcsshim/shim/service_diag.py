"""hcsshim's diagnostics service ``containerd.runhcs.v1.diag.ShimDiag``, served beside the task service
on the shim's socket (what the ``shimdiag`` command talks to; reference hcsshim-v2.md §1.7).

- ``DiagExecInHost`` runs a process in the pod's UVM itself (not in a container; for process-v2 that is
  the host the local agent runs on), its stdio relayed to the FIFOs the caller created, and answers
  with its exit code once the output is drained.
- ``DiagStacks``: every thread and asyncio task of the shim, and the guest agent's (``DumpStacks``).
- ``DiagTasks``: the pod's tasks, with their execs and states when asked.
- ``DiagPid``: the shim server's pid.
- ``DiagStats`` (ours): the UVM's own figures: the VMM's pid and RSS, the memory the VM was given, the
  guest kernel's MemTotal/MemAvailable and the uptime. process-v2 has no VM and says so.
- ``DiagShare`` answers Unimplemented: upstream's ignores ``uvm_path`` and picks the guest path itself,
  which a caller could not find out from the empty response.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message

from hcsshim.api.shimdiag import shimdiag_pb2 as diag
from hcsshim.hvsock.abi import NULL_CONTAINER_ID
from hcsshim.shim.io import ProcessIO
from hcsshim.shim.pod import Pod
from hcsshim.shim.pod_host import PodHost
from hcsshim.ttrpc import Code, Context, MethodTable, Server, TtrpcError
from hcsshim.ttrpc.status import from_exception
from hcsshim.uvm.utility_vm import UtilityVM

log = logging.getLogger("hcsshim.shim.diag")

SERVICE = "containerd.runhcs.v1.diag.ShimDiag"
GUEST_STACKS_TIMEOUT = 5.0
OUTPUT_DRAIN_TIMEOUT = 10.0
UNKNOWN_EXIT = 255


def host_stacks() -> str:
    """The shim's own threads and asyncio tasks (Python's counterpart of a goroutine dump)."""
    out: list[str] = []
    for tid, frame in sys._current_frames().items():
        out.append(f"thread {tid}:\n" + "".join(traceback.format_stack(frame)))
    for task in asyncio.all_tasks():
        frames = task.get_stack()
        lines = traceback.format_list(traceback.extract_stack(frames[-1])) if frames else []
        out.append(f"task {task.get_name()}:\n" + "".join(lines))
    return "\n".join(out)


class DiagService:
    """``pod`` gives the pod whose host shimdiag's calls go into (None: no UVM yet); ``pods`` every pod
    whose tasks DiagTasks lists (default: that one; lcow-v2 has several in one UVM)."""

    def __init__(self, pod: Callable[[], Pod | None], pods: Callable[[], list[Pod]] | None = None) -> None:
        self._pod = pod
        self._all = pods

    def register(self, server: Server) -> None:
        handlers: dict[str, tuple[type[Message], Callable[[Context, Any], Awaitable[Message]]]] = {
            "DiagExecInHost": (diag.ExecProcessRequest, self.exec_in_host),
            "DiagStacks": (diag.StacksRequest, self.stacks),
            "DiagTasks": (diag.TasksRequest, self.tasks),
            "DiagShare": (diag.ShareRequest, self.share),
            "DiagPid": (diag.PidRequest, self.pid),
            "DiagStats": (diag.VmStatsRequest, self.vm_stats),
        }
        table: MethodTable = dict(handlers)
        server.register(SERVICE, table)

    def _running_pod(self, what: str) -> Pod:
        pod = self._pod()
        if pod is None:
            raise TtrpcError(Code.FAILED_PRECONDITION, f"{what}: this shim has no UVM yet (no task created)")
        if pod.dead_reason:
            raise TtrpcError(Code.FAILED_PRECONDITION, f"{what}: {pod.dead_reason}")
        return pod

    async def exec_in_host(self, ctx: Context, req: diag.ExecProcessRequest) -> diag.ExecProcessResponse:
        if not req.args:
            raise TtrpcError(Code.INVALID_ARGUMENT, "DiagExecInHost: args is empty")
        pod = self._running_pod("DiagExecInHost")
        bridge = pod.host.bridge
        io = ProcessIO(req.stdin, req.stdout, req.stderr, req.terminal)
        params: dict[str, Any] = {
            **io.process_params(),
            "CommandArgs": list(req.args),
            "WorkingDirectory": req.workdir or "/",
            "CreateInUtilityVM": True,
        }
        try:
            guest = await bridge.execute_process(NULL_CONTAINER_ID, params)
        except Exception as exc:
            await io.close()
            raise TtrpcError(from_exception(exc).code, f"DiagExecInHost {list(req.args)}: {exc}") from exc
        io.attach(guest)
        try:
            code = int(await bridge.wait_process(NULL_CONTAINER_ID, guest.pid, timeout=0))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("diag exec lost", extra={"args": list(req.args), "error": exc})
            code = UNKNOWN_EXIT
        if not await io.wait_output(OUTPUT_DRAIN_TIMEOUT):
            log.warning("diag exec output not drained in time", extra={"args": list(req.args)})
        await io.close()
        # The guest reports the wait status as an unsigned 32-bit value.
        return diag.ExecProcessResponse(exit_code=code if code < 2**31 else code - 2**32)

    async def stacks(self, ctx: Context, req: diag.StacksRequest) -> diag.StacksResponse:
        resp = diag.StacksResponse(stacks=host_stacks())
        pod = self._pod()
        if pod is not None and not pod.dead_reason:
            try:
                resp.guest_stacks = await pod.host.bridge.dump_stacks(timeout=GUEST_STACKS_TIMEOUT)
            except Exception as exc:
                resp.guest_stacks = f"guest stacks unavailable: {exc}"
        return resp

    async def tasks(self, ctx: Context, req: diag.TasksRequest) -> diag.TasksResponse:
        resp = diag.TasksResponse()
        if self._all is not None:
            pods = self._all()
        else:
            pod = self._pod()
            pods = [pod] if pod is not None else []
        for task in [t for pod in pods for t in list(pod.tasks.values())]:
            entry = resp.tasks.add(id=task.id)
            if req.execs:
                entry.execs.add(id="", state=task.init.state.value)
                for exec_id, proc in list(task.execs.items()):
                    entry.execs.add(id=exec_id, state=proc.state.value)
        return resp

    async def share(self, ctx: Context, req: diag.ShareRequest) -> diag.ShareResponse:
        raise TtrpcError(
            Code.UNIMPLEMENTED,
            "DiagShare is not implemented: the guest path (uvm_path) cannot be chosen by the caller",
        )

    async def pid(self, ctx: Context, req: diag.PidRequest) -> diag.PidResponse:
        return diag.PidResponse(pid=os.getpid())

    async def vm_stats(self, ctx: Context, req: diag.VmStatsRequest) -> diag.VmStatsResponse:
        pod = self._running_pod("DiagStats")
        # An lcow-v2 pod is a view on the UVM all of the shim's pods share.
        vm = pod.host.vm if isinstance(pod.host, PodHost) else pod.host
        if not isinstance(vm, UtilityVM):
            raise TtrpcError(Code.FAILED_PRECONDITION, "DiagStats: this shim runs no utility VM (process-v2)")
        props = await vm.system.properties()
        backend = props.get("Backend") or {}
        pages = int(
            ((props.get("Memory") or {}).get("VirtualMachineMemory") or {}).get("AssignedMemory") or 0
        )
        meminfo = parse_meminfo(await _guest_output(vm, ["cat", "/proc/meminfo"]))
        return diag.VmStatsResponse(
            uvm_id=vm.id,
            vmm_pid=int(backend.get("ProcessId") or 0),
            vmm_rss_bytes=int(backend.get("RssBytes") or 0),
            assigned_memory_bytes=pages * 4096,
            guest_mem_total_bytes=meminfo.get("MemTotal", 0),
            guest_mem_available_bytes=meminfo.get("MemAvailable", 0),
            uptime_ms=int((props.get("Statistics") or {}).get("Uptime100ns") or 0) // 10_000,
        )


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as bytes per field (the kernel prints kB)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[name.strip()] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return out


async def _guest_output(vm: UtilityVM, args: list[str]) -> str:
    """Run `args` in the UVM itself and return its stdout."""
    params = {
        "CommandArgs": args,
        "WorkingDirectory": "/",
        "CreateInUtilityVM": True,
        "CreateStdOutPipe": True,
    }
    proc = await vm.bridge.execute_process(NULL_CONTAINER_ID, params)
    chunks: list[bytes] = []
    stdout = proc.stdout
    assert stdout is not None  # CreateStdOutPipe
    try:
        while data := await asyncio.wait_for(stdout.read(), OUTPUT_DRAIN_TIMEOUT):
            chunks.append(data)
        code = await vm.bridge.wait_process(NULL_CONTAINER_ID, proc.pid, timeout=OUTPUT_DRAIN_TIMEOUT)
    finally:
        proc.close()
    if code != 0:
        raise TtrpcError(Code.UNKNOWN, f"DiagStats: {' '.join(args)} in the UVM exited with {code}")
    return b"".join(chunks).decode(errors="replace")
