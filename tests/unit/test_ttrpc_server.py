"""ttrpc server and client over real unix sockets: concurrency, status codes, limits, bad peers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from google.protobuf import empty_pb2

from hcsshim.api.containerd.task.v2 import shim_pb2
from hcsshim.api.ttrpc import request_pb2
from hcsshim.ttrpc import (
    MAX_MESSAGE_LENGTH,
    Client,
    Code,
    ConnectionClosedError,
    Context,
    Server,
    TtrpcError,
)
from hcsshim.ttrpc.frame import Frame, FrameDecoder, MessageType, encode_frame, encode_header

TASK = "containerd.task.v2.Task"
REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class Service:
    """A tiny task service whose behaviour is driven by the request id."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[tuple[str, str]] = []
        self.cancelled = asyncio.Event()
        self.namespaces: list[str | None] = []
        self.deadlines: list[float | None] = []

    async def connect(self, ctx: Context, req: shim_pb2.ConnectRequest) -> shim_pb2.ConnectResponse:
        self.seen.append(("Connect", req.id))
        self.namespaces.append(ctx.namespace)
        self.deadlines.append(ctx.time_remaining())
        errors = {
            "notfound": Code.NOT_FOUND,
            "exists": Code.ALREADY_EXISTS,
            "invalid": Code.INVALID_ARGUMENT,
            "precondition": Code.FAILED_PRECONDITION,
        }
        if req.id in errors:
            raise TtrpcError(errors[req.id], f"{req.id}: refused")
        if req.id == "boom":
            raise RuntimeError("handler exploded")
        if req.id == "slow":
            await asyncio.sleep(2)
        if req.id == "huge":
            return shim_pb2.ConnectResponse(version="v" * (MAX_MESSAGE_LENGTH + 1))
        return shim_pb2.ConnectResponse(shim_pid=os.getpid(), task_pid=len(req.id), version=req.id)

    async def wait(self, ctx: Context, req: shim_pb2.WaitRequest) -> shim_pb2.WaitResponse:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return shim_pb2.WaitResponse(exit_status=42)

    async def kill(self, ctx: Context, req: shim_pb2.KillRequest) -> empty_pb2.Empty:
        self.release.set()
        return empty_pb2.Empty()

    async def state(self, ctx: Context, req: shim_pb2.StateRequest) -> shim_pb2.StateResponse:
        return None  # type: ignore[return-value]  # exercises the nil-response path


def _server(svc: Service) -> Server:
    server = Server()
    server.register(
        TASK,
        {
            "Connect": (shim_pb2.ConnectRequest, svc.connect),
            "Wait": (shim_pb2.WaitRequest, svc.wait),
            "Kill": (shim_pb2.KillRequest, svc.kill),
            "State": (shim_pb2.StateRequest, svc.state),
        },
    )
    return server


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[Service, Server, str]]:
    svc = Service()
    server = _server(svc)
    with tempfile.TemporaryDirectory(prefix="ttrpc-", dir="/tmp") as d:
        path = os.path.join(d, "s.sock")
        await server.start(path)
        try:
            yield svc, server, path
        finally:
            await server.close()


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def wrapper() -> T:
        async with asyncio.timeout(30):
            return await coro_fn()

    return asyncio.run(wrapper())


async def _connect_call(
    client: Client, cid: str, *, timeout: float | None = None, metadata: dict[str, str] | None = None
) -> shim_pb2.ConnectResponse:
    return await client.call(
        TASK,
        "Connect",
        shim_pb2.ConnectRequest(id=cid),
        shim_pb2.ConnectResponse,
        timeout=timeout,
        metadata=metadata,
    )


