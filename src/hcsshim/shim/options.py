"""What containerd hands the shim on ``start``'s stdin, and how to answer it.

Two encodings reach a shim (reference containerd-shim.md §2.6, §5.4):

- legacy (containerd 1.6 to 2.2, and 2.3 for binaries named ``*shim-runhcs-v1*``): a bare
  ``google.protobuf.Any`` of the runtime options, or nothing;
- bootstrap (containerd 2.3+): a ``BootstrapParams`` whose extensions carry the options ``Any``.

An ``Any`` also parses as ``BootstrapParams`` (type_url lands in instance_id, value in namespace), so the
only safe test is the one Go's ``pkg/shim`` uses: it is bootstrap only when it parses *and* its
instance_id and namespace equal the ``-id`` and ``-namespace`` flags. The answer must match: a protobuf
``BootstrapResult`` (no trailing newline) for bootstrap, the plain address otherwise, because a 1.6 daemon
dials whatever text it gets.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import any_pb2, json_format
from google.protobuf.message import DecodeError

from hcsshim import errdefs
from hcsshim.api.containerd.bootstrap.v1 import bootstrap_pb2
from hcsshim.api.runhcs.options import runhcs_pb2
from hcsshim.shim import foreign_types

OPTIONS_TYPE = runhcs_pb2.Options.DESCRIPTOR.full_name
# Task API version we answer with. 3 would make containerd 2.x route pod containers to our socket
# without running ``start`` and expect the sandbox semantics of the shim sandboxer; 2 keeps the
# runhcs-v1 model (``start`` per task, joining the pod's shim), which every daemon understands.
TASK_API_VERSION = 2
# containerd-shim-lcow-v2 (shim.manager_v2): the Sandbox API beside Task v3.
SANDBOX_TASK_API_VERSION = 3
PROTOCOL = "ttrpc"


class OptionsError(ValueError):
    kind = errdefs.Kind.INVALID_ARGUMENT
    pass


@dataclass
class StartInput:
    """The decoded stdin of ``start`` (and, passed through, of ``serve``)."""

    bootstrap: bootstrap_pb2.BootstrapParams | None
    options: runhcs_pb2.Options | None
    # The options Any as received (also for unknown types, which are tolerated and ignored).
    options_any: any_pb2.Any | None

    @property
    def is_bootstrap(self) -> bool:
        return self.bootstrap is not None


def type_matches(type_url: str, full_name: str) -> bool:
    """``MessageIs``: the bare name, or anything ending in ``/<full name>``."""
    return type_url == full_name or type_url.endswith("/" + full_name)


def unpack_options(value: any_pb2.Any | None) -> runhcs_pb2.Options | None:
    if value is None or not type_matches(value.type_url, OPTIONS_TYPE):
        return None
    options = runhcs_pb2.Options()
    try:
        options.ParseFromString(value.value)
    except DecodeError as exc:
        raise OptionsError(f"runtime options {value.type_url}: {exc}") from exc
    return options


def unpack_any_options(value: any_pb2.Any | None) -> runhcs_pb2.Options | None:
    """runhcs Options from an options Any: the message itself, or containerd's
    ``runtimeoptions.v1.Options`` (what CRI sends a runtime type it has no options type for, such as
    ``io.containerd.lcow.v2``) whose ``ConfigPath`` names a file, or whose ``ConfigBody`` is, runhcs
    Options as protobuf JSON (``{"defaultContainerAnnotations": {...}, "sandboxPlatform": ...}``).
    Any other type: None (tolerated and ignored)."""
    if value is None:
        return None
    if type_matches(value.type_url, OPTIONS_TYPE):
        return unpack_options(value)
    if not type_matches(value.type_url, foreign_types.RUNTIME_OPTIONS):
        return None
    try:
        _, path, body = foreign_types.runtime_options(value.value)
    except ValueError as exc:
        raise OptionsError(f"runtime options: {exc}") from exc
    where = "ConfigBody"
    if not body and path:
        where = path
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError as exc:
            raise OptionsError(f"runtime options ConfigPath {path}: {exc.strerror or exc}") from exc
    if not body:
        return None
    options = runhcs_pb2.Options()
    try:
        json_format.Parse(body, options)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise OptionsError(f"runtime options {where}: not {OPTIONS_TYPE} as JSON: {exc}") from exc
    return options


def parse_bootstrap(data: bytes, shim_id: str, namespace: str) -> bootstrap_pb2.BootstrapParams | None:
    if not data:
        return None
    params = bootstrap_pb2.BootstrapParams()
    try:
        params.ParseFromString(data)
    except DecodeError:
        return None
    if not params.instance_id or params.instance_id != shim_id or params.namespace != namespace:
        return None
    return params


def decode_start_input(data: bytes, shim_id: str, namespace: str) -> StartInput:
    params = parse_bootstrap(data, shim_id, namespace)
    if params is not None:
        for ext in params.extensions:
            if ext.HasField("value") and type_matches(ext.value.type_url, OPTIONS_TYPE):
                return StartInput(params, unpack_options(ext.value), ext.value)
        for ext in params.extensions:
            if ext.HasField("value") and type_matches(ext.value.type_url, foreign_types.RUNTIME_OPTIONS):
                return StartInput(params, unpack_any_options(ext.value), ext.value)
        first = params.extensions[0].value if params.extensions else None
        return StartInput(params, None, first)
    if not data:
        return StartInput(None, None, None)
    value = any_pb2.Any()
    try:
        value.ParseFromString(data)
    except DecodeError as exc:
        raise OptionsError(f"stdin is neither BootstrapParams nor a runtime options Any: {exc}") from exc
    return StartInput(None, unpack_any_options(value), value)


def options_from_any(value: any_pb2.Any | None) -> runhcs_pb2.Options | None:
    """Options from ``CreateTaskRequest.options`` (the same Any containerd put on stdin)."""
    if value is None or not value.type_url:
        return None
    return unpack_options(value)


def start_answer(start: StartInput, address: str) -> bytes:
    if start.is_bootstrap:
        result = bootstrap_pb2.BootstrapResult(version=TASK_API_VERSION, address=address, protocol=PROTOCOL)
        return result.SerializeToString()
    return address.encode()


def log_level(start: StartInput, debug_flag: bool) -> str:
    """logrus-style level name: the options' log_level wins, then debug, then the bootstrap level."""
    if start.options is not None and start.options.log_level:
        return start.options.log_level.lower()
    if debug_flag or (start.options is not None and start.options.debug):
        return "debug"
    if start.bootstrap is not None:
        level = int(start.bootstrap.log_level)
        if level <= bootstrap_pb2.LOG_LEVEL_TRACE:
            return "trace"
        if level <= bootstrap_pb2.LOG_LEVEL_DEBUG:
            return "debug"
        if level >= bootstrap_pb2.LOG_LEVEL_ERROR:
            return "error"
        if level >= bootstrap_pb2.LOG_LEVEL_WARN:
            return "warning"
    return "info"
