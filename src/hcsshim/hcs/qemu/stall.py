"""Diagnosing a guest that stopped answering: what its console says, and what SysRq shows.

The kernel's own watchdogs name a stuck kernel on the console ("soft lockup", RCU stalls, hung
tasks). A SysRq task dump (sent as a key press through QMP, like a person at the console) tells a
live kernel from a dead one: a kernel that still handles interrupts prints it within a second or two,
and the dump shows what the agent is doing. The console is a file QEMU appends to, so what SysRq
printed is whatever the file grew by."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

from hcsshim.hcs.system import StallDiagnosis

# Lines a stuck guest kernel prints by itself (watchdog, RCU, hung-task detector, NMI backtraces).
KERNEL_STALL = re.compile(
    r"(watchdog: BUG: soft lockup[^\n]*|rcu: INFO: [^\n]*stall[^\n]*|rcu_\w+ self-detected stall[^\n]*"
    r"|INFO: task [^\n]* blocked for more than[^\n]*|NMI watchdog: [^\n]*hard LOCKUP[^\n]*)"
)
SYSRQ_KEYS = {"t": "Show State", "l": "Show backtrace of all active CPUs", "w": "Show Blocked State"}
DUMP_WAIT = 3.0
CONSOLE_TAIL = 4000

Execute = Callable[[str, dict[str, Any]], Awaitable[Any]]


def stall_lines(console: str) -> list[str]:
    """The kernel's own stall reports in a console text, oldest first."""
    return [m.group(0).strip() for m in KERNEL_STALL.finditer(console)]


def stall_lines_in(path: str, offset: int) -> list[str]:
    """The stall reports in the console file from `offset` on (blocking: run it in a thread)."""
    return stall_lines(_read_from(path, offset, 1 << 20))


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_from(path: str, offset: int, limit: int = 256 * 1024) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit).decode(errors="replace")
    except OSError:
        return ""


def _tail(path: str, limit: int = CONSOLE_TAIL) -> str:
    return _read_from(path, max(0, _size(path) - limit), limit)


def agent_state(dump: str, comm: str = "python3") -> str:
    """The agent's line of a SysRq-t dump (`task:python3 state:R ...`), if the dump has one."""
    for line in dump.splitlines():
        if f"task:{comm} " in line:
            return line.strip()[line.strip().find("task:") :]
    return ""


def sysrq_keys(key: str) -> dict[str, Any]:
    """QMP send-key arguments for Alt+SysRq+`key` on the guest's PS/2 keyboard."""
    return {"keys": [{"type": "qcode", "data": k} for k in ("alt", "sysrq", key)]}


async def diagnose(
    console_path: str, execute: Execute, *, wait: float = DUMP_WAIT, console_level: int = 4
) -> StallDiagnosis:
    """Classify a stall from the console, asking the guest kernel for a task dump through QMP.

    SysRq prints its dumps at the info level, which `quiet` (console level 4) keeps off the console,
    so the console level goes to 7 for the dump and back to `console_level` afterwards."""
    before = await asyncio.to_thread(_tail, console_path)
    start = await asyncio.to_thread(_size, console_path)
    sent_error = ""
    for key in ("7", "l", "t"):
        try:
            await execute("send-key", sysrq_keys(key))
        except Exception as e:  # the monitor is gone or refuses: say so, keep what the console has
            sent_error = f"SysRq-{key} through QMP failed: {e}"
            break
    dump = ""
    if not sent_error:
        deadline = asyncio.get_running_loop().time() + wait
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.25)
            dump = await asyncio.to_thread(_read_from, console_path, start)
            if SYSRQ_KEYS["t"] in dump and agent_state(dump):
                break
    if not sent_error:
        with contextlib.suppress(Exception):
            await execute("send-key", sysrq_keys(str(console_level)))
    stalls = stall_lines(before + dump)
    answered = any(title in dump for title in SYSRQ_KEYS.values())
    if stalls:
        verdict = f"guest kernel is stuck: {stalls[-1]}"
        kernel = "stuck"
    elif answered:
        agent = agent_state(dump)
        verdict = "guest kernel is alive (it answered SysRq); the agent is not answering" + (
            f" ({agent})" if agent else ""
        )
        kernel = "alive"
    elif sent_error:
        verdict = f"guest state unknown: {sent_error}"
        kernel = "unknown"
    else:
        verdict = f"guest kernel is stuck: no console output within {wait:.0f}s of SysRq"
        kernel = "stuck"
    return StallDiagnosis(kernel, verdict, (before + dump)[-CONSOLE_TAIL:], dump[-64 * 1024 :])
