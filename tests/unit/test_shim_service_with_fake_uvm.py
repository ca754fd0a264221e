"""Task service and pod model against a fake UVM and bridge: events order, FIFO IO, pods, UVM death."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from hcsshim.api.cgroups.v1 import metrics_pb2 as cgroups_v1
from hcsshim.api.containerd.events import task_pb2 as events
from hcsshim.api.containerd.task.v2 import shim_pb2 as v2
from hcsshim.api.containerd.types.task import task_pb2 as task_types
from hcsshim.api.runhcs.options import runhcs_pb2
from hcsshim.api.ttrpc import request_pb2
from hcsshim.gcs import protocol as p
from hcsshim.gcs.connection import ExitCallback, OomCallback, dispatcher
from hcsshim.network import guest_network_spec
from hcsshim.shim.service_task import TaskService
from hcsshim.ttrpc import Code, Server, TtrpcError

M = TypeVar("M", bound=Message)
CRI_TYPE = "io.kubernetes.cri.container-type"
CRI_SANDBOX = "io.kubernetes.cri.sandbox-id"


class FakeChannel:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.written = bytearray()
        self.write_closed = asyncio.Event()

    async def read(self, n: int = 65536) -> bytes:
        return await self.queue.get()

    async def write(self, data: bytes) -> None:
        self.written += data

    def close_write(self) -> None:
        self.write_closed.set()

    def close(self) -> None:
        self.write_closed.set()


@dataclass
class FakeProcess:
    container_id: str
    pid: int
    params: dict[str, Any]
    stdin: FakeChannel | None
    stdout: FakeChannel | None
    stderr: FakeChannel | None
    exit: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def finish(self, code: int) -> None:
        for ch in (self.stdout, self.stderr):
            if ch is not None:
                ch.queue.put_nowait(b"")
        if not self.exit.done():
            self.exit.set_result(code)


# (container id, process params) -> (stdout bytes, exit code or None to keep running)
Script = Callable[[str, dict[str, Any]], tuple[bytes, int | None]]


class FakeBridge:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.documents: dict[str, dict[str, Any]] = {}
        self.processes: dict[int, FakeProcess] = {}
        self.resizes: list[tuple[int, int, int]] = []
        self.deleted: list[str] = []
        self._pids = itertools.count(100)
        self.failed = ""
        self.notify: Callable[[dict[str, Any]], None] | None = None

    def set_notify(self, callback: Callable[[dict[str, Any]], None] | None) -> None:
        self.notify = callback

    def send_oom(self, container_id: str) -> None:
        """What the real BridgeClient hands its callback for a NOTIFY_OOM message."""
        assert self.notify is not None
        self.notify(p.oom_notification(container_id))

    def _check(self) -> None:
        if self.failed:
            raise ConnectionError(self.failed)

    async def create_container(self, container_id: str, document: dict[str, Any], **_: Any) -> dict[str, Any]:
        self._check()
        self.documents[container_id] = document
        return {}

    async def start_container(self, container_id: str, **_: Any) -> None:
        self._check()

    async def execute_process(self, container_id: str, params: dict[str, Any], **_: Any) -> FakeProcess:
        self._check()
        proc = FakeProcess(
            container_id,
            next(self._pids),
            params,
            FakeChannel() if params.get("CreateStdInPipe") else None,
            FakeChannel() if params.get("CreateStdOutPipe") else None,
            FakeChannel() if params.get("CreateStdErrPipe") else None,
        )
        self.processes[proc.pid] = proc
        output, code = self.script(container_id, params)
        if proc.stdout is not None and output:
            proc.stdout.queue.put_nowait(output)
        if code is not None:
            asyncio.get_running_loop().call_later(0.01, proc.finish, code)
        return proc

    async def wait_process(self, container_id: str, pid: int, **_: Any) -> int:
        self._check()
        return await self.processes[pid].exit

    async def signal_process(self, container_id: str, pid: int, signal: int, **_: Any) -> None:
        self._check()
        self.processes[pid].finish(128 + signal)

    async def resize_console(self, container_id: str, pid: int, height: int, width: int, **_: Any) -> None:
        self.resizes.append((pid, height, width))

    async def dump_stacks(self, **_: Any) -> str:
        return "fake guest stacks"

    async def get_properties(self, container_id: str, property_types: list[str], **_: Any) -> dict[str, Any]:
        if "ProcessList" in property_types:
            pids = [p.pid for p in self.processes.values() if p.container_id == container_id]
            return {
                "ProcessList": [{"ProcessId": pid} for pid in pids if not self.processes[pid].exit.done()]
            }
        return {"LCOWMetrics": {"memory": {"usage": {"usage": 4096}}, "pids": {"current": 2}}}

    async def update_container(self, container_id: str, resources: dict[str, Any], **_: Any) -> None:
        self.documents[container_id]["updated"] = resources

    async def shutdown_forced(self, container_id: str, **_: Any) -> None:
        pass

    async def delete_container_state(self, container_id: str, **_: Any) -> None:
        self.deleted.append(container_id)

    def fail(self, reason: str) -> None:
        self.failed = reason
        for proc in self.processes.values():
            if not proc.exit.done():
                proc.exit.set_exception(ConnectionError(reason))


class FakeHost:
    def __init__(self, host_id: str, script: Script) -> None:
        self.id = host_id
        self._bridge = FakeBridge(script)
        self.shares: dict[str, bool] = {}
        self.terminated = False
        self.died = asyncio.Event()
        self.reason = ""

    @property
    def bridge(self) -> FakeBridge:
        return self._bridge

    @property
    def system(self) -> None:
        return None  # no compute system: Pause/Resume are refused

    bundle_root = ""

    def adjust_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        return guest_network_spec(spec)

    def subscribe(self, *, on_exit: ExitCallback | None = None, on_oom: OomCallback | None = None) -> None:
        # The real connection's typed dispatch, over the fake bridge's raw notify callback.
        self._bridge.set_notify(dispatcher(on_exit, on_oom))

    async def add_plan9(self, host_path: str, read_only: bool = True) -> str:
        self.shares[host_path] = read_only
        return f"/run/mounts/plan9/{len(self.shares)}"

    async def remove_plan9(self, host_path: str) -> None:
        del self.shares[host_path]

    async def terminate(self) -> None:
        self.terminated = True
        self.reason = "terminated"
        self.died.set()

    async def wait(self) -> None:
        await self.died.wait()

    def exit_reason(self) -> str:
        return f"utility VM {self.id} exited: {self.reason}"

    def crash(self) -> None:
        self.reason = "qemu killed"
        self._bridge.fail(self.exit_reason())
        self.died.set()


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, Message]] = []

    def publish(self, topic: str, event: Message, *, namespace: str | None = None) -> None:
        self.items.append((topic, event))

    def topics(self, container_id: str | None = None) -> list[str]:
        return [
            t
            for t, e in self.items
            if container_id is None or getattr(e, "container_id", None) == container_id
        ]


def echo_script(output: bytes = b"hello\n", code: int | None = 0) -> Script:
    def script(cid: str, params: dict[str, Any]) -> tuple[bytes, int | None]:
        return output, code

    return script


class Harness:
    def __init__(self, tmp: Path, script: Script) -> None:
        self.tmp = tmp
        self.script = script
        self.events = Events()
        self.hosts: list[FakeHost] = []
        self.shutdowns = 0
        self.service = TaskService(self.events, self._factory, namespace="default", on_shutdown=self._down)
        self.server = Server()
        self.service.register(self.server)
        self._readers: list[asyncio.Task[bytes]] = []

    def _down(self) -> None:
        self.shutdowns += 1

    async def _factory(
        self, uvm_id: str, spec: dict[str, Any], options: runhcs_pb2.Options | None
    ) -> FakeHost:
        host = FakeHost(uvm_id, self.script)
        self.hosts.append(host)
        return host

    async def call(self, method: str, req: Message, resp_type: type[M], service: str = "v2") -> M:
        request = request_pb2.Request(
            service=f"containerd.task.{service}.Task", method=method, payload=req.SerializeToString()
        )
        response = await self.server.dispatch(request)
        if response.status.code != 0:
            raise TtrpcError(response.status.code, response.status.message)
        return resp_type.FromString(response.payload)

    def bundle(self, task_id: str, annotations: dict[str, str] | None = None, terminal: bool = False) -> Path:
        b = self.tmp / task_id
        (b / "rootfs").mkdir(parents=True)
        spec = {
            "process": {"args": ["echo", "hi"], "terminal": terminal},
            "root": {"path": "rootfs"},
            "annotations": annotations or {},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        }
        (b / "config.json").write_text(json.dumps(spec))
        return b

    def fifo(self, name: str) -> str:
        path = str(self.tmp / name)
        os.mkfifo(path)
        return path

    def read_fifo(self, path: str) -> asyncio.Task[bytes]:
        """Open the read side like containerd does (before Create) and collect until EOF."""
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

        async def collect() -> bytes:
            data = bytearray()
            loop = asyncio.get_running_loop()
            try:
                while True:
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        await asyncio.sleep(0.01)
                        continue
                    if not chunk:
                        # EOF only counts once a writer has been there and gone.
                        if data or loop.time() > start + 5:
                            return bytes(data)
                        await asyncio.sleep(0.01)
                        continue
                    data += chunk
            finally:
                os.close(fd)

        start = asyncio.get_running_loop().time()
        task = asyncio.create_task(collect())
        self._readers.append(task)
        return task

    async def create(self, task_id: str, bundle: Path, stdout: str = "", terminal: bool = False) -> int:
        req = v2.CreateTaskRequest(id=task_id, bundle=str(bundle), stdout=stdout, terminal=terminal)
        return (await self.call("Create", req, v2.CreateTaskResponse)).pid


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_standalone_task_with_fake_uvm_events_and_output(tmp_path: Path) -> None:
    async def body() -> None:
        h = Harness(tmp_path, echo_script(b"hello from a UVM\n", 3))
        out = h.fifo("out")
        reader = h.read_fifo(out)
        bundle = h.bundle("c1")
        await h.create("c1", bundle, stdout=out)
        host = h.hosts[0]
        doc = host.bridge.documents["c1"]
        assert doc["OciSpecification"]["root"]["path"] == "/run/mounts/plan9/1"
        assert host.shares == {str(bundle / "rootfs"): False}
        state = await h.call("State", v2.StateRequest(id="c1"), v2.StateResponse)
        assert state.status == task_types.CREATED
        started = await h.call("Start", v2.StartRequest(id="c1"), v2.StartResponse)
        assert started.pid > 0
        waited = await h.call("Wait", v2.WaitRequest(id="c1"), v2.WaitResponse)
        assert waited.exit_status == 3
        assert await reader == b"hello from a UVM\n"
        deleted = await h.call("Delete", v2.DeleteRequest(id="c1"), v2.DeleteResponse)
        assert deleted.exit_status == 3 and deleted.pid == started.pid
        assert h.events.topics() == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
        exit_event = h.events.items[2][1]
        assert isinstance(exit_event, events.TaskExit)
        assert (exit_event.id, exit_event.exit_status) == ("c1", 3)
        assert host.terminated and host.shares == {} and host.bridge.deleted == ["c1"]
        await h.call("Shutdown", v2.ShutdownRequest(id="c1"), empty_pb2.Empty)
        assert h.shutdowns == 0  # scheduled with call_soon
        await asyncio.sleep(0)
        assert h.shutdowns == 1

    run(body())


def test_exec_with_tty_and_resize_with_fake_uvm(tmp_path: Path) -> None:
    def script(cid: str, params: dict[str, Any]) -> tuple[bytes, int | None]:
        if "OciProcess" in params:
            return b"# ", None  # an interactive shell: runs until killed
        return b"", None

    async def body() -> None:
        h = Harness(tmp_path, script)
        await h.create("c1", h.bundle("c1"))
        await h.call("Start", v2.StartRequest(id="c1"), v2.StartResponse)
        out = h.fifo("exec-out")
        reader = h.read_fifo(out)
        spec = any_pb2.Any(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
            value=json.dumps({"args": ["sh"], "terminal": True, "cwd": "/"}).encode(),
        )
        req = v2.ExecProcessRequest(id="c1", exec_id="e1", terminal=True, stdout=out, stderr="", spec=spec)
        await h.call("Exec", req, empty_pb2.Empty)
        with pytest.raises(TtrpcError) as dup:
            await h.call("Exec", req, empty_pb2.Empty)
        assert dup.value.code == Code.ALREADY_EXISTS
        pid = (await h.call("Start", v2.StartRequest(id="c1", exec_id="e1"), v2.StartResponse)).pid
        bridge = h.hosts[0].bridge
        params = bridge.processes[pid].params
        assert params["OciProcess"]["terminal"] is True and params["CreateStdErrPipe"] is False
        await h.call(
            "ResizePty", v2.ResizePtyRequest(id="c1", exec_id="e1", width=80, height=24), empty_pb2.Empty
        )
        assert bridge.resizes == [(pid, 24, 80)]
        await h.call("Kill", v2.KillRequest(id="c1", exec_id="e1", signal=9), empty_pb2.Empty)
        waited = await h.call("Wait", v2.WaitRequest(id="c1", exec_id="e1"), v2.WaitResponse)
        assert waited.exit_status == 137
        assert await reader == b"# "
        with pytest.raises(TtrpcError) as gone:
            await h.call("Kill", v2.KillRequest(id="c1", exec_id="e1", signal=9), empty_pb2.Empty)
        assert gone.value.code == Code.NOT_FOUND
        await h.call("Delete", v2.DeleteRequest(id="c1", exec_id="e1"), v2.DeleteResponse)
        assert h.events.topics() == [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/delete",
        ]
        with pytest.raises(TtrpcError) as running:
            await h.call("Delete", v2.DeleteRequest(id="c1"), v2.DeleteResponse)
        assert running.value.code == Code.FAILED_PRECONDITION
        await h.call("Kill", v2.KillRequest(id="c1", signal=15, all=True), empty_pb2.Empty)
        await h.call("Wait", v2.WaitRequest(id="c1"), v2.WaitResponse, service="v3")
        await h.call("Delete", v2.DeleteRequest(id="c1"), v2.DeleteResponse, service="v3")

    run(body())


def test_pod_containers_share_one_fake_uvm(tmp_path: Path) -> None:
    async def body() -> None:
        h = Harness(tmp_path, echo_script(b"", None))
        sandbox = h.bundle("pod1", {CRI_TYPE: "sandbox", CRI_SANDBOX: "pod1"})
        await h.create("pod1", sandbox)
        with pytest.raises(TtrpcError) as early:
            await h.create("c1", h.bundle("c1", {CRI_TYPE: "container", CRI_SANDBOX: "pod1"}))
        assert early.value.code == Code.FAILED_PRECONDITION  # sandbox not running yet
        await h.call("Start", v2.StartRequest(id="pod1"), v2.StartResponse)
        await h.create("c1", tmp_path / "c1")
        await h.create("c2", h.bundle("c2", {CRI_TYPE: "container", CRI_SANDBOX: "pod1"}))
        with pytest.raises(TtrpcError) as other:
            await h.create("x", h.bundle("x", {CRI_TYPE: "container", CRI_SANDBOX: "pod2"}))
        assert other.value.code == Code.FAILED_PRECONDITION
        with pytest.raises(TtrpcError) as alone:
            await h.create("y", h.bundle("y"))
        assert alone.value.code == Code.FAILED_PRECONDITION
        assert len(h.hosts) == 1
        host = h.hosts[0]
        assert set(host.bridge.documents) == {"pod1", "c1", "c2"}
        for cid in ("c1", "c2"):
            await h.call("Start", v2.StartRequest(id=cid), v2.StartResponse)
        pids = await h.call("Pids", v2.PidsRequest(id="c1"), v2.PidsResponse)
        assert len(pids.processes) == 1
        connect = await h.call("Connect", v2.ConnectRequest(id="pod1"), v2.ConnectResponse)
        assert connect.shim_pid == os.getpid() and connect.task_pid > 0
        await h.call("Kill", v2.KillRequest(id="pod1", signal=9), empty_pb2.Empty)
        await h.call("Wait", v2.WaitRequest(id="pod1"), v2.WaitResponse)
        with pytest.raises(TtrpcError) as busy:
            await h.call("Delete", v2.DeleteRequest(id="pod1"), v2.DeleteResponse)
        assert busy.value.code == Code.FAILED_PRECONDITION
        for cid in ("c1", "c2"):
            await h.call("Kill", v2.KillRequest(id=cid, signal=9), empty_pb2.Empty)
            await h.call("Wait", v2.WaitRequest(id=cid), v2.WaitResponse)
            await h.call("Delete", v2.DeleteRequest(id=cid), v2.DeleteResponse)
            await h.call("Shutdown", v2.ShutdownRequest(id=cid), empty_pb2.Empty)
        await asyncio.sleep(0)
        assert h.shutdowns == 0 and not host.terminated
        await h.call("Delete", v2.DeleteRequest(id="pod1"), v2.DeleteResponse)
        assert host.terminated

    run(body())


def test_uvm_death_fails_tasks_with_fake_uvm(tmp_path: Path) -> None:
    async def body() -> None:
        h = Harness(tmp_path, echo_script(b"", None))
        await h.create("c1", h.bundle("c1"))
        await h.call("Start", v2.StartRequest(id="c1"), v2.StartResponse)
        h.hosts[0].crash()
        waited = await h.call("Wait", v2.WaitRequest(id="c1"), v2.WaitResponse)
        assert waited.exit_status == 255
        task = h.service.pod.tasks["c1"] if h.service.pod else None
        assert task is not None and "qemu killed" in task.init.exit_reason
        assert h.events.topics()[-1] == "/tasks/exit"
        await h.call("Delete", v2.DeleteRequest(id="c1"), v2.DeleteResponse)

    run(body())


def test_errors_and_misc_rpcs_with_fake_uvm(tmp_path: Path) -> None:
    async def body() -> None:
        h = Harness(tmp_path, echo_script(b"", None))
        with pytest.raises(TtrpcError) as missing:
            await h.call("State", v2.StateRequest(id="nope"), v2.StateResponse)
        assert missing.value.code == Code.NOT_FOUND
        with pytest.raises(TtrpcError) as ckpt:
            await h.call("Checkpoint", v2.CheckpointTaskRequest(id="nope"), empty_pb2.Empty)
        assert ckpt.value.code == Code.UNIMPLEMENTED
        await h.create("c1", h.bundle("c1"))
        with pytest.raises(TtrpcError) as dup:
            await h.create("c1", tmp_path / "c1")
        assert dup.value.code == Code.ALREADY_EXISTS
        await h.call("Start", v2.StartRequest(id="c1"), v2.StartResponse)
        stats = await h.call("Stats", v2.StatsRequest(id="c1"), v2.StatsResponse)
        # containerd's Linux CRI decodes only the cgroups Metrics types (bare type URL).
        assert stats.stats.type_url == "io.containerd.cgroups.v1.Metrics"
        assert cgroups_v1.Metrics.FromString(stats.stats.value).memory.usage.usage == 4096
        resources = any_pb2.Any(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
            value=json.dumps({"memory": {"limit": 1 << 20}}).encode(),
        )
        await h.call("Update", v2.UpdateTaskRequest(id="c1", resources=resources), empty_pb2.Empty)
        assert h.hosts[0].bridge.documents["c1"]["updated"] == {"memory": {"limit": 1 << 20}}
        with pytest.raises(TtrpcError) as annotated:
            update = v2.UpdateTaskRequest(id="c1", resources=resources, annotations={"a": "b"})
            await h.call("Update", update, empty_pb2.Empty)
        assert annotated.value.code == Code.UNIMPLEMENTED and "annotations ['a']" in annotated.value.message
        with pytest.raises(TtrpcError) as pause:
            await h.call("Pause", v2.PauseRequest(id="c1"), empty_pb2.Empty)
        assert pause.value.code == Code.UNIMPLEMENTED  # the fake host has no compute system
        await h.call("Shutdown", v2.ShutdownRequest(id="c1"), empty_pb2.Empty)
        await asyncio.sleep(0)
        assert h.shutdowns == 0  # a task is still there
        await h.service.close()
        assert h.hosts[0].terminated
        with contextlib.suppress(Exception):
            for reader in h._readers:
                reader.cancel()

    run(body())


def test_oom_notification_publishes_task_oom_after_start_with_fake_uvm(tmp_path: Path) -> None:
    async def body() -> None:
        h = Harness(tmp_path, echo_script(b"", None))
        await h.create("c1", h.bundle("c1"))
        bridge = h.hosts[0].bridge
        assert bridge.notify is not None  # the pod listens to the guest's notifications
        bridge.send_oom("c1")  # reported before TaskStart went out: held back until then
        bridge.notify(p.container_notification("c1", "UnexpectedExit"))  # exits come from Wait
        bridge.send_oom("unknown")  # not one of this pod's tasks: ignored
        assert h.events.topics() == ["/tasks/create"]
        pid = (await h.call("Start", v2.StartRequest(id="c1"), v2.StartResponse)).pid
        assert h.events.topics() == ["/tasks/create", "/tasks/start", "/tasks/oom"]
        bridge.send_oom("c1")  # while it runs: published at once, before the exit that follows
        bridge.processes[pid].finish(137)
        await h.call("Wait", v2.WaitRequest(id="c1"), v2.WaitResponse)
        await h.call("Delete", v2.DeleteRequest(id="c1"), v2.DeleteResponse)
        assert h.events.topics() == [
            "/tasks/create",
            "/tasks/start",
            "/tasks/oom",
            "/tasks/oom",
            "/tasks/exit",
            "/tasks/delete",
        ]
        oom = h.events.items[3][1]
        assert isinstance(oom, events.TaskOOM) and oom.container_id == "c1"

    run(body())
