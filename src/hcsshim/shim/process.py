"""One process of a task (the init process or an exec): created → running → stopped.

The process is started in the guest through the bridge; a waiter task then blocks in the guest's
WaitForProcess. When the VM dies the bridge fails every pending call, so the waiter still ends, with
exit status 255 and the VM's exit reason. Output is drained to the FIFOs before the exit is reported,
so a client that prints after TaskExit sees all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from typing import Any

from hcsshim import errdefs
from hcsshim.gcs.protocol import GcsError, Hresult
from hcsshim.shim.host import Bridge
from hcsshim.shim.io import ProcessIO

log = logging.getLogger("hcsshim.shim.process")

UNKNOWN_EXIT = 255
ALREADY_FINISHED = "process already finished: not found"
# What a guest answers for a process or container it does not have (any more).
NOT_FOUND_RESULTS = frozenset(
    h & 0xFFFFFFFF for h in (Hresult.ERROR_NOT_FOUND, Hresult.VMCOMPUTE_SYSTEM_NOT_FOUND)
)
OUTPUT_DRAIN_TIMEOUT = 5.0


class State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"


class ProcessError(Exception):
    """A request that does not fit the process's state (→ FailedPrecondition / NotFound)."""

    def __init__(self, message: str, *, not_found: bool = False, kind: errdefs.Kind | None = None) -> None:
        super().__init__(message)
        self.not_found = not_found
        default = errdefs.Kind.NOT_FOUND if not_found else errdefs.Kind.FAILED_PRECONDITION
        self.kind = kind or default


ExitCallback = Callable[["Process"], None]


class Process:
    def __init__(
        self,
        container_id: str,
        exec_id: str,
        io: ProcessIO,
        *,
        oci_process: dict[str, Any] | None = None,
        on_exit: ExitCallback | None = None,
        reason_source: Callable[[], str] | None = None,
    ) -> None:
        self.container_id = container_id
        self.exec_id = exec_id
        self.io = io
        self.oci_process = oci_process
        self.pid = 0
        self.state = State.CREATED
        self.exit_status = 0
        self.exited_at: float | None = None
        self.exit_reason = ""
        self._on_exit = on_exit
        self._reason_source = reason_source
        self._exited = asyncio.Event()
        self._waiter: asyncio.Task[None] | None = None
        self._bridge: Bridge | None = None
        # The bridge the (init's) container was created through, before Start; set by the task.
        self._create_bridge: Bridge | None = None
        self._pending_size: tuple[int, int] | None = None

    @property
    def is_init(self) -> bool:
        return self.exec_id == ""

    @property
    def terminal(self) -> bool:
        return self.io.terminal

    def created_in(self, bridge: Bridge) -> None:
        """The init's container exists in the guest (its console too): resizes may go there."""
        self._create_bridge = bridge

    async def start(self, bridge: Bridge, before_wait: Callable[[Process], None] | None = None) -> int:
        """Start in the guest; ``before_wait`` runs once the pid is known and before exit handling
        can begin (the caller publishes TaskStart / TaskExecStarted there, so exit always follows)."""
        if self.state is not State.CREATED:
            raise ProcessError(f"process {self.describe()} is {self.state.value}, cannot start")
        params: dict[str, Any] = dict(self.io.process_params())
        if self.oci_process is not None:
            params["OciProcess"] = self.oci_process
        self._bridge = bridge
        guest = await bridge.execute_process(self.container_id, params)
        self.pid = int(guest.pid)
        self.io.attach(guest)
        self.state = State.RUNNING
        if self._pending_size is not None:
            width, height = self._pending_size
            self._pending_size = None
            try:
                await bridge.resize_console(self.container_id, self.pid, height, width)
            except GcsError as exc:
                log.warning("resize after start failed", extra={"proc": self.describe(), "error": exc})
        if before_wait is not None:
            before_wait(self)
        self._waiter = asyncio.create_task(self._wait_exit(bridge), name=f"wait {self.describe()}")
        return self.pid

    async def _wait_exit(self, bridge: Bridge) -> None:
        try:
            code = await bridge.wait_process(self.container_id, self.pid, timeout=0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code = UNKNOWN_EXIT
            self.exit_reason = (self._reason_source() if self._reason_source else "") or str(exc)
            log.warning(
                "process lost", extra={"proc": self.describe(), "reason": self.exit_reason, "error": exc}
            )
        if not await self.io.wait_output(OUTPUT_DRAIN_TIMEOUT):
            log.warning("output not drained in time", extra={"proc": self.describe()})
        self.set_exited(code)

    def set_exited(self, code: int, reason: str = "") -> None:
        if self.state is State.STOPPED:
            return
        self.state = State.STOPPED
        self.exit_status = code & 0xFFFFFFFF
        self.exited_at = time.time()
        if reason and not self.exit_reason:
            self.exit_reason = reason
        self._exited.set()
        log.info(
            "process exited",
            extra={"proc": self.describe(), "status": self.exit_status, "reason": self.exit_reason},
        )
        if self._on_exit is not None:
            self._on_exit(self)

    async def wait(self) -> None:
        await self._exited.wait()

    async def kill(self, signal: int) -> None:
        # The answers of containerd's runc shim (pkg/process): errdefs NotFound once the process is
        # gone, FailedPrecondition for an exec that was never started.
        if self.state is State.STOPPED:
            raise ProcessError(ALREADY_FINISHED, not_found=True)
        if self.state is State.CREATED:
            if not self.is_init:
                raise ProcessError(f"process {self.describe()}: process not created")
            # The created container is removed when the task is deleted. Report it as killed by the
            # signal, as runc would.
            self.set_exited(128 + signal)
            return
        assert self._bridge is not None
        try:
            await self._bridge.signal_process(self.container_id, self.pid, signal)
        except GcsError as exc:
            if exc.result & 0xFFFFFFFF in NOT_FOUND_RESULTS:
                # Exited in the guest, exit not yet seen here; or its container was removed under us.
                raise ProcessError(f"{ALREADY_FINISHED} ({exc})", not_found=True) from exc
            raise

    async def resize(self, width: int, height: int) -> None:
        if not self.terminal:
            raise ProcessError(f"process {self.describe()} has no terminal")
        if self.state is State.STOPPED:
            raise ProcessError(ALREADY_FINISHED, not_found=True)
        if self.state is State.CREATED:
            # runc's shim accepts a resize before Start (the console exists from Create): the guest
            # has the init's console from Create on; an exec's is applied when it starts.
            self._pending_size = (width, height)
            if self.is_init and self.pid and self._create_bridge is not None:
                await self._create_bridge.resize_console(self.container_id, self.pid, height, width)
                self._pending_size = None
            return
        assert self._bridge is not None
        await self._bridge.resize_console(self.container_id, self.pid, height, width)

    def close_stdin(self) -> None:
        self.io.close_stdin()

    async def close(self) -> None:
        """Release the FIFOs and the waiter (the process has exited or the task is going away)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()
            with contextlib.suppress(BaseException):
                await self._waiter
        await self.io.close()

    def describe(self) -> str:
        return f"{self.container_id}/{self.exec_id}" if self.exec_id else self.container_id
