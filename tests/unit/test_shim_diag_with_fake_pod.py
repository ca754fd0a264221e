"""The ShimDiag service over a fake pod and bridge: exec relays output and the exit code, tasks and
stacks answer, bad calls get the right ttrpc codes."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from hcsshim.api.shimdiag import shimdiag_pb2 as diag
from hcsshim.hvsock.abi import NULL_CONTAINER_ID
from hcsshim.shim.io import open_fifo, read_some
from hcsshim.shim.pod import Pod
from hcsshim.shim.process import State
from hcsshim.shim.service_diag import DiagService
from hcsshim.ttrpc import Code, Context, TtrpcError


class FakeChannel:
    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    async def read(self, n: int = 65536) -> bytes:
        data, self.data = self.data, b""
        return data

    async def write(self, data: bytes) -> None:
        pass

    def close_write(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class FakeBridge:
    exit_code: int = 0
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def execute_process(self, container_id: str, params: dict[str, Any]) -> Any:
        self.calls.append((container_id, params))
        return SimpleNamespace(pid=42, stdin=None, stdout=FakeChannel(b"6.1.0-fake\n"), stderr=FakeChannel())

    async def wait_process(self, container_id: str, pid: int, *, timeout: float | None = 0) -> int:
        return self.exit_code

    async def dump_stacks(self, *, timeout: float | None = None) -> str:
        return "guest thread 1"


def _pod(bridge: FakeBridge, dead: str = "") -> Pod:
    init = SimpleNamespace(state=State.RUNNING)
    task = SimpleNamespace(id="t1", init=init, execs={"e1": SimpleNamespace(state=State.STOPPED)})
    return cast(
        Pod, SimpleNamespace(host=SimpleNamespace(bridge=bridge), dead_reason=dead, tasks={"t1": task})
    )


CTX = Context(service="containerd.runhcs.v1.diag.ShimDiag", method="test")


async def _collect(path: str) -> bytes:
    fd = await open_fifo(path, os.O_RDONLY)
    out = b""
    try:
        while data := await read_some(fd):
            out += data
    finally:
        os.close(fd)
    return out


def test_exec_in_host_relays_output_and_exit_code_with_fake_pod(tmp_path: Path) -> None:
    bridge = FakeBridge(exit_code=3)
    service = DiagService(lambda: _pod(bridge))
    out = str(tmp_path / "out")
    os.mkfifo(out)

    async def go() -> tuple[diag.ExecProcessResponse, bytes]:
        reader = asyncio.create_task(_collect(out))
        resp = await service.exec_in_host(CTX, diag.ExecProcessRequest(args=["uname", "-r"], stdout=out))
        return resp, await asyncio.wait_for(reader, 10)

    resp, data = asyncio.run(go())
    assert resp.exit_code == 3
    assert data == b"6.1.0-fake\n"
    ((cid, params),) = bridge.calls
    assert cid == NULL_CONTAINER_ID
    assert params["CommandArgs"] == ["uname", "-r"]
    assert params["CreateInUtilityVM"] is True
    assert params["CreateStdOutPipe"] and not params["CreateStdInPipe"]


def test_exec_without_pod_or_args_fails_with_fake_pod() -> None:
    with pytest.raises(TtrpcError) as err:
        asyncio.run(DiagService(lambda: None).exec_in_host(CTX, diag.ExecProcessRequest(args=["true"])))
    assert err.value.code == Code.FAILED_PRECONDITION
    with pytest.raises(TtrpcError) as err:
        asyncio.run(DiagService(lambda: _pod(FakeBridge())).exec_in_host(CTX, diag.ExecProcessRequest()))
    assert err.value.code == Code.INVALID_ARGUMENT and "args" in str(err.value)
    dead = DiagService(lambda: _pod(FakeBridge(), dead="utility VM x exited"))
    with pytest.raises(TtrpcError, match="utility VM x exited"):
        asyncio.run(dead.exec_in_host(CTX, diag.ExecProcessRequest(args=["true"])))


def test_tasks_stacks_pid_and_share_with_fake_pod() -> None:
    service = DiagService(lambda: _pod(FakeBridge()))
    tasks = asyncio.run(service.tasks(CTX, diag.TasksRequest(execs=True)))
    assert [(t.id, [(e.id, e.state) for e in t.execs]) for t in tasks.tasks] == [
        ("t1", [("", "running"), ("e1", "stopped")])
    ]
    assert not asyncio.run(service.tasks(CTX, diag.TasksRequest())).tasks[0].execs
    stacks = asyncio.run(service.stacks(CTX, diag.StacksRequest()))
    assert "test_shim_diag_with_fake_pod.py" in stacks.stacks
    assert stacks.guest_stacks == "guest thread 1"
    assert asyncio.run(service.pid(CTX, diag.PidRequest())).pid == os.getpid()
    with pytest.raises(TtrpcError) as err:
        asyncio.run(service.share(CTX, diag.ShareRequest(host_path="/x")))
    assert err.value.code == Code.UNIMPLEMENTED


def test_meminfo_is_parsed_into_bytes() -> None:
    from hcsshim.shim.service_diag import parse_meminfo

    text = "MemTotal:        1004352 kB\nMemAvailable:     826000 kB\nHugePages_Total:       0\nbad line\n"
    assert parse_meminfo(text) == {
        "MemTotal": 1004352 * 1024,
        "MemAvailable": 826000 * 1024,
        "HugePages_Total": 0,
    }