def test_blocked_call_does_not_hold_up_others_for_a_client_in_another_process() -> None:
    async def main() -> dict[str, object]:
        async with serving() as (svc, _server, path):
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.support.ttrpc_peer",
                "unix://" + path,
                "20",
                cwd=REPO,
                env=env,
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await proc.communicate()
            assert proc.returncode == 0
            assert svc.release.is_set()
            result: dict[str, object] = json.loads(out)
            return result

    result = run(main)
    assert result["wait_pending_after_connects"] is True
    assert result["wait_exit_status"] == 42
    assert result["task_pids"] == [len(f"c{i}") for i in range(20)]
    latencies = result["latencies"]
    assert isinstance(latencies, list) and max(latencies) < 2.0


@pytest.mark.parametrize(
    ("cid", "code"),
    [
        ("notfound", Code.NOT_FOUND),
        ("exists", Code.ALREADY_EXISTS),
        ("invalid", Code.INVALID_ARGUMENT),
        ("precondition", Code.FAILED_PRECONDITION),
    ],
)
def test_handler_status_codes_reach_the_client(cid: str, code: Code) -> None:
    async def main() -> None:
        async with serving() as (_svc, _server, path), await Client.connect(path) as client:
            with pytest.raises(TtrpcError) as info:
                await _connect_call(client, cid)
            assert info.value.code == code
            assert info.value.message == f"{cid}: refused"
            # The connection stays usable after an error status.
            assert (await _connect_call(client, "ok")).version == "ok"

    run(main)


def test_unknown_service_and_method_are_unimplemented() -> None:
    async def main() -> None:
        async with serving() as (_svc, _server, path), await Client.connect(path) as client:
            with pytest.raises(TtrpcError) as info:
                await client.call("no.Such", "Connect", shim_pb2.ConnectRequest(), shim_pb2.ConnectResponse)
            assert (info.value.code, info.value.message) == (Code.UNIMPLEMENTED, "service no.Such")
            with pytest.raises(TtrpcError) as info:
                await client.call(TASK, "Pids", shim_pb2.PidsRequest(), shim_pb2.PidsResponse)
            assert (info.value.code, info.value.message) == (Code.UNIMPLEMENTED, "method Pids")

    run(main)


def test_plain_exceptions_and_nil_responses_become_unknown() -> None:
    async def main() -> None:
        async with serving() as (_svc, _server, path), await Client.connect(path) as client:
            with pytest.raises(TtrpcError) as info:
                await _connect_call(client, "boom")
            assert (info.value.code, info.value.message) == (Code.UNKNOWN, "handler exploded")
            with pytest.raises(TtrpcError) as info:
                await client.call(TASK, "State", shim_pb2.StateRequest(), shim_pb2.StateResponse)
            assert info.value.code == Code.UNKNOWN
            assert "nil" in info.value.message

    run(main)


def test_metadata_namespace_and_deadline_reach_the_handler() -> None:
    async def main() -> Service:
        async with serving() as (svc, _server, path), await Client.connect(path) as client:
            await _connect_call(client, "a", metadata={"Containerd-Namespace-TTRPC": "k8s.io"}, timeout=3.0)
            await _connect_call(client, "b")
            return svc

    svc = run(main)
    assert svc.namespaces == ["k8s.io", None]
    first, second = svc.deadlines
    assert first is not None and 2.0 < first <= 3.0
    assert second is None


def test_client_timeout_is_deadline_exceeded_and_connection_survives() -> None:
    async def main() -> None:
        async with serving() as (_svc, _server, path), await Client.connect(path) as client:
            with pytest.raises(TtrpcError) as info:
                await _connect_call(client, "slow", timeout=0.2)
            assert info.value.code == Code.DEADLINE_EXCEEDED
            assert (await _connect_call(client, "after")).version == "after"

    run(main)


async def _raw_exchange(path: str, frames: list[bytes], want: int) -> list[tuple[int, request_pb2.Response]]:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        for f in frames:
            writer.write(f)
        await writer.drain()
        decoder = FrameDecoder()
        got: list[tuple[int, request_pb2.Response]] = []
        while len(got) < want:
            data = await reader.read(65536)
            assert data, "server closed the connection"
            for item in decoder.feed(data):
                resp = request_pb2.Response()
                assert isinstance(item, Frame)
                resp.ParseFromString(item.payload)
                got.append((item.stream_id, resp))
        return got
    finally:
        writer.close()


