"""The host side of one guest agent: its mux session, its log channel, the negotiated bridge, and its
notifications as typed events.

UtilityVM (over the VM's HvSocket stand-in) and the no-VM local host (over a unix socket to an agent
on this machine) both hold one. The order matters and is kept here: listen on the log and bridge
ports before the guest can dial (upstream's PrepareConnection before Start), then accept the bridge
and negotiate; from then on a container exit or OOM kill the guest reports reaches the subscribers
as a ContainerExit or an OomKill, in order with the responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hcsshim.hvsock.abi import BRIDGE_PORT, LOG_PORT
from hcsshim.hvsock.session import Listener, MuxSession

from .bridge import BridgeClient, Notification, NotifyCallback
from .protocol import GcsError, NotificationType, parse_any_in_string

log = logging.getLogger("hcsshim.gcs.connection")

GUEST_LOG_LINES = 500


_GUEST_LEVELS = {"warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}


def guest_line_level(text: str) -> int:
    """The level a guest log line is relayed at: its own when it is a warning or worse (a stall, a
    slow callback, a failed mount belong in the shim's log), debug otherwise."""
    if text.startswith("{") and '"level"' in text:
        with contextlib.suppress(ValueError, AttributeError):
            return _GUEST_LEVELS.get(json.loads(text).get("level", ""), logging.DEBUG)
    return logging.DEBUG


@dataclass(frozen=True, slots=True)
class ContainerExit:
    """The guest says a container's init ended (``Type``: UnexpectedExit, GracefulExit, ForcedExit...)."""

    container_id: str
    type: str
    result: int


@dataclass(frozen=True, slots=True)
class OomKill:
    """The guest's OOM killer killed processes of a container (``kills`` new kills since the last)."""

    container_id: str
    kills: int


ExitCallback = Callable[[ContainerExit], None]
OomCallback = Callable[[OomKill], None]


def parse_notification(body: Notification) -> ContainerExit | OomKill | None:
    """The typed event of a ContainerNotification body; None for one that names no container."""
    cid = str(body.get("ContainerId") or "")
    if not cid:
        return None
    kind = str(body.get("Type") or "")
    if kind == NotificationType.OOM_KILLED:
        try:
            info = parse_any_in_string(body.get("ResultInfo"), "ResultInfo")
        except GcsError:
            info = None
        kills = _int(info.get("OomKills")) if isinstance(info, dict) else 0
        return OomKill(cid, max(kills, 1))
    return ContainerExit(cid, kind or NotificationType.UNEXPECTED_EXIT, _int(body.get("Result")))


def _int(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return 0


def dispatcher(on_exit: ExitCallback | None, on_oom: OomCallback | None) -> NotifyCallback:
    """A bridge notify callback that hands typed events to `on_exit` / `on_oom`."""

    def notify(body: Notification) -> None:
        event = parse_notification(body)
        if isinstance(event, OomKill) and on_oom is not None:
            on_oom(event)
        elif isinstance(event, ContainerExit) and on_exit is not None:
            on_exit(event)

    return notify


class GuestConnection:
    """One guest agent, reached over `session`."""

    def __init__(self, session: MuxSession, name: str) -> None:
        self.session = session
        self.name = name
        self.client: BridgeClient | None = None
        self.guest_log: list[str] = []
        self._bridge_listener: Listener | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._on_exit: ExitCallback | None = None
        self._on_oom: OomCallback | None = None

    async def listen(self, *, guest_log: bool = True) -> None:
        """Listen on the bridge port (and the agent's log port) before the guest can dial."""
        if guest_log:
            listener = await self.session.listen(LOG_PORT)
            self._log_task = asyncio.create_task(self._drain_log(listener), name=f"guest log {self.name}")
        self._bridge_listener = await self.session.listen(BRIDGE_PORT)

    async def connect(
        self, timeout: float, *, before: Callable[[], Awaitable[None]] | None = None
    ) -> BridgeClient:
        """Run `before` (a clone's identity exchange), accept the guest's bridge dial and negotiate."""
        listener = self._bridge_listener
        if listener is None:
            await self.listen(guest_log=False)
            listener = self._bridge_listener
        try:
            if before is not None:
                await before()
            client = await BridgeClient.connect(
                self.session, timeout=timeout, listener=listener, notify=self._notify
            )
        finally:
            self.close_listener()
        self.client = client
        return client

    def close_listener(self) -> None:
        if self._bridge_listener is not None:
            self._bridge_listener.close()
            self._bridge_listener = None

    def subscribe(self, *, on_exit: ExitCallback | None = None, on_oom: OomCallback | None = None) -> None:
        """Where the guest's container exits and OOM kills go (replacing earlier subscribers)."""
        self._on_exit = on_exit
        self._on_oom = on_oom

    def _notify(self, body: Notification) -> None:
        dispatcher(self._on_exit, self._on_oom)(body)

    @property
    def oom_notifications(self) -> bool:
        """Whether the guest said, when negotiating, that it reports OOM kills."""
        return self.client is not None and self.client.oom_notifications

    async def fail(self, reason: str) -> None:
        """The guest is gone (the VM died): pending and future calls fail with `reason`."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.fail(reason)

    def stop_log(self) -> None:
        if self._log_task is not None:
            self._log_task.cancel()

    async def close(self, reason: str) -> None:
        """Close the bridge and the session (idempotent)."""
        self.close_listener()
        self.stop_log()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        with contextlib.suppress(Exception):
            await self.session.aclose(reason)

    async def _drain_log(self, listener: Listener) -> None:
        with contextlib.suppress(Exception):
            ch = await listener.accept()
            buf = b""
            while chunk := await ch.read():
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace")
                    self.guest_log.append(text)
                    del self.guest_log[:-GUEST_LOG_LINES]
                    log.log(guest_line_level(text), "guest", extra={"id": self.name, "line": text})
