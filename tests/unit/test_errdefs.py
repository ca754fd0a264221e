"""Errors keep their kind across layers, and the ttrpc boundary maps kinds to status codes."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import errno
from pathlib import Path

import pytest
from google.protobuf import empty_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

import hcsshim
from hcsshim import errdefs
from hcsshim.gcs import protocol as p
from hcsshim.gcs.bridge import BridgeClosedError, BridgeError, BridgeTimeoutError
from hcsshim.gcs.protocol import GcsError, Hresult
from hcsshim.hcs.errors import (
    ErrAlreadyExists,
    ErrComputeSystemDoesNotExist,
    ErrInvalidData,
    ErrNotSupported,
    ErrVmcomputeAlreadyStopped,
    ErrVmcomputeUnexpectedExit,
    HcsError,
)
from hcsshim.shim.process import ProcessError
from hcsshim.ttrpc.status import KIND_CODES, Code, TtrpcError, from_exception


def _wrapped(inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as e:
            raise RuntimeError("while creating task t1") from e
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (BridgeError("CreateContainer t1", Hresult.ERROR_NOT_FOUND, "no such container", []), Code.NOT_FOUND),
        (
            BridgeError("CreateContainer t1", Hresult.VMCOMPUTE_SYSTEM_ALREADY_EXISTS, "exists", []),
            Code.ALREADY_EXISTS,
        ),
        (BridgeError("Modify", Hresult.E_NOTIMPL, "unsupported modify request", []), Code.UNIMPLEMENTED),
        (BridgeError("Modify", Hresult.E_INVALIDARG, "bad settings", []), Code.INVALID_ARGUMENT),
        (
            GcsError("guest: sandbox still has containers", Hresult.VMCOMPUTE_INVALID_STATE),
            Code.FAILED_PRECONDITION,
        ),
        (BridgeTimeoutError("guest ExecuteProcess timed out after 120s"), Code.DEADLINE_EXCEEDED),
        (BridgeClosedError("utility VM exited: qemu killed by SIGKILL"), Code.UNAVAILABLE),
        (ErrComputeSystemDoesNotExist("Open", "vm", "no such compute system"), Code.NOT_FOUND),
        (ErrAlreadyExists("Create", "vm", "exists"), Code.ALREADY_EXISTS),
        (ErrVmcomputeAlreadyStopped("Modify", "vm", "stopped"), Code.FAILED_PRECONDITION),
        (ErrVmcomputeUnexpectedExit("Modify", "vm", "QEMU exited"), Code.UNAVAILABLE),
        (ErrInvalidData("Create", "vm", "bad document"), Code.INVALID_ARGUMENT),
        (ErrNotSupported("Modify", "vm", "VirtualPci is not supported"), Code.UNIMPLEMENTED),
        (ProcessError("exec e1: not found", not_found=True), Code.NOT_FOUND),
        (ProcessError("process is not running"), Code.FAILED_PRECONDITION),
        (FileNotFoundError(2, "no such file"), Code.NOT_FOUND),
        (TimeoutError(), Code.DEADLINE_EXCEEDED),
        (TtrpcError(Code.NOT_FOUND, "peer said so"), Code.NOT_FOUND),
        (HcsError("Start", "vm", "something odd"), Code.UNKNOWN),
        (RuntimeError("a bug"), Code.UNKNOWN),
    ],
)
def test_every_layer_error_maps_to_its_status(exc: Exception, code: Code) -> None:
    assert from_exception(exc).code == code
    assert str(exc) in from_exception(exc).message or isinstance(exc, TtrpcError)


def test_a_wrapper_without_a_kind_takes_its_causes() -> None:
    inner = BridgeError("WaitForProcess t1", Hresult.ERROR_NOT_FOUND, "gone", [])
    assert from_exception(_wrapped(inner)).code == Code.NOT_FOUND
    assert errdefs.kind_of(_wrapped(BridgeTimeoutError("x"))) is errdefs.Kind.DEADLINE_EXCEEDED


def test_ttrpc_error_kind_round_trips_through_the_code_table() -> None:
    for kind in errdefs.Kind:
        err = from_exception(errdefs.Error("m", kind))
        assert err.kind is kind


# ---- every layer's representative failures, as containerd sees them -------------------------------


def _layer_errors() -> list[tuple[str, BaseException, Code]]:
    from hcsshim.annotations import AnnotationError
    from hcsshim.builder.options import BuilderError
    from hcsshim.hcs.errors import ErrElementNotFound, ErrTimeout, ErrVmcomputeOperationInvalidState
    from hcsshim.network import NetworkError
    from hcsshim.oci.spec import SpecError as OciSpecError
    from hcsshim.schema._codec import SchemaError
    from hcsshim.shim.flags import FlagError
    from hcsshim.shim.manager import StartError
    from hcsshim.shim.options import OptionsError
    from hcsshim.shim.pod import PodError
    from hcsshim.shim.spec import SpecError
    from hcsshim.uvm.errors import UvmError
    from hcsshim.uvm.template import TemplateUnavailable

    K = errdefs.Kind
    return [
        (
            "bridge timeout",
            BridgeTimeoutError("guest WaitForProcess timed out after 5s"),
            Code.DEADLINE_EXCEEDED,
        ),
        ("bridge closed", BridgeClosedError("guest Modify: bridge is closed (vm died)"), Code.UNAVAILABLE),
        (
            "guest: no such container",
            BridgeError("SignalProcess c1", Hresult.VMCOMPUTE_SYSTEM_NOT_FOUND, "container c1 not found", []),
            Code.NOT_FOUND,
        ),
        (
            "guest: container exists",
            BridgeError("CreateContainer c1", Hresult.VMCOMPUTE_SYSTEM_ALREADY_EXISTS, "exists", []),
            Code.ALREADY_EXISTS,
        ),
        (
            "guest: wait timed out",
            BridgeError("WaitForProcess", Hresult.VMCOMPUTE_TIMEOUT, "did not exit within 10 ms", []),
            Code.DEADLINE_EXCEEDED,
        ),
        (
            "guest: missing file (errno)",
            BridgeError("Modify", p.hresult_of_errno(errno.ENOENT), "mount: no such file", []),
            Code.NOT_FOUND,
        ),
        (
            "guest: busy mount (errno)",
            BridgeError("Modify", p.hresult_of_errno(errno.EBUSY), "umount: busy", []),
            Code.FAILED_PRECONDITION,
        ),
        (
            "guest: unknown modify",
            BridgeError(
                "Modify", Hresult.E_NOTIMPL, "unsupported modify request PodCgroupMemoryLimit/Update", []
            ),
            Code.UNIMPLEMENTED,
        ),
        (
            "guest: protocol version",
            GcsError(
                "guest negotiated unexpected protocol version 3",
                Hresult.VMCOMPUTE_UNSUPPORTED_PROTOCOL_VERSION,
            ),
            Code.UNIMPLEMENTED,
        ),
        ("hcs: element not found", ErrElementNotFound("Modify", "vm", "no VPMem device 3"), Code.NOT_FOUND),
        (
            "hcs: timeout",
            ErrTimeout("Modify", "vm", "guest did not release SCSI 0:1"),
            Code.DEADLINE_EXCEEDED,
        ),
        (
            "hcs: invalid state",
            ErrVmcomputeOperationInvalidState("Pause", "vm", "not valid in state created"),
            Code.FAILED_PRECONDITION,
        ),
        (
            "uvm: VM died before the agent",
            UvmError("vm", "start", "the VM exited before the guest agent connected", kind=K.UNAVAILABLE),
            Code.UNAVAILABLE,
        ),
        (
            "uvm: agent stalled",
            UvmError("vm", "start", "waiting for the guest agent timed out", kind=K.DEADLINE_EXCEEDED),
            Code.DEADLINE_EXCEEDED,
        ),
        (
            "uvm: not attached",
            UvmError("vm", "remove_scsi", "/x is not attached", kind=K.NOT_FOUND),
            Code.NOT_FOUND,
        ),
        ("uvm: no template", TemplateUnavailable("building template k failed"), Code.UNAVAILABLE),
        ("shim: exec missing", ProcessError("exec e1 not found in task t", not_found=True), Code.NOT_FOUND),
        (
            "shim: exec exists",
            ProcessError("exec e1 already exists", kind=K.ALREADY_EXISTS),
            Code.ALREADY_EXISTS,
        ),
        (
            "shim: process stopped",
            ProcessError("process t is stopped, cannot start"),
            Code.FAILED_PRECONDITION,
        ),
        ("shim: pod is dead", PodError("pod p: utility VM exited"), Code.FAILED_PRECONDITION),
        ("shim: bad config.json", SpecError("/b/config.json: Expecting value"), Code.INVALID_ARGUMENT),
        ("shim: bad options", OptionsError("runtime options x: truncated"), Code.INVALID_ARGUMENT),
        ("shim: bad flag", FlagError("flag provided but not defined: -x"), Code.INVALID_ARGUMENT),
        (
            "shim: start, already serving",
            StartError("a shim for t already serves x", K.ALREADY_EXISTS),
            Code.ALREADY_EXISTS,
        ),
        (
            "annotation",
            AnnotationError(
                "io.microsoft.virtualmachine.computetopology.processor.count", "x", "not an integer"
            ),
            Code.INVALID_ARGUMENT,
        ),
        ("oci spec", OciSpecError("process.args", "must be a list"), Code.INVALID_ARGUMENT),
        ("builder", BuilderError("vNUMA supports only Physical memory backing type"), Code.INVALID_ARGUMENT),
        ("schema", SchemaError("VirtualMachine.Chipset", "expected an object"), Code.INVALID_ARGUMENT),
        (
            "network: no netns",
            NetworkError("pod network namespace /x does not exist", K.NOT_FOUND),
            Code.NOT_FOUND,
        ),
        ("network: failed", NetworkError("creating tap tap0: EPERM"), Code.FAILED_PRECONDITION),
    ]


LAYER_ERRORS = _layer_errors()


@pytest.mark.parametrize(
    ("exc", "code"), [(e, c) for _, e, c in LAYER_ERRORS], ids=[n for n, _, _ in LAYER_ERRORS]
)
def test_a_layer_error_reaches_containerd_with_its_code(exc: BaseException, code: Code) -> None:
    """Raised in a Task handler, the error leaves the shim as the ttrpc status containerd reads."""
    from hcsshim.shim.service_task import TaskService
    from hcsshim.ttrpc import Context

    async def handler(ctx: Context, req: object) -> empty_pb2.Empty:
        raise exc

    async def call() -> None:
        await TaskService._wrap(handler)(Context(service="containerd.task.v2.Task", method="Create"), None)

    with pytest.raises(TtrpcError) as info:
        asyncio.run(call())
    assert info.value.code == code
    assert info.value.to_status().code == int(code)
    assert str(exc) in info.value.message


def test_a_guest_failure_that_is_not_a_gcs_error_keeps_its_kind_on_the_wire() -> None:
    from hcsshim.guest.server import _crash_result

    assert (
        errdefs.kind_of_hresult(_crash_result(FileNotFoundError(errno.ENOENT, "x"))) is errdefs.Kind.NOT_FOUND
    )
    assert errdefs.kind_of_hresult(_crash_result(TimeoutError())) is errdefs.Kind.DEADLINE_EXCEEDED
    assert errdefs.kind_of_hresult(_crash_result(NotImplementedError())) is errdefs.Kind.NOT_IMPLEMENTED
    assert _crash_result(ValueError("a bug")) == Hresult.E_FAIL


def test_fake_guest_refuses_the_pod_cgroup_memory_update_instead_of_ignoring_it(tmp_path: Path) -> None:
    from hcsshim.guest.runtime import Host
    from hcsshim.hvsock.abi import NULL_CONTAINER_ID

    host = Host(str(tmp_path / "root"), "runc")
    request = {"ResourceType": "PodCgroupMemoryLimit", "RequestType": "Update"}
    with pytest.raises(GcsError, match="PodCgroupMemoryLimit/Update") as info:
        asyncio.run(host.modify_settings(NULL_CONTAINER_ID, request))
    assert errdefs.kind_of(info.value) is errdefs.Kind.NOT_IMPLEMENTED


def test_fake_guest_modify_oserror_carries_its_errno_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hcsshim.guest import storage
    from hcsshim.guest.runtime import Host
    from hcsshim.hvsock.abi import NULL_CONTAINER_ID

    def missing(settings: object) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/run/mounts/m0")

    monkeypatch.setattr(storage, "remove_mount", missing)
    host = Host(str(tmp_path / "root"), "runc")
    request = {"ResourceType": "MappedVirtualDisk", "RequestType": "Remove", "Settings": {"MountPath": "/m"}}
    with pytest.raises(GcsError) as info:
        asyncio.run(host.modify_settings(NULL_CONTAINER_ID, request))
    assert (
        from_exception(BridgeError("Modify", info.value.result, str(info.value), [])).code == Code.NOT_FOUND
    )


# ---- from_exception never raises -------------------------------------------------------------------


class _Hostile(Exception):
    """An exception whose attributes and text fail when read."""

    def __str__(self) -> str:
        raise RuntimeError("no text")

    @property
    def kind(self) -> errdefs.Kind:
        raise RuntimeError("no kind")

    @property
    def result(self) -> int:
        raise RuntimeError("no result")


_BASES: list[type[BaseException]] = [
    Exception,
    RuntimeError,
    ValueError,
    KeyError,
    OSError,
    TimeoutError,
    ConnectionResetError,
    FileNotFoundError,
    NotImplementedError,
    GcsError,
    HcsError,
    _Hostile,
]
_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=8),
    st.sampled_from(list(errdefs.Kind)),
    st.floats(allow_nan=True),
)


@st.composite
def _exceptions(draw: st.DrawFn, depth: int = 0) -> BaseException:
    base = draw(st.sampled_from(_BASES))
    message = draw(st.text(max_size=20))
    exc: BaseException
    if base is GcsError:
        exc = GcsError(message, draw(st.integers(min_value=-(2**40), max_value=2**40)))
    elif base is HcsError:
        exc = HcsError("Op", "vm", message)
    else:
        exc = base(message)
    if base is not _Hostile:
        for attr in draw(st.lists(st.sampled_from(["kind", "result", "code"]), max_size=3, unique=True)):
            value = draw(_ANY_VALUE)
            with contextlib.suppress(AttributeError):  # a read-only property (HcsError.kind)
                setattr(exc, attr, value)
    if depth < 3 and draw(st.booleans()):
        exc.__cause__ = draw(_exceptions(depth + 1))
    if depth < 3 and draw(st.booleans()):
        exc.__context__ = draw(_exceptions(depth + 1))
    if draw(st.booleans()):
        exc.__cause__ = exc  # a cycle
    return exc


@given(_exceptions())
@settings(max_examples=300, deadline=None)
def test_from_exception_never_raises_and_always_answers_a_valid_code(exc: BaseException) -> None:
    err = from_exception(exc)
    assert isinstance(err, TtrpcError)
    assert err.code in set(Code)
    assert err.code in set(KIND_CODES.values())
    assert isinstance(err.message, str) and err.message
    assert Code.from_int(err.to_status().code) == err.code


# ---- the packages raise their own typed errors ----------------------------------------------------

_AUDITED = ("gcs", "hcs", "uvm", "shim", "guest")


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and (
            (isinstance(n.func, ast.Name) and n.func.id == name)
            or (isinstance(n.func, ast.Attribute) and n.func.attr == name)
        )
    ]


def _sources() -> list[tuple[str, ast.AST]]:
    root = Path(hcsshim.__file__).parent
    return [
        (str(path.relative_to(root)), ast.parse(path.read_text(), str(path)))
        for pkg in _AUDITED
        for path in sorted((root / pkg).rglob("*.py"))
    ]


def test_no_bare_exception_or_runtime_error_is_raised() -> None:
    found = []
    for name, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                if isinstance(func, ast.Name) and func.id in ("Exception", "RuntimeError"):
                    found.append(f"{name}:{node.lineno}: raise {func.id}(...)")
    assert not found, "raise a typed error with a kind instead: " + "; ".join(found)


def test_every_uvm_error_names_its_kind() -> None:
    missing = [
        f"{name}:{call.lineno}"
        for name, tree in _sources()
        for call in _calls(tree, "UvmError")
        if not any(k.arg == "kind" for k in call.keywords)
    ]
    assert not missing, "UvmError without kind=: " + ", ".join(missing)
