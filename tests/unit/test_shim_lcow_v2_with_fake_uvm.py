"""containerd-shim-lcow-v2's Sandbox API + Task v3 against a fake UVM: several pods in one VM, each
with its own sandbox container and guest bundle root; one pod stopped or shut down leaves the others;
the last ShutdownSandbox terminates the VM and ends the shim; SandboxStatus transitions; every RPC we
do not implement answers an error naming it."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any, TypeVar

import pytest
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from hcsshim.api.containerd.sandbox.v1 import sandbox_pb2 as sb
from hcsshim.api.containerd.task.v2 import shim_pb2 as v2
from hcsshim.api.runhcs.options import runhcs_pb2
from hcsshim.api.runhcs.stats import stats_pb2
from hcsshim.api.ttrpc import request_pb2
from hcsshim.shim import manager_v2
from hcsshim.shim.manager import StartError
from hcsshim.shim.options import StartInput
from hcsshim.shim.process import State
from hcsshim.shim.service_sandbox import (
    NOTREADY,
    READY,
    SERVICE,
    VM_FAILED_STATUS,
    SandboxShimService,
    pod_sandbox_config,
)
from hcsshim.ttrpc import Code, Server, TtrpcError
from tests.unit.test_shim_service_with_fake_uvm import (
    CRI_SANDBOX,
    CRI_TYPE,
    Events,
    FakeBridge,
    FakeHost,
    echo_script,
)

M = TypeVar("M", bound=Message)


class PodBridge(FakeBridge):
    """The fake bridge whose ShutdownForced ends the container's processes, as the guest's does."""

    async def shutdown_forced(self, container_id: str, **_: Any) -> None:
        for proc in self.processes.values():
            if proc.container_id == container_id:
                proc.finish(137)


class FakeVM(FakeHost):
    """A shared UVM: the fake host plus what the lcow-v2 shim asks of its VM."""

    def __init__(self, vm_id: str) -> None:
        super().__init__(vm_id, echo_script(b"", None))
        self._bridge = PodBridge(echo_script(b"", None))
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1

    async def properties(self) -> dict[str, Any]:
        return {
            "Statistics": {
                "Processor": {"TotalRuntime100ns": 12345},
                "Memory": {"MemoryUsagePrivateWorkingSetBytes": 300 << 20},
            },
            "Memory": {"VirtualMachineMemory": {"AssignedMemory": 262144}},
        }

    async def add_scsi(self, host_path: str, read_only: bool = True) -> Any:
        raise AssertionError("no SCSI in these tests")

    async def remove_scsi(self, host_path: str) -> None:
        raise AssertionError("no SCSI in these tests")

    async def guest_modify(self, resource_type: str, request_type: str, settings: dict[str, Any]) -> Any:
        raise AssertionError("no guest modify in these tests")

    async def add_network_adapter(
        self, nic_id: str, host_settings: dict[str, Any], guest_settings: dict[str, Any]
    ) -> None:
        raise AssertionError("no NICs in these tests")

    async def remove_network_adapter(
        self, nic_id: str, namespace_id: str, host_settings: dict[str, Any]
    ) -> None:
        raise AssertionError("no NICs in these tests")


class V2Harness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.events = Events()
        self.vms: list[FakeVM] = []
        self.factory_calls: list[tuple[str, dict[str, str], runhcs_pb2.Options | None]] = []
        self.shutdowns = 0
        self.service = SandboxShimService(
            self.events, self._factory, namespace="default", uvm_id="pod-a", on_shutdown=self._down
        )
        self.server = Server()
        self.service.register(self.server)

    def _down(self) -> None:
        self.shutdowns += 1

    async def _factory(
        self, uvm_id: str, annotations: dict[str, str], options: runhcs_pb2.Options | None
    ) -> tuple[FakeVM, str]:
        self.factory_calls.append((uvm_id, annotations, options))
        vm = FakeVM(uvm_id)
        self.vms.append(vm)
        return vm, "amd64"

    async def call(self, service: str, method: str, req: Message, resp_type: type[M]) -> M:
        request = request_pb2.Request(service=service, method=method, payload=req.SerializeToString())
        response = await self.server.dispatch(request)
        if response.status.code != 0:
            raise TtrpcError(response.status.code, response.status.message)
        return resp_type.FromString(response.payload)

    async def sandbox(self, method: str, req: Message, resp_type: type[M]) -> M:
        return await self.call(SERVICE, method, req, resp_type)

    async def task(self, method: str, req: Message, resp_type: type[M]) -> M:
        return await self.call("containerd.task.v3.Task", method, req, resp_type)

    def sandbox_bundle(self, sandbox_id: str, annotations: dict[str, str] | None = None) -> Path:
        b = self.tmp / "sandboxes" / sandbox_id
        b.mkdir(parents=True)
        if annotations is not None:
            (b / "config.json").write_text(json.dumps({"annotations": annotations}))
        return b

    def container_bundle(self, task_id: str, sandbox_id: str, kind: str = "container") -> Path:
        b = self.tmp / "tasks" / task_id
        (b / "rootfs").mkdir(parents=True)
        annotations = {CRI_TYPE: kind, CRI_SANDBOX: sandbox_id} if kind else {}
        spec = {"process": {"args": ["sleep", "60"]}, "root": {"path": "rootfs"}, "annotations": annotations}
        (b / "config.json").write_text(json.dumps(spec))
        return b

    async def run_pod(self, sandbox_id: str, **create: Any) -> None:
        bundle = self.sandbox_bundle(sandbox_id)
        await self.sandbox(
            "CreateSandbox",
            sb.CreateSandboxRequest(sandbox_id=sandbox_id, bundle_path=str(bundle), **create),
            sb.CreateSandboxResponse,
        )
        await self.sandbox(
            "StartSandbox", sb.StartSandboxRequest(sandbox_id=sandbox_id), sb.StartSandboxResponse
        )

    async def run_container(self, task_id: str, sandbox_id: str) -> None:
        bundle = self.container_bundle(task_id, sandbox_id)
        await self.task("Create", v2.CreateTaskRequest(id=task_id, bundle=str(bundle)), v2.CreateTaskResponse)
        await self.task("Start", v2.StartRequest(id=task_id), v2.StartResponse)

    async def status(self, sandbox_id: str) -> sb.SandboxStatusResponse:
        return await self.sandbox(
            "SandboxStatus", sb.SandboxStatusRequest(sandbox_id=sandbox_id), sb.SandboxStatusResponse
        )


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_lcow_v2_two_pods_share_one_fake_uvm_and_stop_alone(tmp_path: Path) -> None:
    async def body() -> None:
        h = V2Harness(tmp_path)
        await h.run_pod("pod-a")
        await h.run_pod("pod-b")
        assert len(h.vms) == 1 and h.vms[0].starts == 1, "both pods must land in one UVM, booted once"
        vm = h.vms[0]
        assert h.factory_calls[0][0] == "pod-a"
        docs = vm.bridge.documents
        # Each pod's sandbox container: its own bundle under /run/gcs/pods/<pod>, CRI sandbox annotations.
        pause_inits = [p for p in vm.bridge.processes.values() if p.container_id in ("pod-a", "pod-b")]
        assert sorted(p.container_id for p in pause_inits) == ["pod-a", "pod-b"], "each pause's init runs"
        for pod in ("pod-a", "pod-b"):
            assert docs[pod]["OciBundlePath"] == f"/run/gcs/pods/{pod}/{pod}"
            ann = docs[pod]["OciSpecification"]["annotations"]
            assert ann[CRI_TYPE] == "sandbox" and ann[CRI_SANDBOX] == pod
        await h.run_container("c-a", "pod-a")
        await h.run_container("c-b", "pod-b")
        assert docs["c-a"]["OciBundlePath"] == "/run/gcs/pods/pod-a/c-a"
        assert docs["c-b"]["OciBundlePath"] == "/run/gcs/pods/pod-b/c-b"
        assert docs["c-b"]["OciSpecification"]["annotations"][CRI_SANDBOX] == "pod-b"

        await h.sandbox("StopSandbox", sb.StopSandboxRequest(sandbox_id="pod-a"), sb.StopSandboxResponse)
        assert (await h.status("pod-a")).state == NOTREADY
        assert (await h.status("pod-b")).state == READY
        state_a = await h.task("State", v2.StateRequest(id="c-a"), v2.StateResponse)
        state_b = await h.task("State", v2.StateRequest(id="c-b"), v2.StateResponse)
        assert state_a.status == 3 and state_b.status == 2  # STOPPED / RUNNING
        assert "pod-a" in vm.bridge.deleted and "pod-b" not in vm.bridge.deleted
        waited = await h.sandbox(
            "WaitSandbox", sb.WaitSandboxRequest(sandbox_id="pod-a"), sb.WaitSandboxResponse
        )
        assert waited.exit_status == 0 and waited.exited_at.seconds > 0

        await h.task("Delete", v2.DeleteRequest(id="c-a"), v2.DeleteResponse)
        await h.sandbox(
            "ShutdownSandbox", sb.ShutdownSandboxRequest(sandbox_id="pod-a"), sb.ShutdownSandboxResponse
        )
        await asyncio.sleep(0)
        assert not vm.terminated and h.shutdowns == 0, "the other pod keeps the UVM and the shim"
        with pytest.raises(TtrpcError) as err:
            await h.status("pod-a")
        assert err.value.code == Code.NOT_FOUND
        # A container for the shut-down pod is refused; the live pod still takes one.
        bundle = h.container_bundle("c-a2", "pod-a")
        with pytest.raises(TtrpcError) as err:
            await h.task("Create", v2.CreateTaskRequest(id="c-a2", bundle=str(bundle)), v2.CreateTaskResponse)
        assert err.value.code == Code.NOT_FOUND and "pod-a" in err.value.message
        await h.run_container("c-b2", "pod-b")

        await h.sandbox(
            "ShutdownSandbox", sb.ShutdownSandboxRequest(sandbox_id="pod-b"), sb.ShutdownSandboxResponse
        )
        await asyncio.sleep(0)
        assert vm.terminated and h.shutdowns == 1, "the last ShutdownSandbox ends the UVM and the shim"
        # A sandbox that reached the shim on its way out is refused, not given a UVM that dies with it.
        with pytest.raises(TtrpcError) as err:
            await h.run_pod("late")
        assert err.value.code == Code.UNAVAILABLE and "shutting down" in err.value.message
        assert len(h.vms) == 1
        assert {"c-b", "c-b2", "pod-b"} <= set(vm.bridge.deleted)

    run(body())


def test_lcow_v2_sandbox_status_transitions_with_fake_uvm(tmp_path: Path) -> None:
    async def body() -> None:
        h = V2Harness(tmp_path)
        bundle = h.sandbox_bundle("p")
        await h.sandbox(
            "CreateSandbox",
            sb.CreateSandboxRequest(sandbox_id="p", bundle_path=str(bundle)),
            sb.CreateSandboxResponse,
        )
        created = await h.status("p")
        assert created.state == NOTREADY and not created.HasField("created_at")
        platform = await h.sandbox("Platform", sb.PlatformRequest(sandbox_id="p"), sb.PlatformResponse)
        assert (platform.platform.os, platform.platform.architecture) == ("linux", "amd64")
        await h.sandbox("StartSandbox", sb.StartSandboxRequest(sandbox_id="p"), sb.StartSandboxResponse)
        ready = await h.status("p")
        assert ready.state == READY and ready.created_at.seconds > 0 and not ready.HasField("exited_at")
        await h.sandbox("StopSandbox", sb.StopSandboxRequest(sandbox_id="p"), sb.StopSandboxResponse)
        stopped = await h.status("p")
        assert stopped.state == NOTREADY and stopped.exited_at.seconds > 0
        with pytest.raises(TtrpcError) as err:
            await h.sandbox("StartSandbox", sb.StartSandboxRequest(sandbox_id="p"), sb.StartSandboxResponse)
        assert err.value.code == Code.FAILED_PRECONDITION
        with pytest.raises(TtrpcError) as err:
            await h.status("nope")
        assert err.value.code == Code.NOT_FOUND

    run(body())


def test_lcow_v2_uvm_death_with_fake_uvm_stops_every_pod(tmp_path: Path) -> None:
    async def body() -> None:
        h = V2Harness(tmp_path)
        await h.run_pod("p1")
        await h.run_pod("p2")
        await h.run_container("c1", "p1")
        waiter = asyncio.create_task(
            h.sandbox("WaitSandbox", sb.WaitSandboxRequest(sandbox_id="p2"), sb.WaitSandboxResponse)
        )
        h.vms[0].crash()
        resp = await asyncio.wait_for(waiter, 5)
        assert resp.exit_status == VM_FAILED_STATUS
        assert (await h.status("p1")).state == NOTREADY and (await h.status("p2")).state == NOTREADY
        state = await h.task("State", v2.StateRequest(id="c1"), v2.StateResponse)
        assert state.status == 3 and state.exit_status == 255
        with pytest.raises(TtrpcError) as err:
            await h.run_pod("p3")
        assert err.value.code == Code.FAILED_PRECONDITION

    run(body())


def test_lcow_v2_unimplemented_rpcs_with_fake_uvm_name_themselves(tmp_path: Path) -> None:
    async def body() -> None:
        h = V2Harness(tmp_path)
        await h.run_pod("p")
        await h.run_container("c", "p")
        for method, req, resp in (
            ("PingSandbox", sb.PingRequest(sandbox_id="p"), sb.PingResponse),
            ("UpdateSandbox", sb.UpdateSandboxRequest(sandbox_id="p"), sb.UpdateSandboxResponse),
        ):
            with pytest.raises(TtrpcError) as err:
                await h.sandbox(method, req, resp)
            assert err.value.code == Code.UNIMPLEMENTED and method in err.value.message
        with pytest.raises(TtrpcError) as err:
            await h.task("Pause", v2.PauseRequest(id="c"), empty_pb2.Empty)
        assert err.value.code == Code.UNIMPLEMENTED and "pause" in err.value.message
        # Task v2 is not served: containerd dials v3 of a version-3 shim.
        with pytest.raises(TtrpcError) as err:
            await h.call("containerd.task.v2.Task", "State", v2.StateRequest(id="c"), v2.StateResponse)
        assert err.value.code == Code.UNIMPLEMENTED and "containerd.task.v2.Task" in err.value.message
        # A pause task is refused (the shim runs each pod's sandbox container), a standalone one too.
        bundle = h.container_bundle("pause", "pause", kind="sandbox")
        with pytest.raises(TtrpcError) as err:
            await h.task(
                "Create", v2.CreateTaskRequest(id="pause", bundle=str(bundle)), v2.CreateTaskResponse
            )
        assert err.value.code == Code.UNIMPLEMENTED and "sandbox task" in err.value.message
        bundle = h.container_bundle("alone", "", kind="")
        with pytest.raises(TtrpcError) as err:
            await h.task(
                "Create", v2.CreateTaskRequest(id="alone", bundle=str(bundle)), v2.CreateTaskResponse
            )
        assert err.value.code == Code.INVALID_ARGUMENT
        with pytest.raises(TtrpcError) as err:
            await h.sandbox(
                "CreateSandbox",
                sb.CreateSandboxRequest(sandbox_id="q", options=any_pb2.Any(type_url="x/y.Z", value=b"")),
                sb.CreateSandboxResponse,
            )
        assert err.value.code == Code.INVALID_ARGUMENT and "x/y.Z" in err.value.message

    run(body())


def test_lcow_v2_sandbox_options_with_fake_uvm(tmp_path: Path) -> None:
    """runhcs Options in CreateSandboxRequest.options reach the builder; CRI's PodSandboxConfig gives
    annotations and the hostname; the bundle's sandbox spec and the request's annotations merge in."""

    async def body() -> None:
        h = V2Harness(tmp_path)
        options = runhcs_pb2.Options(sandbox_platform="linux/amd64", boot_files_root_path="/boot/x")
        bundle = h.sandbox_bundle("p", {"io.microsoft.virtualmachine.computetopology.memory.sizeinmb": "512"})
        await h.sandbox(
            "CreateSandbox",
            sb.CreateSandboxRequest(
                sandbox_id="p",
                bundle_path=str(bundle),
                options=any_pb2.Any(
                    type_url="containerd.runhcs.v1.Options", value=options.SerializeToString()
                ),
                annotations={"a": "1"},
            ),
            sb.CreateSandboxResponse,
        )
        _, annotations, got = h.factory_calls[0]
        assert got is not None and got.boot_files_root_path == "/boot/x"
        assert annotations == {"io.microsoft.virtualmachine.computetopology.memory.sizeinmb": "512", "a": "1"}

    run(body())


def test_pod_sandbox_config_decodes_cri_message() -> None:
    from tests.support.cri import api

    pb = api()
    config = pb.PodSandboxConfig(hostname="web-1", annotations={"io.hcsshim.lcow-v2.uvm-group": "g"})
    config.labels["x"] = "y"
    value = any_pb2.Any(type_url="runtime.v1.PodSandboxConfig", value=config.SerializeToString())
    assert pod_sandbox_config(value) == ("web-1", {"io.hcsshim.lcow-v2.uvm-group": "g"})


def test_lcow_v2_start_answers_version_3_and_groups() -> None:
    legacy = StartInput(None, None, None)
    answer = json.loads(manager_v2.start_answer_v3(legacy, "unix:///s"))
    assert answer == {"version": 3, "address": "unix:///s", "protocol": "ttrpc"}
    # containerd 2.3+ sends BootstrapParams and reads a BootstrapResult back.
    from hcsshim.api.containerd.bootstrap.v1 import bootstrap_pb2
    from hcsshim.shim.options import decode_start_input

    params = bootstrap_pb2.BootstrapParams(instance_id="sb", namespace="k8s.io")
    boot = decode_start_input(params.SerializeToString(), "sb", "k8s.io")
    result = bootstrap_pb2.BootstrapResult.FromString(manager_v2.start_answer_v3(boot, "unix:///s"))
    assert (result.version, result.address, result.protocol) == (3, "unix:///s", "ttrpc")
    options = runhcs_pb2.Options()
    options.default_container_annotations[manager_v2.UVM_GROUP] = "shared"
    with_defaults = StartInput(None, options, None)
    assert manager_v2.uvm_group({}, with_defaults) == "shared"
    assert manager_v2.uvm_group({manager_v2.UVM_GROUP: "mine"}, with_defaults) == "mine"
    assert manager_v2.uvm_group({}, legacy) == ""
    with pytest.raises(StartError) as err:
        manager_v2.uvm_group({manager_v2.UVM_GROUP: "../x"}, legacy)
    assert manager_v2.UVM_GROUP in str(err.value)
    a = manager_v2.group_shim_id("g", "/run/s/1")
    assert a.startswith("group-g-") and a != manager_v2.group_shim_id("g", "/run/s/2")


def test_lcow_v2_oom_routed_to_the_owning_pod_with_fake_uvm(tmp_path: Path) -> None:
    async def body() -> None:
        h = V2Harness(tmp_path)
        await h.run_pod("p1")
        await h.run_pod("p2")
        await h.run_container("c1", "p1")
        await h.run_container("c2", "p2")
        h.vms[0].bridge.send_oom("c2")
        ooms = [e for t, e in h.events.items if t.endswith("/oom")]
        assert [getattr(e, "container_id", "") for e in ooms] == ["c2"]
        found = h.service._find("c1")
        assert found is not None and found[0].id == "p1"
        c2 = h.service._find("c2")
        assert c2 is not None and c2[0].id == "p2" and c2[1].init.state is State.RUNNING

    run(body())


def test_runtimeoptions_config_path_gives_runhcs_options(tmp_path: Path) -> None:
    """CRI hands io.containerd.lcow.v2 a runtimeoptions.v1.Options (ConfigPath); the file holds runhcs
    Options as JSON, e.g. the handler's UVM group."""
    from hcsshim.shim.foreign_types import _classes
    from hcsshim.shim.options import OptionsError, decode_start_input

    path = tmp_path / "lcow-v2.json"
    path.write_text(json.dumps({"defaultContainerAnnotations": {manager_v2.UVM_GROUP: "shared"}}))
    ro: Any = _classes()["runtimeoptions.v1.Options"]()
    ro.config_path = str(path)
    stdin = any_pb2.Any(
        type_url="runtimeoptions.v1.Options", value=ro.SerializeToString()
    ).SerializeToString()
    start = decode_start_input(stdin, "sb", "k8s.io")
    assert start.options is not None
    assert manager_v2.uvm_group({}, start) == "shared"
    path.write_text("{not json")
    with pytest.raises(OptionsError) as err:
        decode_start_input(stdin, "sb", "k8s.io")
    assert str(path) in str(err.value)
    ro.config_path = ""
    empty = any_pb2.Any(
        type_url="runtimeoptions.v1.Options", value=ro.SerializeToString()
    ).SerializeToString()
    assert decode_start_input(empty, "sb", "k8s.io").options is None


