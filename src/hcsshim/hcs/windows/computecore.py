"""A ctypes binding to computecore.dll, the HCS v2 API (upstream: internal/computecore).

The DLL is loaded lazily and only on Windows. Everything above this module talks to a `ComputeCore`,
which wraps a *raw* library object: the real `WinDLL("computecore.dll")` with its argtypes set, or
any object exposing the same functions with ctypes-compatible signatures (the unit tests' fake).

Conventions the raw functions follow (the same as the C API):
- handles are pointer-sized integers (0 = none);
- strings are `c_wchar_p`;
- out parameters are `ctypes.pointer(...)` objects (not `byref`), so a Python fake can store into
  them with `out[0] = value`;
- result documents come back as the address of a NUL-terminated wide string that the caller frees
  with `CoTaskMemFree` (the raw object exposes it as `CoTaskMemFree` too);
- functions returning HRESULT return a signed 32-bit integer."""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable
from typing import Any

from hcsshim.hcs.errors import ErrPlatformNotSupported

HANDLE = ctypes.c_void_p
HRESULT = ctypes.c_long
INFINITE = 0xFFFFFFFF
GENERIC_ALL = 0x10000000

# HCS_EVENT_TYPE (computecore.h)
EVENT_INVALID = 0x00000000
EVENT_SYSTEM_EXITED = 0x00000001
EVENT_SYSTEM_CRASH_INITIATED = 0x00000002
EVENT_SYSTEM_CRASH_REPORT = 0x00000003
EVENT_SYSTEM_RDP_ENHANCED_MODE_STATE_CHANGED = 0x00000004
EVENT_SYSTEM_SILO_JOB_CREATED = 0x00000005
EVENT_SYSTEM_GUEST_CONNECTION_CLOSED = 0x00000006
EVENT_PROCESS_EXITED = 0x00010000
EVENT_OPERATION_CALLBACK = 0x01000000
EVENT_SERVICE_DISCONNECT = 0x02000000

# HCS_EVENT_OPTIONS
EVENT_OPTION_NONE = 0
EVENT_OPTION_ENABLE_OPERATION_CALLBACKS = 1


class HcsEvent(ctypes.Structure):
    """HCS_EVENT: what HCS hands an HCS_EVENT_CALLBACK."""

    _fields_ = [("Type", ctypes.c_uint32), ("EventData", ctypes.c_wchar_p), ("Operation", HANDLE)]


# void CALLBACK HCS_EVENT_CALLBACK(HCS_EVENT* event, void* context); stdcall on Windows.
_FUNCTYPE: Any = getattr(ctypes, "WINFUNCTYPE", ctypes.CFUNCTYPE)
EVENT_CALLBACK = _FUNCTYPE(None, ctypes.POINTER(HcsEvent), ctypes.c_void_p)

_PWSTR_OUT = ctypes.POINTER(ctypes.c_void_p)
_SYSTEM_OP = [HANDLE, HANDLE, ctypes.c_wchar_p]

# name -> (restype, argtypes); None restype = void.
SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "HcsCreateOperation": (HANDLE, [ctypes.c_void_p, ctypes.c_void_p]),
    "HcsCloseOperation": (None, [HANDLE]),
    "HcsGetOperationResult": (HRESULT, [HANDLE, _PWSTR_OUT]),
    "HcsWaitForOperationResult": (HRESULT, [HANDLE, ctypes.c_uint32, _PWSTR_OUT]),
    "HcsCancelOperation": (HRESULT, [HANDLE]),
    "HcsCreateComputeSystem": (
        HRESULT,
        [ctypes.c_wchar_p, ctypes.c_wchar_p, HANDLE, ctypes.c_void_p, ctypes.POINTER(HANDLE)],
    ),
    "HcsOpenComputeSystem": (HRESULT, [ctypes.c_wchar_p, ctypes.c_uint32, ctypes.POINTER(HANDLE)]),
    "HcsCloseComputeSystem": (None, [HANDLE]),
    "HcsStartComputeSystem": (HRESULT, _SYSTEM_OP),
    "HcsShutDownComputeSystem": (HRESULT, _SYSTEM_OP),
    "HcsTerminateComputeSystem": (HRESULT, _SYSTEM_OP),
    "HcsPauseComputeSystem": (HRESULT, _SYSTEM_OP),
    "HcsResumeComputeSystem": (HRESULT, _SYSTEM_OP),
    "HcsGetComputeSystemProperties": (HRESULT, _SYSTEM_OP),
    "HcsModifyComputeSystem": (HRESULT, [HANDLE, HANDLE, ctypes.c_wchar_p, HANDLE]),
    "HcsSetComputeSystemCallback": (HRESULT, [HANDLE, ctypes.c_uint32, ctypes.c_void_p, EVENT_CALLBACK]),
}


