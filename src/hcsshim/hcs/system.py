"""The ComputeSystem interface every backend implements."""

from __future__ import annotations

import abc
import enum
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from hcsshim.hcs.errors import ErrNotSupported, ErrVmcomputeInvalidJSON
from hcsshim.hvsock.transports import Transport


class SystemState(enum.Enum):
    CREATED = "Created"
    RUNNING = "Running"
    PAUSED = "Paused"
    STOPPED = "Stopped"


@dataclass(frozen=True)
class ExitInfo:
    """Why a system stopped. `error` is set when the stop was not asked for (a crash, a kill)."""

    reason: str
    exit_code: int | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def unexpected(self) -> bool:
        return self.error is not None


@dataclass(frozen=True)
class StallDiagnosis:
    """What a backend can tell about a running guest that stopped answering.

    `kernel` is "stuck" (the guest kernel reports a lockup or stall, or does not react at all),
    "alive" (it answered a task dump: the hang is in user space, e.g. the agent), or "unknown"."""

    kernel: str
    verdict: str
    console_tail: str = ""
    task_dump: str = ""


class _ToDict(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


Document = _ToDict | dict[str, Any] | str


def document_to_dict(doc: object, system_id: str = "", op: str = "CreateComputeSystem") -> dict[str, Any]:
    """Accept a schema dataclass, a dict or a JSON string; always hand back a plain HCS-shaped dict."""
    if isinstance(doc, str):
        try:
            parsed = json.loads(doc)
        except json.JSONDecodeError as e:
            raise ErrVmcomputeInvalidJSON(op, system_id, f"document is not valid JSON: {e}") from e
    elif isinstance(doc, dict):
        parsed = doc
    elif hasattr(doc, "to_dict"):
        parsed = doc.to_dict()
    else:
        raise ErrVmcomputeInvalidJSON(op, system_id, f"unsupported document type {type(doc).__name__}")
    if not isinstance(parsed, dict):
        raise ErrVmcomputeInvalidJSON(op, system_id, "document must be a JSON object")
    return parsed


class ComputeSystem(abc.ABC):
    """One HCS compute system (a VM). Methods raise HcsError subclasses."""

    id: str

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def modify(self, request: Document) -> None:
        """Apply a ModifySettingRequest (hot add/remove of devices)."""

    @abc.abstractmethod
    async def properties(self, query: Document | None = None) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def pause(self) -> None: ...

    @abc.abstractmethod
    async def resume(self) -> None: ...

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Ask the guest to power off; returns once asked (wait() tells when it stopped)."""

    @abc.abstractmethod
    async def terminate(self) -> None:
        """Stop the system now and release everything it holds; idempotent."""

    @abc.abstractmethod
    async def wait(self) -> ExitInfo: ...

    async def save(self, options: Document) -> None:
        """HcsSaveComputeSystem: with SaveOptions {SaveType: "AsTemplate", SaveStateFilePath} the VM is
        paused and saved so that clones can be created from it (VirtualMachine.RestoreState)."""
        raise ErrNotSupported("Save", self.id, f"the {type(self).__name__} backend cannot save a VM")

    async def open_guest_transport(self) -> Transport:
        """The host end of the guest's HvSocket stand-in (the byte stream the mux session runs over),
        opened before start(): the session's listeners exist before the guest can dial. Call once."""
        backend = type(self).__name__
        raise ErrNotSupported("HvSocket", self.id, f"the {backend} backend has no guest transport")

    async def diagnose_stall(self) -> StallDiagnosis:
        """Look into a live guest that stopped answering; backends that can, override this."""
        return StallDiagnosis("unknown", f"the {type(self).__name__} backend cannot inspect a running guest")

    @property
    @abc.abstractmethod
    def state(self) -> SystemState: ...

    @property
    @abc.abstractmethod
    def exit_info(self) -> ExitInfo | None: ...

    @property
    def console_path(self) -> str:
        """A file holding the guest's serial console output, or "" when the backend keeps none."""
        return ""

    @property
    def hvsocket_address(self) -> str | None:
        """Where the host reaches the guest's HvSocket stand-in (`unix:/path` or `vsock:<cid>:<port>`)."""
        return None