def test_lcow_v2_group_from_the_environment_last(monkeypatch: pytest.MonkeyPatch) -> None:
    from hcsshim import settings

    monkeypatch.setenv("HCSSHIM_LCOW_V2_UVM_GROUP", "node")
    settings.reset()
    legacy = StartInput(None, None, None)
    assert manager_v2.uvm_group({}, legacy) == "node"
    assert manager_v2.uvm_group({manager_v2.UVM_GROUP: "mine"}, legacy) == "mine"


def test_cri_pod_namespace_paths_with_fake_uvm_name_the_pods_sandbox_container(tmp_path: Path) -> None:
    """containerd's CRI names a pod's namespaces by the sandbox pid StartSandbox gave (none: 0); the
    guest gets the pod's sandbox container's init instead."""

    async def body() -> None:
        h = V2Harness(tmp_path)
        await h.run_pod("p")
        pause = next(p for p in h.vms[0].bridge.processes.values() if p.container_id == "p")
        bundle = h.container_bundle("c", "p")
        spec = json.loads((bundle / "config.json").read_text())
        spec["linux"] = {"namespaces": [{"type": "pid", "path": "/proc/0/ns/pid"}, {"type": "mount"}]}
        (bundle / "config.json").write_text(json.dumps(spec))
        await h.task("Create", v2.CreateTaskRequest(id="c", bundle=str(bundle)), v2.CreateTaskResponse)
        namespaces = h.vms[0].bridge.documents["c"]["OciSpecification"]["linux"]["namespaces"]
        assert {"type": "pid", "path": f"/proc/{pause.pid}/ns/pid"} in namespaces
        assert {"type": "mount"} in namespaces

    run(body())


