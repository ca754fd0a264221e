"""Our ttrpc client against a real containerd 1.6: forwarded events show up in `ctr events`."""

from __future__ import annotations

import asyncio
import queue
import subprocess
import threading
import time

import pytest
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from hcsshim.api.containerd.events import task_pb2 as events_pb2
from hcsshim.api.containerd.services.ttrpc.events.v1 import events_pb2 as forward_pb2
from hcsshim.shim.publisher import EVENTS_SERVICE, Publisher, make_envelope, topic_for
from hcsshim.ttrpc import NAMESPACE_KEY, Client, Code, TtrpcError
from tests.support.containerd import Containerd

pytestmark = [pytest.mark.e2e, pytest.mark.root]


class _Lines:
    """Reads a subprocess's stdout on a thread so the test can wait for a line with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, *needles: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if all(n in line for n in needles):
                return line
        raise AssertionError(f"no line with {needles} within {timeout}s; saw: {self.seen}")


async def _forward(containerd: Containerd, event: Message) -> None:
    async with await Client.connect(containerd.ttrpc_address, timeout=5) as client:
        envelope = make_envelope(containerd.namespace, topic_for(event), event)
        await client.call(
            EVENTS_SERVICE,
            "Forward",
            forward_pb2.ForwardRequest(envelope=envelope),
            empty_pb2.Empty,
            timeout=5,
            metadata={NAMESPACE_KEY: containerd.namespace},
        )


def _events(containerd: Containerd) -> tuple[subprocess.Popen[str], _Lines]:
    """Start `ctr events` and return once it demonstrably receives events (subscribing is asynchronous)."""
    proc = containerd.ctr_popen("events")
    lines = _Lines(proc)
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, f"ctr events exited: {lines.seen}"
        probe = f"probe-{time.monotonic_ns()}"
        asyncio.run(_forward(containerd, events_pb2.TaskOOM(container_id=probe)))
        try:
            lines.wait_for(probe, timeout=0.5)
            return proc, lines
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def test_ttrpc_client_forwards_task_exit_seen_by_ctr_events(containerd: Containerd) -> None:
    proc, lines = _events(containerd)
    try:
        event = events_pb2.TaskExit(container_id="e2e-ttrpc-c1", id="e2e-ttrpc-c1", pid=4242, exit_status=7)
        event.exited_at.GetCurrentTime()

        asyncio.run(_forward(containerd, event))
        line = lines.wait_for("/tasks/exit", "e2e-ttrpc-c1")
        assert containerd.namespace in line
        assert "4242" in line
    finally:
        _stop(proc)


def test_containerd_rejects_invalid_envelope_with_invalid_argument(containerd: Containerd) -> None:
    async def forward() -> None:
        async with await Client.connect("unix://" + containerd.ttrpc_address, timeout=5) as client:
            envelope = make_envelope(containerd.namespace, "no-leading-slash", events_pb2.TaskOOM())
            await client.call(
                EVENTS_SERVICE,
                "Forward",
                forward_pb2.ForwardRequest(envelope=envelope),
                empty_pb2.Empty,
                timeout=5,
            )

    with pytest.raises(TtrpcError) as info:
        asyncio.run(forward())
    assert info.value.code == Code.INVALID_ARGUMENT


def test_publisher_delivers_events_in_order_to_containerd(containerd: Containerd) -> None:
    proc, lines = _events(containerd)
    try:
        cid = "e2e-pub-c1"

        async def publish() -> Publisher:
            pub = Publisher(containerd.ttrpc_address, containerd.namespace)
            pub.publish("/tasks/start", events_pb2.TaskStart(container_id=cid, pid=11))
            exit_event = events_pb2.TaskExit(container_id=cid, id=cid, pid=11, exit_status=3)
            pub.publish(topic_for(exit_event), exit_event)
            pub.publish("/tasks/delete", events_pb2.TaskDelete(container_id=cid, pid=11, exit_status=3))
            await pub.flush()
            await pub.close()
            return pub

        pub = asyncio.run(publish())
        assert (pub.sent, pub.dropped) == (3, 0)
        lines.wait_for("/tasks/start", cid)
        lines.wait_for("/tasks/exit", cid)
        lines.wait_for("/tasks/delete", cid)
    finally:
        _stop(proc)
