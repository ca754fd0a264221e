"""ShimKind holds the functions themselves; the wrappers import their modules only when called, so
``start`` and ``delete`` (which import kind and the manager) do not load the builder or the service."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
from typing import Any

import pytest

from hcsshim.shim import host, local, manager
from hcsshim.shim.kind import PROCESS_V2, RUNHCS_V1


def test_every_kind_holds_callables() -> None:
    for kind in (RUNHCS_V1, PROCESS_V2):
        assert inspect.iscoroutinefunction(kind.host_factory), kind.binary
        assert callable(kind.cleanup), kind.binary


def test_host_factories_call_through_to_fake_factories(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str, dict[str, Any], object]] = []

    def fake(name: str) -> Any:
        async def factory(host_id: str, spec: dict[str, Any], options: object) -> Any:
            calls.append((name, host_id, spec, options))
            return name

        return factory

    monkeypatch.setattr(host, "create_uvm", fake("uvm"))
    monkeypatch.setattr(local, "create_local_host", fake("local"))
    spec = {"annotations": {"a": "b"}}

    async def both() -> list[object]:
        return [
            await RUNHCS_V1.host_factory("pod1", spec, None),
            await PROCESS_V2.host_factory("pod2", spec, None),
        ]

    assert asyncio.run(both()) == ["uvm", "local"]
    assert calls == [("uvm", "pod1", spec, None), ("local", "pod2", spec, None)]


def test_cleanups_call_through_to_fake_cleanups(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(manager, "kill_uvm", lambda task_id: seen.append(("uvm", task_id)))
    monkeypatch.setattr(local, "cleanup", lambda task_id: seen.append(("local", task_id)))
    RUNHCS_V1.cleanup("t1")
    PROCESS_V2.cleanup("t2")
    assert seen == [("uvm", "t1"), ("local", "t2")]


def test_start_and_delete_do_not_import_the_builder_or_the_service() -> None:
    # A fresh interpreter: what `containerd-shim-runhcs-v1 start` loads before it forks the server.
    code = (
        "import sys\n"
        "import hcsshim.cli.shim_runhcs_v1, hcsshim.cli.shim_process_v2, hcsshim.shim.manager\n"
        "heavy = ['hcsshim.builder', 'hcsshim.shim.host', 'hcsshim.shim.service_task',\n"
        "         'hcsshim.shim.local', 'hcsshim.uvm', 'hcsshim.hcs', 'hcsshim.gcs.bridge']\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
