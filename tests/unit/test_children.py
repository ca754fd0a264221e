"""Children started by hcsshim.children: they die with their parent, and starting them from a
process that serves gRPC (the lcow snapshotter starts service VMs) does not crash them.

Each case runs in a fresh interpreter: gRPC's fork handlers and a parent-death signal are
process-wide."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from hcsshim import children

BUSY_GRPC = textwrap.dedent(
    """
    import asyncio, ctypes, signal, sys
    import grpc
    from hcsshim import children

    def die_with_parent():
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)

    async def main(sock, n, how):
        server = grpc.aio.server()
        server.add_insecure_port("unix:" + sock)
        await server.start()
        channel = grpc.aio.insecure_channel("unix:" + sock)

        async def pound():
            while True:
                try:
                    await channel.unary_unary("/x.Y/Z")(b"", timeout=1)
                except grpc.aio.AioRpcError:
                    pass

        pounder = asyncio.create_task(pound())
        crashed = 0
        for _ in range(n):
            if how == "spawn":
                p = await children.spawn("/bin/true")
            else:
                p = await asyncio.create_subprocess_exec("/bin/true", preexec_fn=die_with_parent)
            if await p.wait() != 0:
                crashed += 1
        pounder.cancel()
        print("crashed", crashed)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
    """
)

STARTS = 300


def _crashed_starts(tmp_path: object, how: str) -> int:
    sock = os.path.join(str(tmp_path), f"{how}.sock")
    out = subprocess.run(
        [sys.executable, "-c", BUSY_GRPC, sock, str(STARTS), how],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, "GRPC_VERBOSITY": "NONE"},
    )
    return int(out.stdout.split()[-1])


def test_children_started_from_a_busy_grpc_process_do_not_crash(tmp_path: object) -> None:
    # The reference shows the stress is real: the preexec_fn way crashes some of its children.
    assert _crashed_starts(tmp_path, "preexec_fn") > 0
    assert _crashed_starts(tmp_path, "spawn") == 0


def _outlives_its_parent(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                # A zombie (reparented, not yet reaped) counts as dead.
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return False
        except FileNotFoundError:
            return False
        time.sleep(0.05)
    os.kill(pid, 9)
    return True


def test_a_child_is_killed_when_its_parent_dies() -> None:
    parent = subprocess.run(
        [
            sys.executable,
            "-c",
            # The parent waits until the child is sleep itself, so the signal is armed; then
            # os._exit: no asyncio transport cleanup kills the child, only the signal can.
            "import asyncio, os, shutil\nfrom hcsshim import children\n"
            "async def main():\n"
            "    p = await children.spawn('sleep', '120', stdout=-3, stderr=-3)\n"
            "    sleep = os.path.realpath(shutil.which('sleep'))\n"
            "    while os.path.realpath(f'/proc/{p.pid}/exe') != sleep:\n"
            "        await asyncio.sleep(0.01)\n"
            "    print(p.pid, flush=True)\n"
            "    os._exit(0)\n"
            "asyncio.run(main())\n",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pid = int(parent.stdout.split()[0])
    if _outlives_its_parent(pid):
        pytest.fail(f"sleep {pid} outlived the process that started it")


def test_a_child_whose_parent_died_before_the_signal_was_armed_does_not_run(tmp_path: object) -> None:
    # A parent that dies between the spawn and setpriv's prctl looks, to the child, like a parent
    # pid that is not the one it was started with; that case is forced here with a wrong pid.
    marker = os.path.join(str(tmp_path), "ran")
    not_the_parent = 1
    argv = children.dying_with_parent(["/bin/sh", "-c", f": > {marker}"], parent=not_the_parent)
    done = subprocess.run(argv, timeout=30)
    assert done.returncode == 137
    assert not os.path.exists(marker)
    # The same command with the right parent runs the program.
    done = subprocess.run(children.dying_with_parent(["/bin/sh", "-c", f": > {marker}"]), timeout=30)
    assert done.returncode == 0
    assert os.path.exists(marker)


def test_spawn_refuses_a_preexec_fn() -> None:
    import asyncio

    with pytest.raises(TypeError, match="preexec_fn"):
        asyncio.run(children.spawn("/bin/true", preexec_fn=lambda: None))
