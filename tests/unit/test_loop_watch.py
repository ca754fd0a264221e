"""The slow-callback watch (hcsshim.loopwatch) and how the shim, the guest agent and the suites use
it: a blocked loop is seen, a busy but yielding one is not, and each side turns it on from its own
setting."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

from hcsshim import loopwatch, settings
from hcsshim.gcs.connection import guest_line_level
from hcsshim.guest import __main__ as guest_main
from hcsshim.shim import server as shim_server
from hcsshim.uvm.document import watch_guest_loops
from tests.support.loop_watch import SLOW_CALLBACK_SECONDS, WATCH, _report

CMDLINE = "root=/dev/sda ro quiet nr_cpus=2 -- -e 1 /bin/vsockexec -e 109 /bin/gcs -v4 -loglevel info"


def test_a_callback_that_blocks_the_loop_is_reported() -> None:
    async def blocks() -> None:
        time.sleep(SLOW_CALLBACK_SECONDS * 2)

    WATCH.take()
    asyncio.run(blocks())
    seen = WATCH.take()  # taken here so the autouse check does not fail this test
    assert len(seen) == 1 and "held its loop" in seen[0] and "blocks" in seen[0], seen


def test_a_loop_that_yields_is_not_reported() -> None:
    async def yields() -> None:
        for _ in range(4):
            await asyncio.sleep(SLOW_CALLBACK_SECONDS / 2)

    asyncio.run(yields())
    assert WATCH.take() == []


def test_a_logging_watch_logs_the_messages_the_suites_look_for(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.loopwatch")
    try:
        with caplog.at_level(logging.INFO, logger="test.loopwatch"):
            loopwatch.install_logging(SLOW_CALLBACK_SECONDS, logger)
        installed = [r for r in caplog.records if r.name == "test.loopwatch"]
        assert [r.getMessage() for r in installed] == [loopwatch.INSTALLED]
        assert installed[0].__dict__["threshold_ms"] == round(SLOW_CALLBACK_SECONDS * 1000)
        caplog.clear()

        async def blocks() -> None:
            time.sleep(SLOW_CALLBACK_SECONDS * 2)

        with caplog.at_level(logging.WARNING, logger="test.loopwatch"):
            asyncio.run(blocks())
    finally:
        loopwatch.install(SLOW_CALLBACK_SECONDS, _report)
    WATCH.take()  # the suite's relay handler saw the warning too
    records = [r for r in caplog.records if r.name == "test.loopwatch"]
    assert [r.getMessage() for r in records] == [loopwatch.MESSAGE]
    fields = records[0].__dict__
    assert fields["seconds"] >= SLOW_CALLBACK_SECONDS and "blocks" in fields["callback"]


def test_a_reporter_that_raises_does_not_break_the_loop() -> None:
    def broken(what: str, own: float, wall: float) -> None:
        raise RuntimeError("reporter broke")

    try:
        loopwatch.install(SLOW_CALLBACK_SECONDS, broken)

        async def blocks() -> int:
            time.sleep(SLOW_CALLBACK_SECONDS * 2)
            return 7

        assert asyncio.run(blocks()) == 7
    finally:
        loopwatch.install(SLOW_CALLBACK_SECONDS, _report)


def test_install_refuses_a_threshold_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        loopwatch.install(0, _report)
    assert loopwatch.installed() == SLOW_CALLBACK_SECONDS


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (CMDLINE, None),
        ("quiet hcsshim.slow_callback_ms=250 -- -e 1 x", 0.25),
        ("hcsshim.slow_callback_ms=1", 0.001),
    ],
)
def test_the_guest_threshold_comes_from_the_kernel_command_line(cmdline: str, expected: float | None) -> None:
    assert loopwatch.threshold_from_cmdline(cmdline) == expected


@pytest.mark.parametrize("value", ["0", "-5", "abc", ""])
def test_a_bad_guest_threshold_names_the_parameter(value: str) -> None:
    with pytest.raises(ValueError, match=r"hcsshim\.slow_callback_ms"):
        loopwatch.threshold_from_cmdline(f"quiet hcsshim.slow_callback_ms={value}")


def test_the_guest_agent_installs_the_watch_its_cmdline_asks_for(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("quiet hcsshim.slow_callback_ms=300\n")
    try:
        assert guest_main.watch_slow_callbacks(str(cmdline)) == 0.3
        assert loopwatch.installed() == 0.3
        cmdline.write_text(CMDLINE)
        assert guest_main.watch_slow_callbacks(str(cmdline)) is None
        cmdline.write_text("hcsshim.slow_callback_ms=x")
        assert guest_main.watch_slow_callbacks(str(cmdline)) is None  # logged, not fatal
        assert guest_main.watch_slow_callbacks(str(tmp_path / "absent")) is None
    finally:
        loopwatch.install(SLOW_CALLBACK_SECONDS, _report)


def test_the_shim_installs_the_watch_its_setting_asks_for(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        monkeypatch.setenv(settings.SLOW_CALLBACK_ENV, "250")
        settings.reset()
        shim_server.watch_slow_callbacks()
        assert loopwatch.installed() == 0.25
    finally:
        loopwatch.install(SLOW_CALLBACK_SECONDS, _report)


@pytest.mark.parametrize("value", ["x", "-1", "1.5"])
def test_a_bad_slow_callback_setting_names_the_variable(value: str) -> None:
    for name in (settings.SLOW_CALLBACK_ENV, settings.GUEST_SLOW_CALLBACK_ENV):
        with pytest.raises(ValueError, match=name):
            settings.Settings.from_environ({name: value})


def _document(cmdline: str) -> dict[str, object]:
    return {"VirtualMachine": {"Chipset": {"LinuxKernelDirect": {"KernelCmdLine": cmdline}}}}


def _cmdline(doc: dict[str, object]) -> str:
    return str(json.loads(json.dumps(doc))["VirtualMachine"]["Chipset"]["LinuxKernelDirect"]["KernelCmdLine"])


def test_a_uvm_document_asks_its_guest_to_watch_when_set_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(settings.GUEST_SLOW_CALLBACK_ENV, "400")
    settings.reset()
    doc = _document(CMDLINE)
    watched = watch_guest_loops(doc)
    kernel, _, init = _cmdline(watched).partition(" -- ")
    assert kernel.split()[-1] == "hcsshim.slow_callback_ms=400"
    assert init == CMDLINE.partition(" -- ")[2]
    assert _cmdline(doc) == CMDLINE, "the caller's document is not changed"
    assert watch_guest_loops(watched) == watched, "idempotent"
    # A command line without init arguments gets the parameter at its end.
    assert _cmdline(watch_guest_loops(_document("quiet"))) == "quiet hcsshim.slow_callback_ms=400"


def test_a_uvm_document_is_unchanged_when_the_setting_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.GUEST_SLOW_CALLBACK_ENV, "0")
    settings.reset()
    doc = _document(CMDLINE)
    assert watch_guest_loops(doc) is doc
    monkeypatch.setenv(settings.GUEST_SLOW_CALLBACK_ENV, "400")
    settings.reset()
    no_kernel: dict[str, object] = {"VirtualMachine": {"Chipset": {"Uefi": {}}}}
    assert watch_guest_loops(no_kernel) is no_kernel


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ('{"level": "warning", "msg": "slow callback"}', logging.WARNING),
        ('{"level": "error", "msg": "mount failed"}', logging.ERROR),
        ('{"level": "info", "msg": "bridge connected"}', logging.DEBUG),
        ('{"level": ', logging.DEBUG),
        ("[ 1.0] plain console text", logging.DEBUG),
        ('["level"]', logging.DEBUG),
    ],
)
def test_guest_log_lines_keep_their_level_from_warning_up(line: str, level: int) -> None:
    assert guest_line_level(line) == level
