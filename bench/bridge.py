"""Bridge benchmark: exec round-trip latency and stdout throughput through the guest agent on this
host (mux + bridge + runc), against a raw subprocess and a raw pipe measured in the same run."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.support.guest import (
    RUNC,
    container_document,
    make_busybox_rootfs,
    oci_spec,
    remove_cgroup_parent,
    start_guest_agent,
)

EXECS = 30
THROUGHPUT_BYTES = 256 * 1024 * 1024


def raw_latency() -> float:
    samples = []
    for _ in range(EXECS):
        t0 = time.perf_counter()
        subprocess.run(["/bin/busybox", "true"], check=True)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def raw_throughput() -> float:
    t0 = time.perf_counter()
    with subprocess.Popen(
        ["/bin/busybox", "head", "-c", str(THROUGHPUT_BYTES), "/dev/zero"], stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        total = 0
        while chunk := proc.stdout.read(256 * 1024):
            total += len(chunk)
    assert total == THROUGHPUT_BYTES
    return total / (time.perf_counter() - t0) / 1e6


async def agent_numbers(work: str) -> tuple[float, float, float]:
    agent = await start_guest_agent(work, log_level="warning")
    try:
        bundle = os.path.join(work, "bench")
        make_busybox_rootfs(os.path.join(bundle, "rootfs"))
        c = agent.client
        await c.create_container("bench", container_document(bundle, oci_spec(["sleep", "100000"])))
        await c.execute_process("bench", {})
        samples = []
        for _ in range(EXECS):
            t0 = time.perf_counter()
            proc = await c.execute_process("bench", {"OciProcess": {"args": ["/bin/true"], "cwd": "/"}})
            assert await c.wait_process("bench", proc.pid) == 0
            samples.append(time.perf_counter() - t0)
        direct = []
        runc = [RUNC, "--root", os.path.join(agent.root, "runc"), "exec", "bench", "/bin/true"]
        for _ in range(EXECS):
            t0 = time.perf_counter()
            await asyncio.to_thread(subprocess.run, runc, check=True)
            direct.append(time.perf_counter() - t0)
        cmd = ["/bin/head", "-c", str(THROUGHPUT_BYTES), "/dev/zero"]
        t0 = time.perf_counter()
        proc = await c.execute_process(
            "bench", {"OciProcess": {"args": cmd, "cwd": "/"}, "CreateStdOutPipe": True}
        )
        assert proc.stdout is not None
        total = 0
        while chunk := await proc.stdout.read(1 << 20):
            total += len(chunk)
        await c.wait_process("bench", proc.pid)
        mbps = total / (time.perf_counter() - t0) / 1e6
        assert total == THROUGHPUT_BYTES, total
        await c.shutdown_forced("bench")
        await agent.next_notification("bench")
        await c.delete_container_state("bench")
        return statistics.median(samples), statistics.median(direct), mbps
    finally:
        await agent.stop()
        remove_cgroup_parent(agent.cgroup_parent)


def main() -> int:
    if os.geteuid() != 0 or not os.path.exists(RUNC):
        print("bridge bench needs root and runc; skipped")
        return 0
    work = tempfile.mkdtemp(prefix="bench-bridge-")
    try:
        base_lat = raw_latency()
        base_tp = raw_throughput()
        lat, runc_lat, tp = asyncio.run(agent_numbers(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'metric':<34}{'agent':>12}{'reference':>12}{'ratio':>10}")
    rows = [
        ("exec true + wait, median (ms)", lat * 1e3, base_lat * 1e3),
        ("  vs runc exec directly (ms)", lat * 1e3, runc_lat * 1e3),
        ("stdout throughput (MB/s)", tp, base_tp),
    ]
    for name, ours, ref in rows:
        print(f"{name:<34}{ours:>12.1f}{ref:>12.1f}{ours / ref:>9.2f}x")
    print(
        "reference: subprocess `busybox true`, `runc exec` of the same container, and a raw pipe from"
        f" `head -c {THROUGHPUT_BYTES >> 20}M`, all on this host in the same run"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
