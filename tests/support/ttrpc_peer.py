"""A ttrpc client in its own process, for server tests that must not share the server's event loop.

``python -m tests.support.ttrpc_peer <address> <n>``: starts a ``Wait`` call that the server holds,
makes ``n`` ``Connect`` calls on the same connection while it is pending, then calls ``Kill`` (which
releases it) and collects the ``Wait`` result. Prints one JSON object: the Connect latencies, whether
Wait was still pending after them, and Wait's exit status.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from google.protobuf import empty_pb2

from hcsshim.api.containerd.task.v2 import shim_pb2
from hcsshim.ttrpc import Client

TASK = "containerd.task.v2.Task"


async def run(address: str, n: int) -> dict[str, object]:
    client = await Client.connect(address, timeout=5)
    try:
        wait = asyncio.create_task(
            client.call(TASK, "Wait", shim_pb2.WaitRequest(id="blocked"), shim_pb2.WaitResponse, timeout=30)
        )
        await asyncio.sleep(0.05)
        latencies: list[float] = []
        pids: list[int] = []
        for i in range(n):
            t0 = time.perf_counter()
            resp = await client.call(
                TASK, "Connect", shim_pb2.ConnectRequest(id=f"c{i}"), shim_pb2.ConnectResponse, timeout=5
            )
            latencies.append(time.perf_counter() - t0)
            pids.append(resp.task_pid)
        pending_after = not wait.done()
        # Kill releases the blocked Wait on the server side.
        await client.call(TASK, "Kill", shim_pb2.KillRequest(id="blocked"), empty_pb2.Empty, timeout=5)
        result = await wait
        return {
            "latencies": latencies,
            "task_pids": pids,
            "wait_pending_after_connects": pending_after,
            "wait_exit_status": result.exit_status,
        }
    finally:
        await client.close()


def main() -> None:
    print(json.dumps(asyncio.run(run(sys.argv[1], int(sys.argv[2])))), flush=True)


if __name__ == "__main__":
    main()
