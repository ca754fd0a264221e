"""Bridge wire format shared by the host client and the guest agent (stdlib only, sans-IO).

A frame is a 16-byte little-endian header (message type u32, total size u32 including the header,
sequence id u64) followed by a JSON body. Names, codes and JSON keys follow microsoft/hcsshim
internal/gcs/prot and internal/guest/prot so captures stay comparable with the upstream GCS.
"""

from __future__ import annotations

import enum
import errno
import json
import struct
from dataclasses import dataclass
from typing import Any

from hcsshim.hvsock.abi import NULL_CONTAINER_ID

HEADER = struct.Struct("<IIQ")
HEADER_SIZE = HEADER.size
# Upstream's host bridge refuses anything larger; the guest honours the same bound so that a
# corrupt size field can never make either side allocate without limit.
MAX_MESSAGE_SIZE = 0x10000

PROTOCOL_VERSION = 4
INFINITE_WAIT_TIMEOUT = 0xFFFFFFFF

TYPE_MASK = 0xF0000000
CATEGORY_MASK = 0x0FF00000
ID_MASK = 0x000FFF00
VERSION_MASK = 0x000000FF

COMPUTE_SYSTEM = 0x00100000
COMPUTE_SERVICE = 0x00200000


class MsgType(enum.IntEnum):
    REQUEST = 0x10000000
    RESPONSE = 0x20000000
    NOTIFY = 0x30000000


def _rpc(category: int, index: int) -> int:
    return category | (index << 8) | 1


class Rpc(enum.IntEnum):
    CREATE = _rpc(COMPUTE_SYSTEM, 1)
    START = _rpc(COMPUTE_SYSTEM, 2)
    SHUTDOWN_GRACEFUL = _rpc(COMPUTE_SYSTEM, 3)
    SHUTDOWN_FORCED = _rpc(COMPUTE_SYSTEM, 4)
    EXECUTE_PROCESS = _rpc(COMPUTE_SYSTEM, 5)
    WAIT_FOR_PROCESS = _rpc(COMPUTE_SYSTEM, 6)
    SIGNAL_PROCESS = _rpc(COMPUTE_SYSTEM, 7)
    RESIZE_CONSOLE = _rpc(COMPUTE_SYSTEM, 8)
    GET_PROPERTIES = _rpc(COMPUTE_SYSTEM, 9)
    MODIFY_SETTINGS = _rpc(COMPUTE_SYSTEM, 10)
    NEGOTIATE_PROTOCOL = _rpc(COMPUTE_SYSTEM, 11)
    DUMP_STACKS = _rpc(COMPUTE_SYSTEM, 12)
    DELETE_CONTAINER_STATE = _rpc(COMPUTE_SYSTEM, 13)
    UPDATE_CONTAINER = _rpc(COMPUTE_SYSTEM, 14)
    LIFECYCLE_NOTIFICATION = _rpc(COMPUTE_SYSTEM, 15)
    MODIFY_SERVICE_SETTINGS = _rpc(COMPUTE_SERVICE, 1)


RPC_NAMES: dict[int, str] = {
    Rpc.CREATE: "Create",
    Rpc.START: "Start",
    Rpc.SHUTDOWN_GRACEFUL: "ShutdownGraceful",
    Rpc.SHUTDOWN_FORCED: "ShutdownForced",
    Rpc.EXECUTE_PROCESS: "ExecuteProcess",
    Rpc.WAIT_FOR_PROCESS: "WaitForProcess",
    Rpc.SIGNAL_PROCESS: "SignalProcess",
    Rpc.RESIZE_CONSOLE: "ResizeConsole",
    Rpc.GET_PROPERTIES: "GetProperties",
    Rpc.MODIFY_SETTINGS: "ModifySettings",
    Rpc.NEGOTIATE_PROTOCOL: "NegotiateProtocol",
    Rpc.DUMP_STACKS: "DumpStacks",
    Rpc.DELETE_CONTAINER_STATE: "DeleteContainerState",
    Rpc.UPDATE_CONTAINER: "UpdateContainer",
    Rpc.LIFECYCLE_NOTIFICATION: "LifecycleNotification",
    Rpc.MODIFY_SERVICE_SETTINGS: "ModifyServiceSettings",
}

# Notification "rpc" part: upstream NotifyContainer = 1<<8 | 1 within ComputeSystem.
NOTIFY_CONTAINER = MsgType.NOTIFY | COMPUTE_SYSTEM | (1 << 8) | 1

# Extension (not upstream): "a container was OOM-killed". Upstream's GCS never reports per-container
# OOM kills, and upstream's host treats *every* NotifyContainer as "container terminated" and any other
# notification type as a fatal bridge error. So the OOM notification gets its own message type, far
# from upstream's ids, with the ContainerNotification body (Type = NotificationType.OOM_KILLED), and the
# guest sends it only to a host that asked for it in NegotiateProtocol (OOM_NOTIFICATIONS_REQUEST_KEY:
# true; Go's JSON decoding in an upstream guest ignores the unknown field). A guest that supports it
# says so in GuestDefinedCapabilities[OOM_NOTIFICATIONS_CAPABILITY].
NOTIFY_OOM = MsgType.NOTIFY | COMPUTE_SYSTEM | (0x100 << 8) | 1
OOM_NOTIFICATIONS_REQUEST_KEY = "HcsshimOomNotifications"
OOM_NOTIFICATIONS_CAPABILITY = "HcsshimOomNotificationsSupported"