def _request(
    method: str, msg: shim_pb2.ConnectRequest | shim_pb2.WaitRequest, timeout_nano: int = 0
) -> bytes:
    return request_pb2.Request(
        service=TASK, method=method, payload=msg.SerializeToString(), timeout_nano=timeout_nano
    ).SerializeToString()


def test_server_deadline_from_timeout_nano() -> None:
    async def main() -> list[tuple[int, request_pb2.Response]]:
        async with serving() as (_svc, _server, path):
            req = _request("Wait", shim_pb2.WaitRequest(id="x"), timeout_nano=100_000_000)
            return await _raw_exchange(path, [encode_frame(1, MessageType.REQUEST, req)], 1)

    [(stream, resp)] = run(main)
    assert stream == 1
    assert resp.status.code == Code.DEADLINE_EXCEEDED


def test_oversized_request_frame_is_answered_resource_exhausted_and_connection_kept() -> None:
    big = MAX_MESSAGE_LENGTH + 1
    oversized = encode_header(big, 1, MessageType.REQUEST) + b"\0" * big
    follow = encode_frame(3, MessageType.REQUEST, _request("Connect", shim_pb2.ConnectRequest(id="next")))

    async def main() -> list[tuple[int, request_pb2.Response]]:
        async with serving() as (_svc, _server, path):
            return await _raw_exchange(path, [oversized, follow], 2)

    got = dict(run(main))
    assert got[1].status.code == Code.RESOURCE_EXHAUSTED
    assert "exceed maximum message size of 4194304" in got[1].status.message
    assert got[3].status.code == Code.OK
    assert shim_pb2.ConnectResponse.FromString(got[3].payload).version == "next"


def test_stream_id_rules() -> None:
    ok = _request("Connect", shim_pb2.ConnectRequest(id="x"))
    frames = [
        encode_frame(2, MessageType.REQUEST, ok),  # even
        encode_frame(5, MessageType.REQUEST, ok),
        encode_frame(3, MessageType.REQUEST, ok),  # not increasing
        encode_frame(7, MessageType.REQUEST, b"\xff\xff"),  # not a Request
    ]

    async def main() -> list[tuple[int, request_pb2.Response]]:
        async with serving() as (_svc, _server, path):
            return await _raw_exchange(path, frames, 4)

    got = dict(run(main))
    assert got[2].status.code == Code.INVALID_ARGUMENT
    assert got[5].status.code == Code.OK
    assert got[3].status.code == Code.INVALID_ARGUMENT
    assert got[7].status.code == Code.INVALID_ARGUMENT
    assert "unmarshal request error" in got[7].status.message


def test_garbage_closes_only_that_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> str:
        async with serving() as (_svc, _server, path), await Client.connect(path) as good:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            writer.close()
            return (await _connect_call(good, "still-ok")).version

    with caplog.at_level("WARNING", logger="hcsshim.ttrpc"):
        assert run(main) == "still-ok"
    assert any("protocol error" in r.getMessage() for r in caplog.records)


def test_oversized_request_is_refused_by_client_without_writing() -> None:
    async def main() -> Service:
        async with serving() as (svc, _server, path), await Client.connect(path) as client:
            with pytest.raises(TtrpcError) as info:
                await _connect_call(client, "x" * (MAX_MESSAGE_LENGTH + 1))
            assert info.value.code == Code.RESOURCE_EXHAUSTED
            assert (await _connect_call(client, "small")).version == "small"
            return svc

    assert run(main).seen == [("Connect", "small")]


def test_oversized_response_becomes_resource_exhausted() -> None:
    async def main() -> None:
        async with serving() as (_svc, _server, path), await Client.connect(path) as client:
            with pytest.raises(TtrpcError) as info:
                await _connect_call(client, "huge")
            assert info.value.code == Code.RESOURCE_EXHAUSTED

    run(main)


