"""ttrpc unary round trip: our client + server against a raw asyncio unix-socket echo (the floor).

Both servers run in a child process (as a shim would, apart from containerd) and the client in this one,
on one connection each. The echo moves exactly the bytes a ttrpc call moves (the request frame out, the
response frame back) with a 4-byte length prefix and no protobuf, so the ratio is the cost of our framing,
envelopes, dispatch and task-per-request on top of the socket and the event loop.

Prints median and p99 latency of sequential calls, calls/s sequentially and with 32 calls in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

from hcsshim.api.containerd.task.v2 import shim_pb2
from hcsshim.api.ttrpc import request_pb2
from hcsshim.ttrpc import Client, Context, Server
from hcsshim.ttrpc.frame import MessageType, encode_frame

TASK = "containerd.task.v2.Task"
SEQUENTIAL = 10000
CONCURRENT = 20000
IN_FLIGHT = 32
WARMUP = 1000

REQUEST = shim_pb2.ConnectRequest(id="bench-container-0123456789")
RESPONSE = shim_pb2.ConnectResponse(shim_pid=4242, task_pid=4243, version="")


def _frame_sizes() -> tuple[int, int]:
    req = request_pb2.Request(service=TASK, method="Connect", payload=REQUEST.SerializeToString())
    resp = request_pb2.Response(payload=RESPONSE.SerializeToString())
    resp.status.SetInParent()
    return (
        len(encode_frame(1, MessageType.REQUEST, req.SerializeToString())),
        len(encode_frame(1, MessageType.RESPONSE, resp.SerializeToString())),
    )


# --- servers (child process) ---------------------------------------------------------------------


async def _serve_ttrpc(path: str) -> None:
    async def connect(ctx: Context, req: shim_pb2.ConnectRequest) -> shim_pb2.ConnectResponse:
        return RESPONSE

    server = Server()
    server.register(TASK, {"Connect": (shim_pb2.ConnectRequest, connect)})
    await server.start(path)
    print("ready", flush=True)
    await server.wait_closed()


async def _serve_echo(path: str) -> None:
    _, resp_size = _frame_sizes()
    reply = b"\0" * resp_size

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (n,) = struct.unpack(">I", await reader.readexactly(4))
                await reader.readexactly(n)
                writer.write(struct.pack(">I", len(reply)) + reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    await asyncio.start_unix_server(handle, path=path)
    print("ready", flush=True)
    await asyncio.Event().wait()


# --- clients ---------------------------------------------------------------------------------------


class EchoClient:
    """Pipelined request/reply over one connection, replies matched in order (the echo keeps order)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int) -> None:
        self.reader, self.writer = reader, writer
        self.message = struct.pack(">I", size) + b"\1" * size
        self.waiters: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            (n,) = struct.unpack(">I", await self.reader.readexactly(4))
            await self.reader.readexactly(n)
            (await self.waiters.get()).set_result(None)

    async def call(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.put_nowait(fut)
        self.writer.write(self.message)
        await fut

    async def close(self) -> None:
        self.task.cancel()
        self.writer.close()


async def _measure(call: Callable[[], Awaitable[object]]) -> dict[str, float]:
    for _ in range(WARMUP):
        await call()
    samples: list[float] = []
    start = time.perf_counter()
    for _ in range(SEQUENTIAL):
        t0 = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t0)
    seq_elapsed = time.perf_counter() - start
    samples.sort()

    sem = asyncio.Semaphore(IN_FLIGHT)

    async def limited() -> None:
        async with sem:
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(limited() for _ in range(CONCURRENT)))
    conc_elapsed = time.perf_counter() - start
    return {
        "median_us": statistics.median(samples) * 1e6,
        "p99_us": samples[int(len(samples) * 0.99) - 1] * 1e6,
        "seq_per_s": SEQUENTIAL / seq_elapsed,
        "conc_per_s": CONCURRENT / conc_elapsed,
    }


def _spawn(mode: str, path: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", mode, path], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"{mode} server did not start")
    return proc


async def _bench_echo(path: str) -> dict[str, float]:
    req_size, _ = _frame_sizes()
    reader, writer = await asyncio.open_unix_connection(path)
    # Same bytes on the wire as a ttrpc call: prefix (4) + body = request frame size.
    client = EchoClient(reader, writer, req_size - 4)
    try:
        return await _measure(client.call)
    finally:
        await client.close()


async def _bench_ttrpc(path: str) -> dict[str, float]:
    client = await Client.connect(path)
    try:
        return await _measure(lambda: client.call(TASK, "Connect", REQUEST, shim_pb2.ConnectResponse))
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        mode, path = args.serve
        asyncio.run(_serve_ttrpc(path) if mode == "ttrpc" else _serve_echo(path))
        return 0

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ttrpc-", dir="/tmp") as d:
        for name, mode, bench in (
            ("raw unix echo (floor)", "echo", _bench_echo),
            ("hcsshim.ttrpc", "ttrpc", _bench_ttrpc),
        ):
            path = os.path.join(d, f"{mode}.sock")
            proc = _spawn(mode, path)
            try:
                results[name] = asyncio.run(bench(path))
            finally:
                proc.terminate()
                proc.wait(timeout=10)

    req_size, resp_size = _frame_sizes()
    print(
        f"ttrpc unary round trip, client and server in separate processes, one connection; "
        f"{req_size} B request frame, {resp_size} B response frame; "
        f"{SEQUENTIAL} sequential calls, {CONCURRENT} with {IN_FLIGHT} in flight"
    )
    header = (
        f"{'case':<24}{'median us':>11}{'p99 us':>10}{'calls/s seq':>14}{'calls/s x' + str(IN_FLIGHT):>14}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<24}{r['median_us']:>11.1f}{r['p99_us']:>10.1f}{r['seq_per_s']:>14.0f}{r['conc_per_s']:>14.0f}"
        )
    ours, floor = results["hcsshim.ttrpc"], results["raw unix echo (floor)"]
    print(
        f"{'ratio (ttrpc / floor)':<24}{ours['median_us'] / floor['median_us']:>10.2f}x"
        f"{ours['p99_us'] / floor['p99_us']:>9.2f}x"
        f"{ours['seq_per_s'] / floor['seq_per_s']:>13.2f}x{ours['conc_per_s'] / floor['conc_per_s']:>13.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
