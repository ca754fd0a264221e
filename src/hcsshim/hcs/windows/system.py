"""The ComputeSystem interface over computecore.dll (upstream: internal/hcs/v2/system.go).

Every HCS call blocks (HcsWaitForOperationResult), so each runs whole in the default executor:
create the operation, make the call, wait for its result, close the operation. A call is never
abandoned halfway (upstream found that freeing handles under an in-flight call crashes
computecore.dll); a cancelled awaiter just stops waiting for the thread.

Exit is reported by HCS through HcsSetComputeSystemCallback on one of its threads; the callback
completes a concurrent.futures.Future that `wait()` awaits without holding a thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from hcsshim.hcs.errors import (
    ErrComputeSystemDoesNotExist,
    ErrPlatformNotSupported,
    ErrVmcomputeAlreadyStopped,
    ErrVmcomputeOperationInvalidState,
    HcsError,
    HResult,
    is_already_stopped,
    is_not_exist,
)
from hcsshim.hcs.system import ComputeSystem, Document, ExitInfo, SystemState, document_to_dict
from hcsshim.hcs.windows import computecore as cc
from hcsshim.hcs.windows.results import HCS_E_OPERATION_TIMEOUT, error_for

log = logging.getLogger(__name__)

TERMINATE_WAIT = 30.0
_OPERATION_PENDING = int(HResult.VMCOMPUTE_OPERATION_PENDING)

# HCS gets an integer context, never a Python object; the callback looks the system up here.
_registry: dict[int, WindowsComputeSystem] = {}
_registry_lock = threading.Lock()
_next_context = itertools.count(1)


def _on_event(event: Any, context: int | None) -> None:
    """HCS_EVENT_CALLBACK, on an HCS thread: must never raise."""
    try:
        if not event:
            return
        ev = event.contents
        etype, data = int(ev.Type), ev.EventData or ""
        with _registry_lock:
            system = _registry.get(int(context or 0))
        log.debug("hcs event", extra={"type": hex(etype), "data": data, "context": context})
        if system is not None:
            system._on_event(etype, data)
    except Exception:  # pragma: no cover - a raise here would be printed and lost by ctypes
        log.exception("hcs event callback failed")


_CALLBACK = cc.EVENT_CALLBACK(_on_event)


def _platform_error(op: str, system_id: str, err: ErrPlatformNotSupported) -> ErrPlatformNotSupported:
    out = ErrPlatformNotSupported(op, system_id, err.message, err.code)
    out.__cause__ = err
    return out


def _core(op: str, system_id: str) -> cc.ComputeCore:
    try:
        return cc.get_computecore()
    except ErrPlatformNotSupported as e:
        raise _platform_error(op, system_id, e) from e


_STATES = {
    "Created": SystemState.CREATED,
    "Running": SystemState.RUNNING,
    "Paused": SystemState.PAUSED,
    "Stopped": SystemState.STOPPED,
}


class WindowsComputeSystem(ComputeSystem):
    def __init__(self, system_id: str, core: cc.ComputeCore, handle: int) -> None:
        self.id = system_id
        self.core = core
        self.handle = handle
        self._state = SystemState.CREATED
        self._exit_future: concurrent.futures.Future[ExitInfo] = concurrent.futures.Future()
        self._stopping_reason: str | None = None
        self._context = 0
        self._handle_lock = threading.Lock()
        self.operation_timeout_ms = cc.INFINITE

    # ---- blocking helpers (run in the executor) -------------------------------------------------

    def _run_blocking(self, op_name: str, call: Callable[[int], int], wait: bool = True) -> str:
        """Create an operation, run `call(op)` (returns an HRESULT), wait for the result document."""
        op = self.core.create_operation()
        if not op:
            raise HcsError(op_name, self.id, "HcsCreateOperation returned no operation")
        try:
            hr = call(op)
            if hr not in (0, _OPERATION_PENDING):
                _, doc = self.core.get_operation_result(op)
                raise error_for(op_name, self.id, hr, doc)
            if not wait:
                return ""
            hr, doc = self.core.wait_for_operation_result(op, self.operation_timeout_ms)
            if hr == HCS_E_OPERATION_TIMEOUT:
                self.core.cancel_operation(op)
            if hr != 0:
                raise error_for(op_name, self.id, hr, doc)
            return doc
        finally:
            self.core.close_operation(op)

    async def _run(self, op_name: str, call: Callable[[int], int], wait: bool = True) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._run_blocking, op_name, call, wait)

    def _system_call(self, name: str, argument: str | None = None) -> Callable[[int], int]:
        return lambda op: self.core.system_call(name, self.handle, op, argument)

    # ---- creation, opening ----------------------------------------------------------------------

    @classmethod
    async def create(cls, system_id: str, document: Document) -> WindowsComputeSystem:
        op_name = "CreateComputeSystem"
        configuration = json.dumps(document_to_dict(document, system_id, op_name))
        core = _core(op_name, system_id)
        system = cls(system_id, core, 0)

        def create(op: int) -> int:
            hr, handle = core.create_compute_system(system_id, configuration, op)
            system.handle = handle
            return hr

        loop = asyncio.get_running_loop()
        pending = loop.run_in_executor(None, system._run_blocking, op_name, create, True)
        try:
            await asyncio.shield(pending)
            system._register_callback(op_name)
        except BaseException:
            if not pending.done():  # cancelled: the call cannot be abandoned, let it finish first
                with contextlib.suppress(BaseException):
                    await pending
            await system._abandon()
            raise
        return system

    @classmethod
    def open(cls, system_id: str) -> WindowsComputeSystem:
        op_name = "OpenComputeSystem"
        core = _core(op_name, system_id)
        hr, handle = core.open_compute_system(system_id)
        if hr != 0:
            raise error_for(op_name, system_id, hr)
        system = cls(system_id, core, handle)
        try:
            system._register_callback(op_name)
            doc = system._run_blocking(op_name, system._system_call("HcsGetComputeSystemProperties", None))
            system._state = _STATES.get(str(_parse_json(op_name, system_id, doc).get("State")), system._state)
            if system._state == SystemState.STOPPED:
                system._set_exit(ExitInfo(reason="stopped before it was opened"))
        except BaseException:
            system._close_handle()
            raise
        return system

    def _register_callback(self, op_name: str) -> None:
        with _registry_lock:
            self._context = next(_next_context)
            _registry[self._context] = self
        hr = self.core.set_compute_system_callback(
            self.handle, cc.EVENT_OPTION_NONE, self._context, _CALLBACK
        )
        if hr != 0:
            with _registry_lock:
                _registry.pop(self._context, None)
            self._context = 0
            raise error_for(op_name, self.id, hr)

    async def _abandon(self) -> None:
        """Undo a half-made create: terminate (best effort) and release the handle."""
        if self.handle:
            with contextlib.suppress(HcsError):
                await self._run("Terminate", self._system_call("HcsTerminateComputeSystem"), wait=False)
        self._close_handle()

    def _close_handle(self) -> None:
        with self._handle_lock:
            handle, self.handle = self.handle, 0
            if handle:
                self.core.close_compute_system(handle)
        with _registry_lock:
            _registry.pop(self._context, None)

    # ---- events ---------------------------------------------------------------------------------

    def _on_event(self, etype: int, data: str) -> None:
        if etype == cc.EVENT_SYSTEM_EXITED:
            self._set_exit(self._exit_from(data))
        elif etype == cc.EVENT_SERVICE_DISCONNECT:
            self._set_exit(
                ExitInfo(
                    reason="lost communication with the compute service",
                    error="HCS service disconnected",
                    details={"EventData": data},
                )
            )

    def _exit_from(self, data: str) -> ExitInfo:
        details: dict[str, Any] = {"EventData": data}
        status: dict[str, Any] = {}
        with contextlib.suppress(json.JSONDecodeError):
            parsed = json.loads(data) if data else {}
            if isinstance(parsed, dict):
                status = parsed
        details.update(status)
        exit_type = str(status.get("ExitType") or "")
        code = status.get("Status")
        exit_code = code if isinstance(code, int) else None
        if exit_type == "UnexpectedExit":
            what = f"unexpected exit (Status 0x{(exit_code or 0) & 0xFFFFFFFF:08x})"
            return ExitInfo(reason="unexpected exit", exit_code=exit_code, error=what, details=details)
        reason = self._stopping_reason or (f"exited ({exit_type})" if exit_type else "exited")
        return ExitInfo(reason=reason, exit_code=exit_code, details=details)

    def _set_exit(self, info: ExitInfo) -> None:
        self._state = SystemState.STOPPED
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            self._exit_future.set_result(info)

    # ---- operations ----------------------------------------------------------------------------

    def _require(self, op: str, *states: SystemState) -> None:
        if self._state == SystemState.STOPPED or not self.handle:
            info = self.exit_info
            reason = info.reason if info else "closed"
            raise ErrVmcomputeAlreadyStopped(op, self.id, f"the system has stopped: {reason}")
        if self._state not in states:
            raise ErrVmcomputeOperationInvalidState(op, self.id, f"not valid in state {self._state.value}")

    async def start(self) -> None:
        self._require("Start", SystemState.CREATED)
        await self._run("Start", self._system_call("HcsStartComputeSystem"))
        self._state = SystemState.RUNNING

    async def pause(self) -> None:
        self._require("Pause", SystemState.RUNNING)
        await self._run("Pause", self._system_call("HcsPauseComputeSystem"))
        self._state = SystemState.PAUSED

    async def resume(self) -> None:
        self._require("Resume", SystemState.PAUSED)
        await self._run("Resume", self._system_call("HcsResumeComputeSystem"))
        self._state = SystemState.RUNNING

    async def modify(self, request: Document) -> None:
        configuration = json.dumps(document_to_dict(request, self.id, "Modify"))
        self._require("Modify", SystemState.CREATED, SystemState.RUNNING, SystemState.PAUSED)
        await self._run("Modify", lambda op: self.core.modify_compute_system(self.handle, op, configuration))

    async def properties(self, query: Document | None = None) -> dict[str, Any]:
        op = "Properties"
        text = json.dumps(document_to_dict(query, self.id, op)) if query is not None else None
        if not self.handle:
            raise ErrVmcomputeAlreadyStopped(op, self.id, "the system handle is closed")
        doc = await self._run(op, self._system_call("HcsGetComputeSystemProperties", text))
        props = _parse_json(op, self.id, doc)
        props.setdefault("Backend", {"Name": "windows"})
        return props

    async def shutdown(self) -> None:
        """Ask the guest to shut down; like upstream, an already-stopped system is not an error."""
        if self._state == SystemState.STOPPED or not self.handle:
            return
        self._stopping_reason = "shutdown requested"
        try:
            await self._run("Shutdown", self._system_call("HcsShutDownComputeSystem"), wait=False)
        except HcsError as e:
            if not (is_already_stopped(e) or is_not_exist(e)):
                raise

    async def terminate(self) -> None:
        if self.handle and self._state != SystemState.STOPPED:
            if self._stopping_reason in (None, "shutdown requested"):
                self._stopping_reason = "terminated"
            try:
                await self._run("Terminate", self._system_call("HcsTerminateComputeSystem"), wait=False)
            except HcsError as e:
                if not (is_already_stopped(e) or is_not_exist(e)):
                    raise
                self._set_exit(ExitInfo(reason="terminated (already stopped)"))
            try:
                await asyncio.wait_for(self.wait(), TERMINATE_WAIT)
            except TimeoutError:
                log.warning("no exit notification after terminate", extra={"id": self.id})
                self._set_exit(ExitInfo(reason="terminated (no exit notification from HCS)"))
        if not self._exit_future.done():
            self._set_exit(ExitInfo(reason=self._stopping_reason or "terminated"))
        self._close_handle()

    async def wait(self) -> ExitInfo:
        return await asyncio.shield(asyncio.wrap_future(self._exit_future))

    @property
    def state(self) -> SystemState:
        return self._state

    @property
    def exit_info(self) -> ExitInfo | None:
        return self._exit_future.result() if self._exit_future.done() else None

    def close(self) -> None:
        """Release the handle without stopping the system (upstream's Close)."""
        self._close_handle()


def _parse_json(op: str, system_id: str, doc: str) -> dict[str, Any]:
    if not doc.strip():
        return {}
    try:
        parsed = json.loads(doc)
    except json.JSONDecodeError as e:
        raise HcsError(op, system_id, f"HCS returned an unparsable document: {e}: {doc[:200]!r}") from e
    if not isinstance(parsed, dict):
        raise HcsError(op, system_id, f"HCS returned a document that is not an object: {doc[:200]!r}")
    return parsed


def open_system(system_id: str) -> WindowsComputeSystem:
    try:
        return WindowsComputeSystem.open(system_id)
    except HcsError as e:
        if is_not_exist(e) and not isinstance(e, ErrComputeSystemDoesNotExist):
            raise ErrComputeSystemDoesNotExist("OpenComputeSystem", system_id, e.message) from e
        raise


__all__ = ["WindowsComputeSystem", "open_system"]
