"""Event publisher: forwards task events to containerd over its ttrpc address.

Every event goes through one ordered queue and one sender task, so containerd sees them in the order the
shim published them (TaskStart before TaskExit, TaskExecAdded before TaskExecStarted, ...). The envelope is
``containerd.services.events.ttrpc.v1.Events/Forward`` with a non-zero timestamp taken at publish time,
the namespace, the topic and an ``Any`` whose type URL is the bare full proto name (containerd 1.6 cannot
decode ``type.googleapis.com/...``).

Failures are handled like the Go publisher (5 s per Forward, reconnect when the connection is gone, a few
attempts with a growing back-off), with one difference: the failing event is retried in place instead of
being re-queued behind later events, because re-queuing could deliver TaskExit before TaskStart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import Message

from hcsshim.api.containerd.events import task_pb2 as events_pb2
from hcsshim.api.containerd.services.ttrpc.events.v1 import events_pb2 as forward_pb2
from hcsshim.ttrpc import Client, Code, TtrpcError
from hcsshim.ttrpc.server import NAMESPACE_KEY

log = logging.getLogger("hcsshim.shim.publisher")

EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
FORWARD_TIMEOUT = 5.0
QUEUE_SIZE = 2048
MAX_ATTEMPTS = 5
UNKNOWN_TOPIC = "/tasks/?"

_TOPICS: dict[str, str] = {
    events_pb2.TaskCreate.DESCRIPTOR.full_name: "/tasks/create",
    events_pb2.TaskStart.DESCRIPTOR.full_name: "/tasks/start",
    events_pb2.TaskDelete.DESCRIPTOR.full_name: "/tasks/delete",
    events_pb2.TaskExit.DESCRIPTOR.full_name: "/tasks/exit",
    events_pb2.TaskOOM.DESCRIPTOR.full_name: "/tasks/oom",
    events_pb2.TaskExecAdded.DESCRIPTOR.full_name: "/tasks/exec-added",
    events_pb2.TaskExecStarted.DESCRIPTOR.full_name: "/tasks/exec-started",
    events_pb2.TaskPaused.DESCRIPTOR.full_name: "/tasks/paused",
    events_pb2.TaskResumed.DESCRIPTOR.full_name: "/tasks/resumed",
    events_pb2.TaskCheckpointed.DESCRIPTOR.full_name: "/tasks/checkpointed",
}

# Worth another attempt: the connection or containerd may come back. Anything else (InvalidArgument from
# envelope validation, say) would fail the same way again.
_RETRYABLE = frozenset({Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.CANCELLED, Code.UNKNOWN})


def topic_for(event: Message) -> str:
    """containerd's topic for a task event (``/tasks/?`` for anything else, as containerd does)."""
    return _TOPICS.get(event.DESCRIPTOR.full_name, UNKNOWN_TOPIC)


def pack_any(message: Message) -> any_pb2.Any:
    """An Any with the bare full name as type URL (the typeurl convention containerd uses)."""
    return any_pb2.Any(type_url=message.DESCRIPTOR.full_name, value=message.SerializeToString())


def make_envelope(namespace: str, topic: str, event: Message) -> forward_pb2.Envelope:
    timestamp = timestamp_pb2.Timestamp()
    timestamp.GetCurrentTime()
    return forward_pb2.Envelope(timestamp=timestamp, namespace=namespace, topic=topic, event=pack_any(event))


@dataclass
class _Item:
    envelope: forward_pb2.Envelope


class Publisher:
    """``publish`` never blocks; ``flush`` waits until everything queued so far was sent or dropped."""

    def __init__(
        self,
        ttrpc_address: str,
        namespace: str,
        *,
        timeout: float = FORWARD_TIMEOUT,
        max_attempts: int = MAX_ATTEMPTS,
        backoff: float = 1.0,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.address = ttrpc_address
        self.namespace = namespace
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.sent = 0
        self.dropped = 0
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self._client: Client | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    def publish(self, topic: str, event: Message, *, namespace: str | None = None) -> None:
        """Queue ``event`` under ``topic``; must be called from the event loop's thread."""
        ns = namespace or self.namespace
        if self._closed:
            self.dropped += 1
            log.warning("event=publish_after_close topic=%s type=%s", topic, event.DESCRIPTOR.full_name)
            return
        item = _Item(make_envelope(ns, topic, event))
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("event=queue_full topic=%s type=%s dropped=%d", topic, event.DESCRIPTOR.full_name, 1)
            return
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="event-publisher")

    async def flush(self) -> None:
        await self._queue.join()

    async def close(self, timeout: float | None = 10.0) -> None:
        """Send what is queued (up to ``timeout`` seconds), then stop and disconnect."""
        self._closed = True
        if self._worker is not None and not self._worker.done():
            try:
                async with asyncio.timeout(timeout):
                    await self.flush()
            except TimeoutError:
                log.warning("event=close_timeout pending=%d", self._queue.qsize())
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
            self.dropped += 1
        await self._disconnect()

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._send(item)
            finally:
                self._queue.task_done()

    async def _send(self, item: _Item) -> None:
        env = item.envelope
        request = forward_pb2.ForwardRequest(envelope=env)
        for attempt in range(1, self.max_attempts + 1):
            try:
                if self._client is None or self._client.closed:
                    self._client = await Client.connect(self.address, timeout=self.timeout)
                await self._client.call(
                    EVENTS_SERVICE,
                    "Forward",
                    request,
                    empty_pb2.Empty,
                    timeout=self.timeout,
                    metadata={NAMESPACE_KEY: env.namespace},
                )
                self.sent += 1
                log.debug("event=forwarded topic=%s type=%s", env.topic, env.event.type_url)
                return
            except TtrpcError as exc:
                error: str = str(exc)
                retry = exc.code in _RETRYABLE
                if exc.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                    await self._disconnect()
            except (OSError, TimeoutError) as exc:
                error = f"connect {self.address}: {exc}"
                retry = True
                await self._disconnect()
            if not retry or attempt == self.max_attempts:
                break
            log.info("event=forward_retry topic=%s attempt=%d error=%r", env.topic, attempt, error)
            await asyncio.sleep(self.backoff * attempt)
        self.dropped += 1
        log.error(
            "event=forward_failed topic=%s type=%s namespace=%s error=%r",
            env.topic,
            env.event.type_url,
            env.namespace,
            error,
        )
