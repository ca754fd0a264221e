"""Run ``ip``/``tc``/``iptables`` inside a network namespace, as asyncio subprocesses."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hcsshim import errdefs
from hcsshim.network.errors import NetworkError

NSENTER = "nsenter"
COMMAND_TIMEOUT = 30.0


async def run_in(netns: str, *argv: str, check: bool = True) -> tuple[int, str, str]:
    """``argv`` inside the namespace file ``netns`` (any path nsenter can open, e.g. /proc/P/fd/N)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            NSENTER,
            f"--net={netns}",
            "--",
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        raise NetworkError(f"running {argv[0]} in {netns}: {e}") from e
    try:
        out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise NetworkError(
            f"{' '.join(argv)} in {netns} did not finish in {COMMAND_TIMEOUT:.0f}s",
            errdefs.Kind.DEADLINE_EXCEEDED,
        ) from None
    rc = proc.returncode or 0
    text, etext = out.decode(errors="replace"), err.decode(errors="replace").strip()
    if check and rc != 0:
        raise NetworkError(f"{' '.join(argv)} in {netns} failed ({rc}): {etext}")
    return rc, text, etext


async def ip_json(netns: str, *args: str) -> list[dict[str, Any]]:
    _, out, _ = await run_in(netns, "ip", "-j", *args)
    try:
        data = json.loads(out or "[]")
    except ValueError as e:
        raise NetworkError(f"ip -j {' '.join(args)} in {netns}: unreadable output: {e}") from e
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
