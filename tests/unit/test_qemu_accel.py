from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from hcsshim.hcs.qemu import accel


def test_forced_accel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCSSHIM_ACCEL", "tcg")
    assert asyncio.run(accel.choose_accel("qemu", "/k")) == ("tcg", "forced by HCSSHIM_ACCEL")


def test_probe_result_is_cached_with_fake_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HCSSHIM_ACCEL", raising=False)
    monkeypatch.setenv("HCSSHIM_RUN_DIR", str(tmp_path))
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    probes: list[str] = []

    async def fake_probe(qemu: str, kernel: str, timeout: float = 0) -> tuple[bool, str]:
        probes.append(kernel)
        return False, "fake: hangs"

    monkeypatch.setattr(accel, "probe_kvm", fake_probe)
    assert asyncio.run(accel.choose_accel("qemu", "/k")) == ("tcg", "fake: hangs")
    assert asyncio.run(accel.choose_accel("qemu", "/k")) == ("tcg", "cached probe: fake: hangs")
    assert probes == ["/k"]


def test_version_parsing_handles_debian_strings_and_garbage() -> None:
    v = accel.parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright")
    assert v.numbers == (10, 0, 2) and str(v) == "10.0.2"
    assert accel.parse_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)").numbers[:2] == (
        7,
        2,
    )
    unknown = accel.parse_version("not qemu at all")
    assert unknown.numbers == () and "unknown" in str(unknown)


@pytest.mark.parametrize(
    ("text", "thread"),
    [
        ("QEMU emulator version 7.2.19", "single"),
        ("QEMU emulator version 8.0.5", "single"),
        ("QEMU emulator version 8.1.0", "multi"),
        ("QEMU emulator version 10.0.2", "multi"),
        ("garbage", "single"),
    ],
)
def test_tcg_is_single_threaded_before_qemu_8_1(text: str, thread: str) -> None:
    got, why = accel.tcg_threads(accel.parse_version(text))
    assert got == thread
    if thread == "single":
        assert "8.1" in why and "static key" in why


def _fake_qemu(tmp_path: Path, version: str) -> str:
    qemu = tmp_path / f"qemu-{version}"
    qemu.write_text(f"#!/bin/sh\necho 'QEMU emulator version {version} (fake)'\n")
    qemu.chmod(0o755)
    return str(qemu)


def test_choose_runs_old_fake_qemu_single_threaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HCSSHIM_ACCEL", "tcg")
    chosen = asyncio.run(accel.choose(_fake_qemu(tmp_path, "7.2.19"), "/k"))
    assert (chosen.name, chosen.spec) == ("tcg", "tcg,thread=single")
    assert chosen.qemu_version.numbers == (7, 2, 19) and "older than 8.1" in chosen.why
    new = asyncio.run(accel.choose(_fake_qemu(tmp_path, "10.0.2"), "/k"))
    assert new.spec == "tcg,thread=multi"


def test_choose_passes_a_full_forced_spec_verbatim(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HCSSHIM_ACCEL", "tcg,thread=multi")
    chosen = asyncio.run(accel.choose(_fake_qemu(tmp_path, "7.2.19"), "/k"))
    assert chosen.spec == "tcg,thread=multi" and chosen.why == "forced by HCSSHIM_ACCEL"