def test_lcow_v2_log_moves_when_its_sandbox_goes_with_fake_uvm(tmp_path: Path) -> None:
    async def body() -> None:
        h = V2Harness(tmp_path)
        moved: list[str] = []
        h.service.log_bundle = str(tmp_path / "sandboxes" / "first")
        h.service._relog = moved.append
        await h.run_pod("first")
        await h.run_pod("second")
        await h.sandbox(
            "ShutdownSandbox", sb.ShutdownSandboxRequest(sandbox_id="second"), sb.ShutdownSandboxResponse
        )
        assert moved == [], "the log's own sandbox is still there"
        await h.run_pod("third")
        await h.sandbox(
            "ShutdownSandbox", sb.ShutdownSandboxRequest(sandbox_id="first"), sb.ShutdownSandboxResponse
        )
        assert moved == [str(tmp_path / "sandboxes" / "third" / "log")]

    run(body())


def test_lcow_v2_joiner_with_fake_uvm_cannot_ask_for_another_vm(tmp_path: Path) -> None:
    async def body() -> None:
        h = V2Harness(tmp_path)
        mem = "io.microsoft.virtualmachine.computetopology.memory.sizeinmb"
        await h.run_pod("p1", annotations={mem: "512"})
        await h.run_pod("p2", annotations={mem: "512", "io.kubernetes.cri.pod-name": "x"})
        with pytest.raises(TtrpcError) as err:
            await h.run_pod("p3", annotations={mem: "1024"})
        assert err.value.code == Code.FAILED_PRECONDITION and mem in err.value.message
        assert len(h.vms) == 1 and "p3" not in h.service.sandboxes

    run(body())


