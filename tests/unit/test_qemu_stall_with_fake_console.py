"""Stall diagnosis against a fake QMP and a console file the test writes (the real QEMU path is in
tests/e2e/test_stall_diagnosis.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hcsshim.hcs.qemu import stall

LOCKUP = "[   64.1] watchdog: BUG: soft lockup - CPU#1 stuck for 44s! [runc:[2:INIT]:312]"
DUMP = (
    "[   70.0] sysrq: Show backtrace of all active CPUs\n"
    "[   70.1] sysrq: Show State\n"
    "[   70.2] task:python3         state:S stack:0     pid:1     ppid:0      flags:0x00000002\n"
)


def _fake_qmp(console: Path, prints: str, sent: list[Any]) -> stall.Execute:
    async def execute(cmd: str, args: dict[str, Any]) -> Any:
        sent.append((cmd, args))
        if prints and args["keys"][-1]["data"] == "t":
            with console.open("a") as f:
                f.write(prints)
        return {}

    return execute


def test_lockup_on_the_console_means_the_kernel_is_stuck(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text(f"boot\n{LOCKUP}\n")
    sent: list[Any] = []
    d = asyncio.run(stall.diagnose(str(console), _fake_qmp(console, DUMP, sent), wait=1))
    assert d.kernel == "stuck" and d.verdict == f"guest kernel is stuck: {LOCKUP[10:]}"
    assert [a["keys"][2]["data"] for _, a in sent] == ["7", "l", "t", "4"]


def test_a_dump_without_a_lockup_means_the_agent_is_stuck(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("boot\n")
    d = asyncio.run(stall.diagnose(str(console), _fake_qmp(console, DUMP, []), wait=1))
    assert d.kernel == "alive"
    assert "the agent is not answering (task:python3         state:S" in d.verdict
    assert "sysrq: Show State" in d.task_dump


def test_silence_after_sysrq_means_the_kernel_is_stuck(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("boot\n")
    d = asyncio.run(stall.diagnose(str(console), _fake_qmp(console, "", []), wait=0.5))
    assert d.kernel == "stuck" and "no console output within" in d.verdict


def test_a_monitor_that_refuses_leaves_the_state_unknown(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("boot\n")

    async def refuses(cmd: str, args: dict[str, Any]) -> Any:
        raise ConnectionResetError("QMP connection lost")

    d = asyncio.run(stall.diagnose(str(console), refuses, wait=0.5))
    assert d.kernel == "unknown" and "QMP connection lost" in d.verdict


def test_stall_lines_find_rcu_and_hung_task_reports() -> None:
    text = (
        "rcu: INFO: rcu_preempt self-detected stall on CPU\n"
        "INFO: task kworker/0:1:12 blocked for more than 120 seconds.\nnoise\n"
    )
    assert stall.stall_lines(text) == [
        "rcu: INFO: rcu_preempt self-detected stall on CPU",
        "INFO: task kworker/0:1:12 blocked for more than 120 seconds.",
    ]