# Extensions (not upstream; an upstream peer ignores unknown JSON fields). The create response names
# the container init's pid, which runc knows from create on (containerd expects a pid from Create).
# A cgroup v2 guest adds its container's figures in containerd's cgroups v2 Metrics shape (proto field
# names) beside upstream's v1-shaped LCOWMetrics.
INIT_PROCESS_ID_KEY = "HcsshimInitProcessId"
CGROUP_V2_METRICS_KEY = "HcsshimCgroupV2Metrics"


def request_type(rpc: int) -> int:
    return MsgType.REQUEST | rpc


def response_type(rpc: int) -> int:
    return MsgType.RESPONSE | (rpc & ~TYPE_MASK & 0xFFFFFFFF)


def rpc_of(msg_type: int) -> int:
    return msg_type & ~TYPE_MASK & 0xFFFFFFFF


def type_name(msg_type: int) -> str:
    kind = msg_type & TYPE_MASK
    if msg_type == NOTIFY_CONTAINER:
        return "Notify(Container)"
    if msg_type == NOTIFY_OOM:
        return "Notify(OomKilled)"
    labels: dict[int, str] = {
        MsgType.REQUEST: "Request",
        MsgType.RESPONSE: "Response",
        MsgType.NOTIFY: "Notify",
    }
    label = labels.get(kind)
    rpc = RPC_NAMES.get(rpc_of(msg_type), f"{rpc_of(msg_type):#x}")
    return f"{label}({rpc})" if label else f"{msg_type:#x}"


class Hresult(enum.IntEnum):
    """HRESULTs the GCS returns, as signed 32-bit values like the JSON ``Result`` field."""

    S_OK = 0
    E_NOTIMPL = -2147467263  # 0x80004001
    E_FAIL = -2147467259  # 0x80004005
    ERROR_NOT_FOUND = -2147023728  # 0x80070490
    E_INVALIDARG = -2147024809  # 0x80070057
    VMCOMPUTE_UNKNOWN_MESSAGE = -1070137077  # 0xC037010B
    VMCOMPUTE_UNSUPPORTED_PROTOCOL_VERSION = -1070137076  # 0xC037010C
    VMCOMPUTE_INVALID_JSON = -1070137075  # 0xC037010D
    VMCOMPUTE_SYSTEM_NOT_FOUND = -1070137074  # 0xC037010E
    VMCOMPUTE_SYSTEM_ALREADY_EXISTS = -1070137073  # 0xC037010F
    VMCOMPUTE_SYSTEM_ALREADY_STOPPED = -1070137072  # 0xC0370110
    VMCOMPUTE_INVALID_STATE = -2143878907  # 0x80370105
    VMCOMPUTE_TIMEOUT = -1070137079  # 0xC0370109


_ERRNO_HRESULTS = {
    errno.ENOENT: Hresult.ERROR_NOT_FOUND,
    errno.ENODEV: Hresult.ERROR_NOT_FOUND,
    errno.ENXIO: Hresult.ERROR_NOT_FOUND,
    errno.ESRCH: Hresult.ERROR_NOT_FOUND,
    errno.EEXIST: Hresult.VMCOMPUTE_SYSTEM_ALREADY_EXISTS,
    errno.EINVAL: Hresult.E_INVALIDARG,
    errno.ENAMETOOLONG: Hresult.E_INVALIDARG,
    errno.EBUSY: Hresult.VMCOMPUTE_INVALID_STATE,
    errno.ENOTEMPTY: Hresult.VMCOMPUTE_INVALID_STATE,
    errno.ETIMEDOUT: Hresult.VMCOMPUTE_TIMEOUT,
    errno.ENOSYS: Hresult.E_NOTIMPL,
    errno.EOPNOTSUPP: Hresult.E_NOTIMPL,
}


def hresult_of_errno(err: int | None) -> Hresult:
    """The HRESULT a guest failure with this errno answers with, so the host sees its kind
    (a missing file is NotFound, a busy mount FailedPrecondition); E_FAIL when there is none."""
    return _ERRNO_HRESULTS.get(err or 0, Hresult.E_FAIL)


class ProtocolError(Exception):
    """The byte stream lost framing (a size field out of range); the peer sent garbage.

    Carries the offending header's type and id so the receiver can still answer it.
    """

    def __init__(self, message: str, msg_type: int = 0, msg_id: int = 0) -> None:
        super().__init__(message)
        self.msg_type = msg_type
        self.msg_id = msg_id


class GcsError(Exception):
    """An operation failed; carries the HRESULT that goes on the wire."""

    def __init__(self, message: str, result: int = Hresult.E_FAIL) -> None:
        super().__init__(message)
        self.result = int(result)