def test_lcow_v2_sandbox_metrics_with_fake_uvm_are_the_vms_figures(tmp_path: Path) -> None:
    async def body() -> None:
        h = V2Harness(tmp_path)
        with pytest.raises(TtrpcError) as err:
            await h.sandbox(
                "SandboxMetrics", sb.SandboxMetricsRequest(sandbox_id="p"), sb.SandboxMetricsResponse
            )
        assert err.value.code == Code.NOT_FOUND and "p" in err.value.message
        await h.run_pod("p")
        resp = await h.sandbox(
            "SandboxMetrics", sb.SandboxMetricsRequest(sandbox_id="p"), sb.SandboxMetricsResponse
        )
        m = resp.metrics
        assert m.id == "p" and m.timestamp.seconds > 0
        assert m.data.type_url == "containerd.runhcs.stats.v1.VirtualMachineStatistics"
        vm = stats_pb2.VirtualMachineStatistics.FromString(m.data.value)
        assert vm.processor.total_runtime_ns == 1234500
        assert vm.memory.working_set_bytes == 300 << 20 and vm.memory.vm_memory.assigned_memory == 262144

    run(body())


def test_group_lock_file_goes_with_the_groups_last_shim_and_a_waiter_relocks_a_new_one(
    tmp_path: Path,
) -> None:
    import fcntl
    import threading

    from hcsshim.shim.manager_v2 import group_lock, remove_group_lock

    sock = str(tmp_path / "group.sock")
    with group_lock(sock):
        assert os.path.exists(sock + ".lock")
    Path(sock).touch()  # a shim of the group serves the path: its lock stays
    remove_group_lock(sock)
    assert os.path.exists(sock + ".lock")
    os.unlink(sock)
    remove_group_lock(sock)  # the last shim is gone: so is the lock file
    assert not os.path.exists(sock + ".lock")

    # A start that opened the lock file just before the last shim removed it must not hold a lock
    # on the removed file (a second start would lock a new one at the same time).
    old = os.open(sock + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(old, fcntl.LOCK_EX)
    held: list[bool] = []

    def waiter() -> None:
        with group_lock(sock):
            st = os.stat(sock + ".lock")
            held.append(st.st_ino != os.fstat(old).st_ino)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    os.unlink(sock + ".lock")
    fcntl.flock(old, fcntl.LOCK_UN)
    t.join(10)
    os.close(old)
    assert held == [True]
