"""hcsshim.hcs: the ComputeSystem API (create/start/modify/properties/pause/resume/shutdown/
terminate/wait) with HCS-like errors, realized by a backend: `qemu` on Linux, `windows` on Windows.

`HCSSHIM_HCS_BACKEND` overrides the choice."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from hcsshim import settings
from hcsshim.hcs.errors import (
    ErrAlreadyExists,
    ErrComputeSystemDoesNotExist,
    ErrElementNotFound,
    ErrInvalidData,
    ErrNotSupported,
    ErrPlatformNotSupported,
    ErrTimeout,
    ErrVmcomputeAlreadyStopped,
    ErrVmcomputeInvalidJSON,
    ErrVmcomputeOperationInvalidState,
    ErrVmcomputeUnexpectedExit,
    HcsError,
    HResult,
    is_already_stopped,
    is_not_exist,
)
from hcsshim.hcs.system import (
    ComputeSystem,
    Document,
    ExitInfo,
    StallDiagnosis,
    SystemState,
    document_to_dict,
)

if TYPE_CHECKING:
    from hcsshim.builder.options import Capabilities

Creator = Callable[[str, Document], Awaitable[ComputeSystem]]
Opener = Callable[[str], ComputeSystem]


def _qemu() -> tuple[Creator, Opener]:
    from hcsshim.hcs.qemu.system import QemuComputeSystem, open_system

    return QemuComputeSystem.create, open_system


def _windows() -> tuple[Creator, Opener]:
    from hcsshim.hcs import windows

    return windows.create, windows.open_system


BACKENDS: dict[str, Callable[[], tuple[Creator, Opener]]] = {"qemu": _qemu, "windows": _windows}


def default_backend() -> str:
    return settings.current().hcs_backend or ("windows" if sys.platform == "win32" else "qemu")


def _backend(name: str | None) -> tuple[Creator, Opener]:
    chosen = name or default_backend()
    factory = BACKENDS.get(chosen)
    if factory is None:
        known = sorted(BACKENDS)
        raise ErrNotSupported("CreateComputeSystem", "", f"unknown hcs backend {chosen!r} (have {known})")
    return factory()


def capabilities(backend: str | None = None) -> Capabilities:
    """What the backend can realize of the builder's documents, for the builder and the shim to
    consult (instead of annotations that switch features off)."""
    # Imported here: `import hcsshim.hcs` stays free of the builder and the schema.
    from hcsshim.builder.options import Capabilities

    chosen = backend or default_backend()
    if chosen == "qemu":
        # The VM boots only from an initrd or a SCSI root disk (hcs/qemu/config.py), and UtilityVM
        # hot-adds layers on SCSI.
        return Capabilities(vpmem=False)
    if chosen == "windows":
        return Capabilities()
    raise ErrNotSupported("Capabilities", "", f"unknown hcs backend {chosen!r} (have {sorted(BACKENDS)})")


async def create_compute_system(
    system_id: str, document: Document, backend: str | None = None
) -> ComputeSystem:
    """Validate `document` and create (not start) the system. Nothing is left behind on error."""
    create, _ = _backend(backend)
    return await create(system_id, document)


async def template_key(document: Document, backend: str | None = None) -> str:
    """What identifies the configuration in `document` for templating: equal keys mean a clone of a
    VM saved from one can stand in for a cold boot of the other. ErrNotSupported where the backend
    cannot clone."""
    chosen = backend or default_backend()
    if chosen != "qemu":
        raise ErrNotSupported("TemplateKey", "", f"the {chosen} backend does not support VM templates")
    from hcsshim.hcs.qemu.system import template_key as qemu_template_key

    return await qemu_template_key(document)


def cleanup_orphan(system_id: str, backend: str | None = None) -> None:
    """Release what system `system_id` left behind when the process that created it died without
    terminate() (for qemu: a QEMU still running, its mounts, its state directory); a system that left
    nothing is not an error. Blocking: `shim delete` calls it from a short-lived process."""
    chosen = backend or default_backend()
    if chosen != "qemu":
        raise ErrNotSupported("CleanupOrphan", system_id, f"the {chosen} backend cannot clean up orphans")
    from hcsshim.hcs.qemu.orphans import cleanup_orphan as qemu_cleanup_orphan

    qemu_cleanup_orphan(system_id)


def _parking(op: str, backend: str | None) -> None:
    chosen = backend or default_backend()
    if chosen != "qemu":
        raise ErrNotSupported(op, "", f"the {chosen} backend cannot park VMs")


def parking_unsupported(backend: str | None = None) -> str | None:
    """Why this host cannot park clones (None when it can), without starting anything. Blocking
    (the vsock probe opens a device)."""
    chosen = backend or default_backend()
    if chosen != "qemu":
        return f"the {chosen} backend cannot park VMs"
    from hcsshim.hcs.qemu.parked import unsupported

    return unsupported()


async def park_clone(directory: str, document: Document, backend: str | None = None) -> int:
    """Start the clone `document` describes (VirtualMachine.RestoreState) in the new directory
    `directory`, owned by no process and left paused, for a later adopt_parked_clone; returns its
    process id. Nothing is left on error. ErrNotSupported where the backend cannot."""
    _parking("ParkComputeSystem", backend)
    from hcsshim.hcs.qemu.parked import park

    return await park(directory, document)


async def adopt_parked_clone(
    system_id: str, directory: str, document: Document, backend: str | None = None
) -> ComputeSystem:
    """The created (paused) system `system_id` made of the clone parked in `directory`, which this
    call takes atomically: of two callers one gets it and the other ErrElementNotFound. `document`
    is the clone's own document, of the same template key as the parked one."""
    _parking("AdoptComputeSystem", backend)
    from hcsshim.hcs.qemu.system import QemuComputeSystem

    return await QemuComputeSystem.adopt(system_id, document, directory)


def parked_clone_alive(directory: str, backend: str | None = None) -> bool:
    """Whether the clone parked in `directory` still runs. Blocking."""
    _parking("ParkedCloneAlive", backend)
    from hcsshim.hcs.qemu.parked import alive

    return alive(directory)


def destroy_parked_clone(directory: str, backend: str | None = None) -> None:
    """Kill the clone parked in `directory` and remove the directory; none is not an error. Blocking."""
    _parking("DestroyParkedClone", backend)
    from hcsshim.hcs.qemu.parked import destroy

    destroy(directory)


def open_compute_system(system_id: str, backend: str | None = None) -> ComputeSystem:
    """A system created earlier by this process."""
    _, open_ = _backend(backend)
    return open_(system_id)


__all__ = [
    "BACKENDS",
    "ComputeSystem",
    "Document",
    "ErrAlreadyExists",
    "ErrComputeSystemDoesNotExist",
    "ErrElementNotFound",
    "ErrInvalidData",
    "ErrNotSupported",
    "ErrPlatformNotSupported",
    "ErrTimeout",
    "ErrVmcomputeAlreadyStopped",
    "ErrVmcomputeInvalidJSON",
    "ErrVmcomputeOperationInvalidState",
    "ErrVmcomputeUnexpectedExit",
    "ExitInfo",
    "HResult",
    "HcsError",
    "StallDiagnosis",
    "SystemState",
    "adopt_parked_clone",
    "capabilities",
    "cleanup_orphan",
    "create_compute_system",
    "default_backend",
    "destroy_parked_clone",
    "document_to_dict",
    "is_already_stopped",
    "is_not_exist",
    "open_compute_system",
    "park_clone",
    "parked_clone_alive",
    "parking_unsupported",
    "template_key",
]
