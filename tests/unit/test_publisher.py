"""The event publisher against a fake containerd events service (our own ttrpc server)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from google.protobuf import empty_pb2

from hcsshim.api.containerd.events import task_pb2 as events_pb2
from hcsshim.api.containerd.services.ttrpc.events.v1 import events_pb2 as forward_pb2
from hcsshim.shim.publisher import EVENTS_SERVICE, Publisher, topic_for
from hcsshim.ttrpc import Code, Context, Server, TtrpcError

T = TypeVar("T")


class FakeContainerd:
    def __init__(self, fail_first: int = 0, fail_code: Code = Code.UNAVAILABLE) -> None:
        self.received: list[tuple[str | None, forward_pb2.Envelope]] = []
        self.fail_first = fail_first
        self.fail_code = fail_code
        self.server = Server()
        self.server.register(EVENTS_SERVICE, {"Forward": (forward_pb2.ForwardRequest, self.forward)})

    async def forward(self, ctx: Context, req: forward_pb2.ForwardRequest) -> empty_pb2.Empty:
        if self.fail_first > 0:
            self.fail_first -= 1
            raise TtrpcError(self.fail_code, "not now")
        self.received.append((ctx.namespace, req.envelope))
        return empty_pb2.Empty()


def run(fn: Callable[[str], Awaitable[T]]) -> T:
    async def wrapper() -> T:
        with tempfile.TemporaryDirectory(prefix="pub-", dir="/tmp") as d:
            async with asyncio.timeout(30):
                return await fn(os.path.join(d, "c.sock.ttrpc"))

    return asyncio.run(wrapper())


def test_topics_follow_containerd_runtime_events() -> None:
    assert topic_for(events_pb2.TaskCreate()) == "/tasks/create"
    assert topic_for(events_pb2.TaskStart()) == "/tasks/start"
    assert topic_for(events_pb2.TaskExit()) == "/tasks/exit"
    assert topic_for(events_pb2.TaskDelete()) == "/tasks/delete"
    assert topic_for(events_pb2.TaskExecAdded()) == "/tasks/exec-added"
    assert topic_for(events_pb2.TaskExecStarted()) == "/tasks/exec-started"
    assert topic_for(events_pb2.TaskOOM()) == "/tasks/oom"
    assert topic_for(events_pb2.TaskPaused()) == "/tasks/paused"
    assert topic_for(events_pb2.TaskResumed()) == "/tasks/resumed"
    assert topic_for(events_pb2.TaskCheckpointed()) == "/tasks/checkpointed"
    assert topic_for(events_pb2.TaskIO()) == "/tasks/?"


def test_events_arrive_in_order_with_envelope_fields_with_fake_containerd() -> None:
    async def main(path: str) -> FakeContainerd:
        fake = FakeContainerd()
        await fake.server.start(path)
        pub = Publisher(path, "k8s.io")
        before = time.time()
        t0 = time.perf_counter()
        for i in range(50):
            pub.publish("/tasks/exit", events_pb2.TaskExit(container_id="c", id=str(i), pid=i))
        assert time.perf_counter() - t0 < 0.5  # publish only enqueues
        await pub.flush()
        await pub.close()
        await fake.server.close()
        assert (pub.sent, pub.dropped) == (50, 0)
        for ns, env in fake.received:
            assert ns == "k8s.io"
            assert env.timestamp.seconds >= int(before)
        return fake

    fake = run(main)
    ids = [events_pb2.TaskExit.FromString(env.event.value).id for _, env in fake.received]
    assert ids == [str(i) for i in range(50)]
    env = fake.received[0][1]
    assert (env.namespace, env.topic, env.event.type_url) == (
        "k8s.io",
        "/tasks/exit",
        "containerd.events.TaskExit",
    )


def test_retries_until_containerd_listens_with_fake_containerd() -> None:
    async def main(path: str) -> FakeContainerd:
        fake = FakeContainerd()
        pub = Publisher(path, "default", backoff=0.05, timeout=1.0)
        pub.publish("/tasks/start", events_pb2.TaskStart(container_id="c", pid=1))
        pub.publish("/tasks/exit", events_pb2.TaskExit(container_id="c", id="c", pid=1))
        await asyncio.sleep(0.08)  # first connect attempts fail: nothing listens yet
        await fake.server.start(path)
        await pub.flush()
        await pub.close()
        await fake.server.close()
        return fake

    fake = run(main)
    assert [env.topic for _, env in fake.received] == ["/tasks/start", "/tasks/exit"]


def test_transient_errors_are_retried_in_place_with_fake_containerd() -> None:
    async def main(path: str) -> tuple[FakeContainerd, Publisher]:
        fake = FakeContainerd(fail_first=2)
        await fake.server.start(path)
        pub = Publisher(path, "default", backoff=0.01)
        pub.publish("/tasks/start", events_pb2.TaskStart(container_id="c"))
        pub.publish("/tasks/exit", events_pb2.TaskExit(container_id="c"))
        await pub.close()
        await fake.server.close()
        return fake, pub

    fake, pub = run(main)
    assert [env.topic for _, env in fake.received] == ["/tasks/start", "/tasks/exit"]
    assert (pub.sent, pub.dropped) == (2, 0)


def test_permanent_errors_drop_the_event_and_keep_going_with_fake_containerd(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main(path: str) -> tuple[FakeContainerd, Publisher]:
        fake = FakeContainerd(fail_first=1, fail_code=Code.INVALID_ARGUMENT)
        await fake.server.start(path)
        pub = Publisher(path, "default", backoff=0.01)
        pub.publish("/tasks/oom", events_pb2.TaskOOM(container_id="bad"))
        pub.publish("/tasks/oom", events_pb2.TaskOOM(container_id="good"))
        await pub.close()
        await fake.server.close()
        return fake, pub

    with caplog.at_level("ERROR", logger="hcsshim.shim.publisher"):
        fake, pub = run(main)
    assert (pub.sent, pub.dropped) == (1, 1)
    assert [events_pb2.TaskOOM.FromString(e.event.value).container_id for _, e in fake.received] == ["good"]
    assert any("forward_failed" in r.getMessage() for r in caplog.records)


def test_gives_up_after_max_attempts_and_close_returns_with_fake_containerd() -> None:
    async def main(path: str) -> Publisher:
        pub = Publisher(path, "default", backoff=0.01, max_attempts=3, timeout=0.5)
        pub.publish("/tasks/start", events_pb2.TaskStart(container_id="c"))
        await pub.flush()
        await pub.close()
        pub.publish("/tasks/exit", events_pb2.TaskExit(container_id="c"))  # after close: dropped, no error
        return pub

    pub = run(main)
    assert (pub.sent, pub.dropped) == (0, 2)