@dataclass(frozen=True, slots=True)
class Message:
    type: int
    id: int
    body: bytes

    @property
    def kind(self) -> int:
        return self.type & TYPE_MASK

    def json(self) -> dict[str, Any]:
        return decode_body(self.body)


def encode(msg_type: int, msg_id: int, body: dict[str, Any] | bytes) -> bytes:
    payload = body if isinstance(body, bytes) else dumps(body)
    size = HEADER_SIZE + len(payload)
    if size > MAX_MESSAGE_SIZE:
        raise GcsError(f"bridge message of {size} bytes exceeds {MAX_MESSAGE_SIZE}", Hresult.E_INVALIDARG)
    return HEADER.pack(msg_type & 0xFFFFFFFF, size, msg_id & 0xFFFFFFFFFFFFFFFF) + payload


def dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise GcsError(f"invalid JSON in bridge message: {e}", Hresult.VMCOMPUTE_INVALID_JSON) from e
    if not isinstance(value, dict):
        raise GcsError("bridge message body is not a JSON object", Hresult.VMCOMPUTE_INVALID_JSON)
    return value


class Decoder:
    """Incremental frame decoder: feed bytes, iterate complete messages.

    A frame whose size field is out of range raises ProtocolError: the stream has lost framing and
    cannot be resynchronised, so the caller should drop the connection (upstream does the same).
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_size
        self._broken: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Message]:
        if self._broken is not None:
            raise self._broken
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= HEADER_SIZE:
            msg_type, size, msg_id = HEADER.unpack_from(self._buf)
            if size < HEADER_SIZE or size > self._max:
                self._broken = ProtocolError(f"invalid bridge message size {size}", msg_type, msg_id)
                raise self._broken
            if len(self._buf) < size:
                break
            out.append(Message(msg_type, msg_id, bytes(self._buf[HEADER_SIZE:size])))
            del self._buf[:size]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


# ---- bodies -----------------------------------------------------------------------------------


def request_base(container_id: str = NULL_CONTAINER_ID, activity_id: str = "") -> dict[str, Any]:
    return {"ContainerId": container_id, "ActivityId": activity_id or NULL_CONTAINER_ID}


def response_base(activity_id: str = "") -> dict[str, Any]:
    base: dict[str, Any] = {"Result": 0}
    if activity_id:
        base["ActivityId"] = activity_id
    return base


def error_response(err: BaseException, activity_id: str = "", module: str = "gcs") -> dict[str, Any]:
    result = err.result if isinstance(err, GcsError) else int(Hresult.E_FAIL)
    message = str(err) or type(err).__name__
    body = response_base(activity_id)
    body["Result"] = result
    body["ErrorMessage"] = message
    body["ErrorRecords"] = [
        {
            "Result": result,
            "Message": message,
            "ModuleName": module,
            "FileName": "",
            "Line": 0,
        }
    ]
    return body


def any_in_string(value: Any) -> str:
    """Upstream's AnyInString: a JSON document carried as a JSON string field."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def parse_any_in_string(value: Any, what: str) -> Any:
    if isinstance(value, str):
        if not value:
            return None
        try:
            return json.loads(value)
        except ValueError as e:
            raise GcsError(f"invalid JSON in {what}: {e}", Hresult.VMCOMPUTE_INVALID_JSON) from e
    return value


def capabilities() -> dict[str, Any]:
    """What our guest advertises (mirrors the Linux GCS: no host create/start messages)."""
    return {
        "SendHostCreateMessage": False,
        "SendHostStartMessage": False,
        "HvSocketConfigOnStartup": False,
        "SendLifecycleNotifications": False,
        "ModifyServiceSettingsSupported": False,
        "SupportedSchemaVersions": [{"Major": 2, "Minor": 1}],
        "RuntimeOsType": "Linux",
        "GuestDefinedCapabilities": {
            "NamespaceAddRequestSupported": True,
            "SignalProcessSupported": True,
            "DumpStacksSupported": True,
            "DeleteContainerStateSupported": True,
            OOM_NOTIFICATIONS_CAPABILITY: True,
        },
    }


class NotificationType(enum.StrEnum):
    NONE = "None"
    GRACEFUL_EXIT = "GracefulExit"
    FORCED_EXIT = "ForcedExit"
    UNEXPECTED_EXIT = "UnexpectedExit"
    REBOOT = "Reboot"
    CONSTRUCTED = "Constructed"
    STARTED = "Started"
    PAUSED = "Paused"
    UNKNOWN = "Unknown"
    # Extension, only ever sent as NOTIFY_OOM (see there); the container keeps running or exits as usual.
    OOM_KILLED = "OomKilled"


def container_notification(
    container_id: str, kind: str, activity_id: str = "", result: int = 0
) -> dict[str, Any]:
    body = request_base(container_id, activity_id)
    body.update({"Type": kind, "Operation": "None", "Result": result})
    return body


def oom_notification(container_id: str, kills: int = 1) -> dict[str, Any]:
    """Body of a NOTIFY_OOM message: a ContainerNotification whose ResultInfo is the number of new kills."""
    body = container_notification(container_id, NotificationType.OOM_KILLED)
    body["ResultInfo"] = any_in_string({"OomKills": kills})
    return body
