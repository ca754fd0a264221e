"""The wire format of UVM templating, shared by the host and the guest agent (stdlib only).

A template VM is told over the bridge to get ready to be saved (a ModifySettings request of
resource type TEMPLATE_RESOURCE_TYPE). It answers, and once its host hangs up it opens a fresh mux
session, listens on RESUME_PORT and prints the ready marker on its console: the host saves it then.
A clone restored from the saved state is reached by its own host, which dials RESUME_PORT and
sends the clone's identity; the agent applies it before it dials the bridge, so nothing of the
template (random state, clock, names) is used by the clone's containers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from hcsshim.hvsock.abi import RESUME_PORT

__all__ = ["RESUME_PORT", "CloneProtocolError", "Identity"]

TEMPLATE_RESOURCE_TYPE = "hcsshim.VmTemplate"
PREPARE_REQUEST = "Prepare"
READY_MARKER = "HCSSHIM-TEMPLATE-READY"
MAX_IDENTITY_BYTES = 64 * 1024
SEED_BYTES = 64

_NONCE = re.compile(r"[0-9a-f]{8,64}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,62})")
_MACHINE_ID = re.compile(r"[0-9a-f]{32}")


class CloneProtocolError(ValueError):
    pass


def prepare_request(nonce: str) -> dict[str, Any]:
    if not _NONCE.fullmatch(nonce):
        raise CloneProtocolError(f"template nonce {nonce!r} is not 8-64 lowercase hex digits")
    return {
        "ResourceType": TEMPLATE_RESOURCE_TYPE,
        "RequestType": PREPARE_REQUEST,
        "Settings": {"Nonce": nonce},
    }


def parse_prepare(request: dict[str, Any]) -> str:
    """The nonce of a prepare request; raises CloneProtocolError naming what is wrong."""
    if request.get("RequestType") != PREPARE_REQUEST:
        raise CloneProtocolError(
            f"{TEMPLATE_RESOURCE_TYPE}: RequestType {request.get('RequestType')!r} is not supported "
            f"(only {PREPARE_REQUEST!r})"
        )
    settings = request.get("Settings")
    nonce = settings.get("Nonce") if isinstance(settings, dict) else None
    if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
        raise CloneProtocolError(f"{TEMPLATE_RESOURCE_TYPE}: Settings.Nonce {nonce!r} is not 8-64 hex digits")
    return nonce


def ready_line(nonce: str) -> str:
    return f"{READY_MARKER} {nonce}"


@dataclass(frozen=True)
class Identity:
    """What makes a clone itself. `seed` is mixed into the guest kernel's pool, which is then
    reseeded; `realtime_ns` sets CLOCK_REALTIME (a restored guest's wall clock is the template's)."""

    seed: bytes
    realtime_ns: int
    hostname: str
    machine_id: str

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_BYTES:
            raise CloneProtocolError(f"identity seed must be {SEED_BYTES} bytes, not {len(self.seed)}")
        if self.realtime_ns <= 0:
            raise CloneProtocolError(f"identity realtime_ns {self.realtime_ns} must be positive")
        if not _HOSTNAME.fullmatch(self.hostname):
            raise CloneProtocolError(f"identity hostname {self.hostname!r} is not a valid host name")
        if not _MACHINE_ID.fullmatch(self.machine_id):
            raise CloneProtocolError(
                f"identity machine_id {self.machine_id!r} is not 32 lowercase hex digits"
            )


def encode_identity(identity: Identity) -> bytes:
    body = {
        "seed": identity.seed.hex(),
        "realtime_ns": identity.realtime_ns,
        "hostname": identity.hostname,
        "machine_id": identity.machine_id,
    }
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode_identity(data: bytes) -> Identity:
    """The inverse of encode_identity; any other input raises CloneProtocolError."""
    if len(data) > MAX_IDENTITY_BYTES:
        raise CloneProtocolError(f"identity message of {len(data)} bytes is over {MAX_IDENTITY_BYTES}")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CloneProtocolError(f"identity message is not JSON: {e}") from e
    if not isinstance(body, dict) or set(body) != {"seed", "realtime_ns", "hostname", "machine_id"}:
        raise CloneProtocolError(
            "identity message must be an object with seed, realtime_ns, hostname, machine_id"
        )
    seed, when, host, mid = body["seed"], body["realtime_ns"], body["hostname"], body["machine_id"]
    if not isinstance(seed, str) or not isinstance(host, str) or not isinstance(mid, str):
        raise CloneProtocolError("identity seed, hostname and machine_id must be strings")
    if not isinstance(when, int) or isinstance(when, bool):
        raise CloneProtocolError("identity realtime_ns must be an integer")
    try:
        raw = bytes.fromhex(seed)
    except ValueError as e:
        raise CloneProtocolError(f"identity seed is not hex: {e}") from e
    return Identity(raw, when, host, mid)


def encode_ack(error: str = "") -> bytes:
    return json.dumps({"error": error}).encode() + b"\n"


def decode_ack(data: bytes) -> str:
    """The guest's error applying the identity, or "" when it applied it."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CloneProtocolError(f"identity answer is not JSON: {e}") from e
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        raise CloneProtocolError(f"identity answer {body!r} has no error string")
    return str(body["error"])