def test_client_stream_ids_are_odd_and_increasing() -> None:
    async def main() -> list[int]:
        with tempfile.TemporaryDirectory(prefix="ttrpc-", dir="/tmp") as d:
            path = os.path.join(d, "raw.sock")
            ids: list[int] = []

            async def raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                decoder = FrameDecoder()
                while data := await reader.read(65536):
                    for item in decoder.feed(data):
                        ids.append(item.stream_id)
                        resp = request_pb2.Response(payload=shim_pb2.ConnectResponse().SerializeToString())
                        writer.write(
                            encode_frame(item.stream_id, MessageType.RESPONSE, resp.SerializeToString())
                        )
                writer.close()

            listener = await asyncio.start_unix_server(raw, path=path)
            async with await Client.connect(path) as client:
                await asyncio.gather(*(_connect_call(client, str(i)) for i in range(5)))
                await _connect_call(client, "last")
            listener.close()
            return ids

    assert run(main) == [1, 3, 5, 7, 9, 11]


def test_start_fd_serves_an_inherited_listening_socket() -> None:
    async def main() -> str:
        with tempfile.TemporaryDirectory(prefix="ttrpc-", dir="/tmp") as d:
            path = os.path.join(d, "fd.sock")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            sock.listen()
            server = _server(Service())
            await server.start_fd(os.dup(sock.fileno()))
            sock.close()
            try:
                async with await Client.connect(path) as client:
                    return (await _connect_call(client, "via-fd")).version
            finally:
                await server.close()

    assert run(main) == "via-fd"


def test_abstract_address_and_socket_removed_on_close() -> None:
    name = f"hcsshim-test-{os.getpid()}"

    async def main() -> bool:
        server = _server(Service())
        await server.start("\0" + name)
        try:
            async with await Client.connect(name) as client:
                assert (await _connect_call(client, "abs")).version == "abs"
        finally:
            await server.close()
        async with serving() as (_svc, _srv, path):
            pass
        return os.path.exists(path)

    assert run(main) is False


def test_connection_loss_cancels_handlers_and_fails_pending_calls() -> None:
    async def main() -> None:
        async with serving() as (svc, server, path):
            client = await Client.connect(path)
            wait = asyncio.create_task(
                client.call(TASK, "Wait", shim_pb2.WaitRequest(), shim_pb2.WaitResponse)
            )
            await asyncio.sleep(0.1)
            await server.close()
            with pytest.raises(ConnectionClosedError):
                await wait
            await asyncio.wait_for(svc.cancelled.wait(), 5)
            assert client.closed
            with pytest.raises(ConnectionClosedError):
                await _connect_call(client, "after")
            await client.close()

    run(main)


def test_client_discards_oversized_response_frame_and_fails_only_that_call() -> None:
    async def main() -> tuple[Code, str]:
        with tempfile.TemporaryDirectory(prefix="ttrpc-", dir="/tmp") as d:
            path = os.path.join(d, "raw.sock")

            async def raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                decoder = FrameDecoder()
                while data := await reader.read(65536):
                    for item in decoder.feed(data):
                        if item.stream_id == 1:
                            big = MAX_MESSAGE_LENGTH + 1
                            writer.write(encode_header(big, 1, MessageType.RESPONSE) + b"\0" * big)
                        else:
                            resp = request_pb2.Response(
                                payload=shim_pb2.ConnectResponse(version="fine").SerializeToString()
                            )
                            writer.write(
                                encode_frame(item.stream_id, MessageType.RESPONSE, resp.SerializeToString())
                            )
                writer.close()

            listener = await asyncio.start_unix_server(raw, path=path)
            try:
                async with await Client.connect(path) as client:
                    with pytest.raises(TtrpcError) as info:
                        await _connect_call(client, "first")
                    return info.value.code, (await _connect_call(client, "second")).version
            finally:
                listener.close()

    assert run(main) == (Code.RESOURCE_EXHAUSTED, "fine")
