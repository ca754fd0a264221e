"""The windows backend on Linux, over a FAKE computecore: a Python object whose functions are real
ctypes function pointers with computecore.dll's signatures, recording calls and returning canned
HRESULTs and result documents."""

from __future__ import annotations

import asyncio
import ctypes
import json
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hcsshim import hcs
from hcsshim.hcs import windows
from hcsshim.hcs.errors import (
    ErrAlreadyExists,
    ErrComputeSystemDoesNotExist,
    ErrPlatformNotSupported,
    ErrVmcomputeAlreadyStopped,
    ErrVmcomputeInvalidJSON,
    ErrVmcomputeOperationInvalidState,
    HcsError,
    HResult,
)
from hcsshim.hcs.system import SystemState
from hcsshim.hcs.windows import computecore as cc
from hcsshim.hcs.windows.results import cause, error_for, parse_result

E_SYSTEM_NOT_FOUND = -2143878898  # 0x8037010E as int32
E_WIN32_NOT_FOUND = -2147023728  # HRESULT_FROM_WIN32(ERROR_NOT_FOUND) = 0x80070490
E_INVALID_STATE = -2143878907  # 0x80370105


def _int32(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


class FakeComputeCore:
    """computecore.dll stand-in. `results[name]` = (hresult, result document) for the operation
    a call of `name` starts; `immediate[name]` = an HRESULT the call itself returns."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.results: dict[str, tuple[int, str]] = {}
        self.immediate: dict[str, int] = {}
        self.open_operations: set[int] = set()
        self.op_call: dict[int, str] = {}
        self.buffers: dict[int, Any] = {}
        self.freed: list[int] = []
        self.callbacks: dict[int, tuple[int, Any]] = {}
        self.systems: dict[str, int] = {}
        self.closed_systems: list[int] = []
        self.wait_hook: Callable[[], object] | None = None  # runs in HcsWaitForOperationResult
        self._next = 0x1000
        for name, (restype, argtypes) in cc.SIGNATURES.items():
            impl = getattr(self, "_" + name, None) or self._make_system_call(name)
            fn = ctypes.CFUNCTYPE(restype, *argtypes)(self._recording(name, impl))
            setattr(self, name, fn)
        self.CoTaskMemFree = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self._free)

    # ---- plumbing ------------------------------------------------------------------------------

    def _recording(self, name: str, impl: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            self.calls.append((name, args))
            return impl(*args)

        return call

    def _handle(self) -> int:
        self._next += 0x10
        return self._next

    def _string(self, out: Any, text: str) -> None:
        if not text:
            return
        buf = ctypes.create_unicode_buffer(text)
        addr = ctypes.addressof(buf)
        self.buffers[addr] = buf
        out[0] = addr

    def _free(self, addr: int | None) -> None:
        assert addr in self.buffers, "freed something the fake did not allocate"
        self.freed.append(addr)
        del self.buffers[addr]

    def _start_op(self, name: str, op: int | None) -> int:
        assert op in self.open_operations, f"{name} got an operation that is not open"
        self.op_call[op] = name
        return _int32(self.immediate.get(name, 0))

    def names(self) -> list[str]:
        return [n for n, _ in self.calls]

    def fire(self, handle: int, event_type: int, data: str) -> None:
        """What HCS does on its thread: call the registered HCS_EVENT_CALLBACK."""
        context, callback = self.callbacks[handle]
        event = cc.HcsEvent(event_type, data, None)
        callback(ctypes.pointer(event), context)

    # ---- the API ---------------------------------------------------------------------------------

    def _HcsCreateOperation(self, context: int | None, callback: int | None) -> int:
        op = self._handle()
        self.open_operations.add(op)
        return op

    def _HcsCloseOperation(self, op: int) -> None:
        self.open_operations.remove(op)

    def _HcsCancelOperation(self, op: int) -> int:
        return 0

    def _result(self, op: int) -> tuple[int, str]:
        return self.results.get(self.op_call.get(op, ""), (0, ""))

    def _HcsWaitForOperationResult(self, op: int, timeout: int, out: Any) -> int:
        if self.wait_hook is not None:
            self.wait_hook()
        hr, doc = self._result(op)
        self._string(out, doc)
        return _int32(hr)

    def _HcsGetOperationResult(self, op: int, out: Any) -> int:
        hr, doc = self._result(op)
        self._string(out, doc)
        return _int32(hr)

    def _HcsCreateComputeSystem(self, sid: str, config: str, op: int, sd: int | None, out: Any) -> int:
        hr = self._start_op("HcsCreateComputeSystem", op)
        handle = self._handle()
        self.systems[sid] = handle
        out[0] = handle
        return hr

    def _HcsOpenComputeSystem(self, sid: str, access: int, out: Any) -> int:
        if sid not in self.systems:
            return E_SYSTEM_NOT_FOUND
        out[0] = self.systems[sid]
        return 0

    def _HcsCloseComputeSystem(self, handle: int) -> None:
        self.closed_systems.append(handle)

    def _HcsModifyComputeSystem(self, handle: int, op: int, config: str, identity: int | None) -> int:
        return self._start_op("HcsModifyComputeSystem", op)

    def _HcsSetComputeSystemCallback(self, handle: int, options: int, context: int, callback: Any) -> int:
        self.callbacks[handle] = (context, callback)
        return 0

    def _make_system_call(self, name: str) -> Callable[..., int]:
        def call(handle: int, op: int, argument: str | None) -> int:
            return self._start_op(name, op)

        return call


@pytest.fixture
def fake() -> Iterator[FakeComputeCore]:
    core = FakeComputeCore()
    cc.set_loader(lambda: core)
    try:
        yield core
    finally:
        cc.set_loader(None)
        assert not core.open_operations, "operations left open"
        assert not core.buffers, "result documents not freed with CoTaskMemFree"


async def _create(system_id: str) -> windows.WindowsComputeSystem:
    cs = await hcs.create_compute_system(system_id, DOC, backend="windows")
    assert isinstance(cs, windows.WindowsComputeSystem)
    return cs


def _state(cs: hcs.ComputeSystem) -> SystemState:
    return cs.state


DOC = {"Owner": "test", "SchemaVersion": {"Major": 2, "Minor": 1}, "VirtualMachine": {"Chipset": {}}}


def test_create_start_modify_terminate_with_fake_computecore(fake: FakeComputeCore) -> None:
    async def run() -> None:
        cs = await hcs.create_compute_system("vm1", DOC, backend="windows")
        assert _state(cs) == SystemState.CREATED
        await cs.start()
        assert _state(cs) == SystemState.RUNNING
        request = {"ResourcePath": "VirtualMachine/Devices/Scsi/x/Attachments/1", "RequestType": "Add"}
        await cs.modify(request)
        handle = fake.systems["vm1"]

        async def exit_soon() -> None:
            await asyncio.sleep(0.05)
            fake.fire(handle, cc.EVENT_SYSTEM_EXITED, '{"Status": 0, "ExitType": "ForcedExit"}')

        task = asyncio.create_task(exit_soon())
        await cs.terminate()
        await task
        info = await cs.wait()
        assert info.reason == "terminated" and not info.unexpected
        assert _state(cs) == SystemState.STOPPED
        assert handle in fake.closed_systems
        await cs.terminate()  # idempotent

        names = fake.names()
        core_calls = [n for n in names if n not in ("HcsCreateOperation", "HcsCloseOperation")]
        assert core_calls == [
            "HcsCreateComputeSystem",
            "HcsWaitForOperationResult",
            "HcsSetComputeSystemCallback",
            "HcsStartComputeSystem",
            "HcsWaitForOperationResult",
            "HcsModifyComputeSystem",
            "HcsWaitForOperationResult",
            "HcsTerminateComputeSystem",
            "HcsCloseComputeSystem",
        ]
        # Each operation is created before and closed after its call.
        assert names[0] == "HcsCreateOperation" and names[3] == "HcsCloseOperation"
        create_args = dict(fake.calls)["HcsCreateComputeSystem"]
        assert create_args[0] == "vm1" and json.loads(create_args[1]) == DOC
        assert json.loads(dict(fake.calls)["HcsModifyComputeSystem"][2]) == request

    asyncio.run(run())


def test_create_failure_is_named_error_with_records_with_fake_computecore(fake: FakeComputeCore) -> None:
    result = {
        "Error": E_INVALID_STATE,
        "ErrorMessage": "The virtual machine could not be started",
        "ErrorEvents": [{"Message": "Not enough memory in the system", "Provider": "hvms", "EventId": 3050}],
    }
    fake.results["HcsCreateComputeSystem"] = (0x80370105, json.dumps(result))
    with pytest.raises(ErrVmcomputeOperationInvalidState) as info:
        asyncio.run(hcs.create_compute_system("vm2", DOC, backend="windows"))
    err = info.value
    assert err.op == "CreateComputeSystem" and err.system_id == "vm2"
    assert err.code == HResult.VMCOMPUTE_OPERATION_INVALID_STATE
    assert "hcs::CreateComputeSystem vm2" in str(err) and "Not enough memory" in str(err)
    details = cause(err)
    assert details is not None and details.hresult == 0x80370105
    assert details.events[0].event_id == 3050 and details.events[0].provider == "hvms"
    # The half-created system is terminated and its handle released.
    assert "HcsTerminateComputeSystem" in fake.names()
    assert fake.systems["vm2"] in fake.closed_systems


def test_win32_hresult_is_unwrapped_with_fake_computecore(fake: FakeComputeCore) -> None:
    async def run() -> None:
        cs = await _create("vm3")
        await cs.start()
        fake.immediate["HcsModifyComputeSystem"] = E_WIN32_NOT_FOUND & 0xFFFFFFFF
        with pytest.raises(hcs.ErrElementNotFound) as info:
            await cs.modify({"ResourcePath": "VirtualMachine/Devices/Plan9/Shares", "RequestType": "Remove"})
        assert info.value.op == "Modify" and info.value.system_id == "vm3"
        assert hcs.is_not_exist(info.value)
        fake.immediate["HcsPauseComputeSystem"] = 0xC0370110
        with pytest.raises(ErrVmcomputeAlreadyStopped, match="hcs::Pause vm3"):
            await cs.pause()
        cs.close()

    asyncio.run(run())


def test_garbage_result_json_is_clean_error_with_fake_computecore(fake: FakeComputeCore) -> None:
    async def run() -> None:
        fake.results["HcsStartComputeSystem"] = (0x80004005, "{not json")
        cs = await _create("vm4")
        with pytest.raises(HcsError) as info:
            await cs.start()
        assert info.value.op == "Start" and info.value.code == HResult.E_FAIL
        assert "unparsable result document" in str(info.value)
        fake.results["HcsStartComputeSystem"] = (0, "")
        await cs.start()
        fake.results["HcsGetComputeSystemProperties"] = (0, "<<garbage>>")
        with pytest.raises(HcsError, match="hcs::Properties vm4: HCS returned an unparsable document"):
            await cs.properties()
        fake.results["HcsGetComputeSystemProperties"] = (0, json.dumps({"State": "Running", "Id": "vm4"}))
        props = await cs.properties({"PropertyTypes": ["Statistics"]})
        assert props["State"] == "Running" and props["Backend"] == {"Name": "windows"}
        query = [a for n, a in fake.calls if n == "HcsGetComputeSystemProperties"][-1][2]
        assert json.loads(query) == {"PropertyTypes": ["Statistics"]}
        cs.close()

    asyncio.run(run())


def test_wait_returns_when_fake_signals_exit_with_fake_computecore(fake: FakeComputeCore) -> None:
    async def run() -> None:
        cs = await _create("vm5")
        await cs.start()
        waiter = asyncio.create_task(cs.wait())
        await asyncio.sleep(0.02)
        assert not waiter.done()
        # A cancelled waiter must not cancel the others.
        other = asyncio.create_task(cs.wait())
        await asyncio.sleep(0)
        other.cancel()
        loop = asyncio.get_running_loop()
        handle = fake.systems["vm5"]
        data = '{"Status": -2143878906, "ExitType": "UnexpectedExit"}'
        await loop.run_in_executor(None, fake.fire, handle, cc.EVENT_SYSTEM_EXITED, data)
        info = await asyncio.wait_for(waiter, 5)
        assert info.unexpected and info.exit_code == -2143878906
        assert info.details["ExitType"] == "UnexpectedExit"
        assert _state(cs) == SystemState.STOPPED and cs.exit_info == info
        with pytest.raises(ErrVmcomputeAlreadyStopped):
            await cs.start()
        await cs.terminate()  # stopped already: only releases the handle
        assert "HcsTerminateComputeSystem" not in fake.names()
        assert handle in fake.closed_systems

    asyncio.run(run())


def test_service_disconnect_ends_wait_with_fake_computecore(fake: FakeComputeCore) -> None:
    async def run() -> None:
        cs = await _create("vm6")
        fake.fire(fake.systems["vm6"], cc.EVENT_SERVICE_DISCONNECT, "")
        info = await asyncio.wait_for(cs.wait(), 5)
        assert info.unexpected and "compute service" in info.reason
        cs.close()

    asyncio.run(run())


def test_pause_resume_shutdown_with_fake_computecore(fake: FakeComputeCore) -> None:
    async def run() -> None:
        cs = await _create("vm7")
        with pytest.raises(ErrVmcomputeOperationInvalidState):
            await cs.pause()
        await cs.start()
        await cs.pause()
        assert _state(cs) == SystemState.PAUSED
        await cs.resume()
        assert _state(cs) == SystemState.RUNNING
        fake.immediate["HcsShutDownComputeSystem"] = 0x80370110  # already stopped: not an error
        await cs.shutdown()
        fake.fire(fake.systems["vm7"], cc.EVENT_SYSTEM_EXITED, '{"Status": 0, "ExitType": "GracefulExit"}')
        info = await cs.wait()
        assert info.reason == "shutdown requested" and not info.unexpected
        cs.close()

    asyncio.run(run())


def test_open_existing_and_missing_with_fake_computecore(fake: FakeComputeCore) -> None:
    async def run() -> None:
        cs = await _create("vm8")
        await cs.start()
        fake.results["HcsGetComputeSystemProperties"] = (0, '{"State": "Running"}')
        opened = hcs.open_compute_system("vm8", backend="windows")
        assert opened.state == SystemState.RUNNING
        assert [n for n in fake.names() if n == "HcsOpenComputeSystem"]
        with pytest.raises(ErrComputeSystemDoesNotExist) as info:
            hcs.open_compute_system("nope", backend="windows")
        assert info.value.op == "OpenComputeSystem" and info.value.system_id == "nope"
        assert isinstance(opened, windows.WindowsComputeSystem)
        opened.close()
        cs.close()

    asyncio.run(run())


def test_bad_document_fails_before_any_call_with_fake_computecore(fake: FakeComputeCore) -> None:
    with pytest.raises(ErrVmcomputeInvalidJSON):
        asyncio.run(hcs.create_compute_system("vm9", "{broken", backend="windows"))
    assert fake.calls == []


def test_hresult_mapping_and_result_parsing() -> None:
    assert cc.normalize_hresult(E_WIN32_NOT_FOUND) == 0x490
    assert cc.normalize_hresult(-1) == 0xFFFFFFFF
    assert isinstance(error_for("Create", "x", 0xC037010F), ErrAlreadyExists)
    assert isinstance(error_for("Create", "x", 0x8037010E), ErrComputeSystemDoesNotExist)
    unknown = error_for("Start", "x", 0x80370100, '{"ErrorMessage": "terminated during start"}')
    assert type(unknown) is HcsError and unknown.code == HResult.E_FAIL
    assert "0x80370100" in str(unknown) and "terminated during start" in str(unknown)
    records = parse_result(0, '{"Error": -2147024809, "ErrorRecords": [{"Message": "bad"}]}')
    assert records.hresult == 0x80070057 and records.events[0].message == "bad"
    assert parse_result(5, "[1, 2]").message.startswith("unexpected result document")


@pytest.mark.skipif(sys.platform == "win32", reason="the real DLL may load there")
def test_platform_not_supported_without_computecore() -> None:
    cc.set_loader(None)
    with pytest.raises(ErrPlatformNotSupported) as info:
        asyncio.run(hcs.create_compute_system("x", DOC, backend="windows"))
    assert info.value.op == "CreateComputeSystem" and info.value.system_id == "x"
    with pytest.raises(ErrPlatformNotSupported, match="windows HCS backend is not available"):
        hcs.open_compute_system("x", backend="windows")


def test_cancelled_create_still_releases_the_system_with_fake_computecore(fake: FakeComputeCore) -> None:
    release = threading.Event()
    fake.wait_hook = lambda: release.wait(5)

    async def run() -> None:
        task = asyncio.create_task(hcs.create_compute_system("vm10", DOC, backend="windows"))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert fake.systems["vm10"] in fake.closed_systems
    assert "HcsTerminateComputeSystem" in fake.names()
