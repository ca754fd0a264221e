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
    monkeypatch.setattr(accel, "CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    probes: list[str] = []

    async def fake_probe(qemu: str, kernel: str, timeout: float = 0) -> tuple[bool, str]:
        probes.append(kernel)
        return False, "fake: hangs"

    monkeypatch.setattr(accel, "probe_kvm", fake_probe)
    assert asyncio.run(accel.choose_accel("qemu", "/k")) == ("tcg", "fake: hangs")
    assert asyncio.run(accel.choose_accel("qemu", "/k")) == ("tcg", "cached probe: fake: hangs")
    assert probes == ["/k"]
