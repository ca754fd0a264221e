"""The process's settings from its environment, read in one place, once.

Every HCSSHIM_* variable the host side honours (and containerd's TTRPC_ADDRESS) is a field of
:class:`Settings`; :func:`current` parses the environment at first use (never at import, so a test
or a tool can set a variable before anything reads it) and returns the same object afterwards.
An empty variable counts as unset. A bad value fails with a ValueError naming the variable.

The guest agent does not use this module: it runs in the UVM with the environment /init gives it
(HCSSHIM_ROOT_IS_RAMFS, HCSSHIM_MODULES_DONE), and the image does not carry host settings, so a
change here cannot break the agent. Stdlib only, imports nothing of ours: any layer may use it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

# Names of the variables, for messages and for code that sets them for a child process.
HCS_BACKEND_ENV = "HCSSHIM_HCS_BACKEND"
QEMU_ENV = "HCSSHIM_QEMU"
ACCEL_ENV = "HCSSHIM_ACCEL"
DEBUG_QEMU_ENV = "HCSSHIM_DEBUG_QEMU"
SLOW_CALLBACK_ENV = "HCSSHIM_SLOW_CALLBACK_MS"
GUEST_SLOW_CALLBACK_ENV = "HCSSHIM_GUEST_SLOW_CALLBACK_MS"
HVSOCKET_ENV = "HCSSHIM_HVSOCKET"
RUN_DIR_ENV = "HCSSHIM_RUN_DIR"
BOOT_FILES_ENV = "HCSSHIM_BOOT_FILES"
GCS_CONNECTION_TIMEOUT_ENV = "HCSSHIM_TIMEOUT_GCSCONNECTION"
SHIM_SOCKET_DIR_ENV = "HCSSHIM_SHIM_SOCKET_DIR"
LOCAL_STATE_ENV = "HCSSHIM_LOCAL_STATE"
SHIM_HOST_FACTORY_ENV = "HCSSHIM_SHIM_HOST_FACTORY"
UVM_POOL_SIZE_ENV = "HCSSHIM_UVM_POOL_SIZE"
UVM_POOL_MEMORY_MB_ENV = "HCSSHIM_UVM_POOL_MEMORY_MB"
LCOW_V2_UVM_GROUP_ENV = "HCSSHIM_LCOW_V2_UVM_GROUP"
TTRPC_ADDRESS_ENV = "TTRPC_ADDRESS"

DEFAULT_QEMU = "qemu-system-x86_64"
DEFAULT_RUN_DIR = "/run/hcsshim"
DEFAULT_BOOT_FILES = "/var/cache/hcsshim/uvm"
DEFAULT_GCS_CONNECTION_TIMEOUT = 120.0
DEFAULT_SHIM_SOCKET_DIR = "/run/containerd/s"
DEFAULT_LOCAL_STATE = "/run/hcsshim/local"


@dataclass(frozen=True)
class Settings:
    """What the environment says; each field names its variable and default."""

    # HCSSHIM_HCS_BACKEND: the compute backend (`qemu`, `windows`); "" = the platform's own.
    hcs_backend: str = ""
    # HCSSHIM_QEMU: the QEMU binary the qemu backend runs.
    qemu: str = DEFAULT_QEMU
    # HCSSHIM_ACCEL: force the accelerator: `tcg` or `kvm` (kvm unprobed), or a full `-accel`
    # argument with a comma (e.g. `tcg,thread=multi`) passed to QEMU verbatim; "" = probe.
    accel: str = ""
    # HCSSHIM_DEBUG_QEMU: any value logs QEMU's own log when it exits.
    debug_qemu: bool = False
    # HCSSHIM_HVSOCKET: the HvSocket stand-in: `vsock` (mandatory), `virtio-serial` (also `virtio`,
    # `serial`), "" = vsock where the host has it. Stripped and lower-cased.
    hvsocket: str = ""
    # HCSSHIM_RUN_DIR: runtime state: the accelerator probe cache, and `qemu/` per-VM directories.
    run_dir: str = DEFAULT_RUN_DIR
    # HCSSHIM_BOOT_FILES: the UVM boot files directory `hcsshim uvm build` writes and VMs boot from.
    boot_files: str = DEFAULT_BOOT_FILES
    # HCSSHIM_TIMEOUT_GCSCONNECTION: seconds a UVM has from start to a negotiated bridge (> 0).
    gcs_connection_timeout: float = DEFAULT_GCS_CONNECTION_TIMEOUT
    # HCSSHIM_SHIM_SOCKET_DIR: where `start` puts shim sockets (containerd's /run/containerd/s).
    shim_socket_dir: str = DEFAULT_SHIM_SOCKET_DIR
    # HCSSHIM_LOCAL_STATE: state of the no-VM host (shim/local.py) that runs the agent directly.
    local_state: str = DEFAULT_LOCAL_STATE
    # HCSSHIM_SHIM_HOST_FACTORY: test hook, `module:function` of a HostFactory used instead of a UVM.
    shim_host_factory: str = ""
    # HCSSHIM_SLOW_CALLBACK_MS: log each event-loop callback that holds the shim's loop longer than
    # this (hcsshim.loopwatch); 0 = off.
    slow_callback_ms: int = 0
    # HCSSHIM_GUEST_SLOW_CALLBACK_MS: the same for the guest agent of every UVM this process starts
    # (passed on the UVM's kernel command line); 0 = off.
    guest_slow_callback_ms: int = 0
    # HCSSHIM_UVM_POOL_SIZE: paused clones kept ready per UVM configuration (uvm/pool.py) when the
    # pod's annotations do not say (io.hcsshim.virtualmachine.pool.size); 0 = no warm pool.
    uvm_pool_size: int = 0
    # HCSSHIM_UVM_POOL_MEMORY_MB: cap on the guest memory of all pooled clones together; 0 = none.
    uvm_pool_memory_mb: int = 0
    # HCSSHIM_LCOW_V2_UVM_GROUP: the UVM group of lcow-v2 sandboxes whose annotations and runtime
    # options name none (shim/manager_v2.py: containerd 2.1's CRI can pass neither to `start`);
    # "" = a UVM per sandbox.
    lcow_v2_uvm_group: str = ""
    # TTRPC_ADDRESS (set by containerd, not ours): its ttrpc socket, where the shim publishes events.
    ttrpc_address: str = ""

    @property
    def qemu_state_dir(self) -> str:
        """Per-VM directories of the qemu backend."""
        return os.path.join(self.run_dir, "qemu")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        def text(name: str, default: str = "") -> str:
            return environ.get(name) or default

        return cls(
            hcs_backend=text(HCS_BACKEND_ENV),
            qemu=text(QEMU_ENV, DEFAULT_QEMU),
            accel=text(ACCEL_ENV),
            debug_qemu=bool(text(DEBUG_QEMU_ENV)),
            hvsocket=text(HVSOCKET_ENV).strip().lower(),
            run_dir=text(RUN_DIR_ENV, DEFAULT_RUN_DIR),
            boot_files=text(BOOT_FILES_ENV, DEFAULT_BOOT_FILES),
            gcs_connection_timeout=_seconds(
                environ, GCS_CONNECTION_TIMEOUT_ENV, DEFAULT_GCS_CONNECTION_TIMEOUT
            ),
            shim_socket_dir=text(SHIM_SOCKET_DIR_ENV, DEFAULT_SHIM_SOCKET_DIR),
            local_state=text(LOCAL_STATE_ENV, DEFAULT_LOCAL_STATE),
            shim_host_factory=text(SHIM_HOST_FACTORY_ENV),
            uvm_pool_size=_count(environ, UVM_POOL_SIZE_ENV),
            uvm_pool_memory_mb=_count(environ, UVM_POOL_MEMORY_MB_ENV),
            lcow_v2_uvm_group=text(LCOW_V2_UVM_GROUP_ENV).strip(),
            ttrpc_address=text(TTRPC_ADDRESS_ENV),
            slow_callback_ms=_milliseconds(environ, SLOW_CALLBACK_ENV),
            guest_slow_callback_ms=_milliseconds(environ, GUEST_SLOW_CALLBACK_ENV),
        )


def _milliseconds(environ: Mapping[str, str], name: str) -> int:
    raw = environ.get(name) or ""
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number of milliseconds") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r} must not be negative")
    return value


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name) or ""
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={raw!r} must be a positive number of seconds")
    return value


def _count(environ: Mapping[str, str], name: str) -> int:
    raw = (environ.get(name) or "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise ValueError(f"{name}={raw!r} is not a whole number (0 or more)")
    return int(raw)


_current: Settings | None = None


def current() -> Settings:
    """This process's settings, parsed from its environment at the first call."""
    global _current
    if _current is None:
        _current = Settings.from_environ(os.environ)
    return _current


def reset(value: Settings | None = None) -> None:
    """Replace the process's settings; None reads the environment again at the next use (tests
    that change a variable call this)."""
    global _current
    _current = value


def inherited_environ() -> dict[str, str]:
    """A copy of the live environment, for a child process that should inherit it (not a setting)."""
    return dict(os.environ)