class _WindowsLibrary:
    """computecore.dll with its signatures, plus ole32's CoTaskMemFree."""

    def __init__(self, dll: Any, ole32: Any) -> None:
        for name, (restype, argtypes) in SIGNATURES.items():
            fn = getattr(dll, name)
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)
        free = ole32.CoTaskMemFree
        free.restype = None
        free.argtypes = [ctypes.c_void_p]
        self.CoTaskMemFree = free


def load_windows_library() -> Any:
    """The real DLL. Raises ErrPlatformNotSupported off Windows or when HCS is not installed."""
    if sys.platform != "win32":
        raise ErrPlatformNotSupported(
            "LoadComputeCore", "", "the windows HCS backend is not available on this platform"
        )
    try:
        return _WindowsLibrary(ctypes.WinDLL("computecore.dll"), ctypes.WinDLL("ole32.dll"))
    except (OSError, AttributeError) as e:
        raise ErrPlatformNotSupported(
            "LoadComputeCore",
            "",
            f"the windows HCS backend is not available: computecore.dll could not be loaded ({e}); "
            "is the Hyper-V / Containers feature enabled?",
        ) from e


def normalize_hresult(value: int) -> int:
    """Unsigned 32-bit, with HRESULT_FROM_WIN32 unwrapped to the Win32 code (as upstream does)."""
    hr = value & 0xFFFFFFFF
    if hr & 0x80000000 and hr & 0x1FFF0000 == 0x00070000:
        hr &= 0xFFFF
    return hr


class ComputeCore:
    """Python-shaped calls over a raw library. Each returns (hresult, ...) with the HRESULT normalized;
    nothing here raises HcsError (the system layer turns results into errors)."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib

    # ---- operations ----------------------------------------------------------------------------

    def create_operation(self) -> int:
        handle = self.lib.HcsCreateOperation(None, None)
        return int(handle or 0)

    def close_operation(self, op: int) -> None:
        self.lib.HcsCloseOperation(op)

    def _take_string(self, out: Any) -> str:
        addr = out[0]
        if not addr:
            return ""
        try:
            return ctypes.wstring_at(addr)
        finally:
            self.lib.CoTaskMemFree(addr)

    def wait_for_operation_result(self, op: int, timeout_ms: int = INFINITE) -> tuple[int, str]:
        out = ctypes.pointer(ctypes.c_void_p())
        hr = self.lib.HcsWaitForOperationResult(op, timeout_ms, out)
        return normalize_hresult(hr), self._take_string(out)

    def get_operation_result(self, op: int) -> tuple[int, str]:
        out = ctypes.pointer(ctypes.c_void_p())
        hr = self.lib.HcsGetOperationResult(op, out)
        return normalize_hresult(hr), self._take_string(out)

    def cancel_operation(self, op: int) -> int:
        return normalize_hresult(self.lib.HcsCancelOperation(op))

    # ---- compute systems -----------------------------------------------------------------------

    def create_compute_system(self, system_id: str, configuration: str, op: int) -> tuple[int, int]:
        out = ctypes.pointer(HANDLE())
        hr = self.lib.HcsCreateComputeSystem(system_id, configuration, op, None, out)
        return normalize_hresult(hr), int(out[0] or 0)

    def open_compute_system(self, system_id: str, access: int = GENERIC_ALL) -> tuple[int, int]:
        out = ctypes.pointer(HANDLE())
        hr = self.lib.HcsOpenComputeSystem(system_id, access, out)
        return normalize_hresult(hr), int(out[0] or 0)

    def close_compute_system(self, system: int) -> None:
        self.lib.HcsCloseComputeSystem(system)

    def system_call(self, name: str, system: int, op: int, argument: str | None) -> int:
        """HcsStart/ShutDown/Terminate/Pause/Resume/GetComputeSystemProperties: (system, op, string)."""
        if name not in SIGNATURES or SIGNATURES[name][1] is not _SYSTEM_OP:
            raise ValueError(f"{name} is not a (system, operation, string) call")
        return normalize_hresult(getattr(self.lib, name)(system, op, argument))

    def modify_compute_system(self, system: int, op: int, configuration: str) -> int:
        return normalize_hresult(self.lib.HcsModifyComputeSystem(system, op, configuration, None))

    def set_compute_system_callback(self, system: int, options: int, context: int, callback: Any) -> int:
        return normalize_hresult(self.lib.HcsSetComputeSystemCallback(system, options, context, callback))


Loader = Callable[[], Any]

_lock = threading.Lock()
_loader: Loader = load_windows_library
_core: ComputeCore | None = None


def set_loader(loader: Loader | None) -> None:
    """Replace how the raw library is obtained (tests inject a fake); None restores the DLL."""
    global _loader, _core
    with _lock:
        _loader = loader or load_windows_library
        _core = None


def get_computecore() -> ComputeCore:
    """The process-wide ComputeCore, loading the library on first use."""
    global _core
    with _lock:
        if _core is None:
            _core = ComputeCore(_loader())
        return _core
