"""The warm pool's policy (uvm/pool.py) over fake parked clones, its configuration, and the backend's
handling of a QEMU it did not start (hcs/qemu/foreign.py) with fake QEMUs: python processes whose
argv names the directory they were "parked" in."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hcsshim import hcs, settings
from hcsshim.annotations.parse import AnnotationError
from hcsshim.api.runhcs.options import runhcs_pb2
from hcsshim.hcs import ErrElementNotFound
from hcsshim.hcs.qemu import foreign
from hcsshim.hcs.qemu.system import state_dir_for, sweep_stale_state
from hcsshim.shim import manager
from hcsshim.shim.host import pool_config
from hcsshim.uvm import pool as pool_mod
from hcsshim.uvm.pool import ENTRY_FILE, Pool
from hcsshim.uvm.template import COMPLETE_FILE, PoolConfig, TemplateStore
from hcsshim.uvm.utility_vm import UtilityVM

SIZE = "io.hcsshim.virtualmachine.pool.size"
MEMORY = "io.hcsshim.virtualmachine.pool.memory_mb"

# ---- configuration ---------------------------------------------------------------------------------


def test_pool_is_off_by_default_and_annotations_set_it() -> None:
    assert pool_config({}, None) == PoolConfig(0, 0)
    assert not pool_config({}, None).enabled
    assert pool_config({"annotations": {SIZE: "3", MEMORY: "2048"}}, None) == PoolConfig(3, 2048)


def test_the_runtime_handlers_default_annotations_set_the_pool_and_the_spec_wins() -> None:
    options = runhcs_pb2.Options()
    options.default_container_annotations[SIZE] = "2"
    assert pool_config({}, options) == PoolConfig(2, 0)
    assert pool_config({"annotations": {SIZE: "0"}}, options) == PoolConfig(0, 0)


def test_the_environment_gives_the_default_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCSSHIM_UVM_POOL_SIZE", "4")
    monkeypatch.setenv("HCSSHIM_UVM_POOL_MEMORY_MB", "512")
    settings.reset()
    assert pool_config({}, None) == PoolConfig(4, 512)
    monkeypatch.setenv("HCSSHIM_UVM_POOL_SIZE", "many")
    settings.reset()
    with pytest.raises(ValueError, match="HCSSHIM_UVM_POOL_SIZE"):
        pool_config({}, None)


@pytest.mark.parametrize(
    ("annotations", "key"),
    [({SIZE: "two"}, SIZE), ({SIZE: "-1"}, SIZE), ({SIZE: "65"}, SIZE), ({MEMORY: "1G"}, MEMORY)],
)
def test_an_invalid_pool_annotation_fails_naming_it(annotations: dict[str, str], key: str) -> None:
    with pytest.raises(AnnotationError) as info:
        pool_config({"annotations": annotations}, None)
    assert info.value.key == key and key in str(info.value)


# ---- a fake pool ------------------------------------------------------------------------------------


class FakeBackend:
    """Stands in for hcs park/adopt/destroy: a parked clone is a directory; adopting renames it
    (as the qemu backend does), so two claimers really race on one rename."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.parked: list[str] = []
        self.destroyed: list[str] = []
        self.adopted: list[str] = []
        self.dead: set[str] = set()
        self.next_pid = 1000
        self.fail_park = False

    async def park(self, directory: str, document: Any) -> int:
        await asyncio.sleep(0)
        if self.fail_park:
            raise hcs.ErrInvalidData("ParkComputeSystem", "x", "fake QEMU would not start")
        os.makedirs(directory, exist_ok=True)
        Path(directory, "qmp.sock").write_text("")
        self.parked.append(directory)
        self.next_pid += 1
        return self.next_pid

    async def adopt(self, system_id: str, directory: str, document: Any) -> Any:
        target = str(self.tmp / "state" / system_id)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        await asyncio.sleep(0)  # let a second claimer reach the same entry
        try:
            os.rename(directory, target)
        except FileNotFoundError:
            raise ErrElementNotFound("AdoptComputeSystem", system_id, "taken") from None
        self.adopted.append(system_id)
        return ("system", system_id, target)

    def alive(self, directory: str) -> bool:
        return os.path.basename(directory) not in self.dead

    def destroy(self, directory: str) -> None:
        self.destroyed.append(directory)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    backend = FakeBackend(tmp_path)
    monkeypatch.setattr(hcs, "park_clone", backend.park)
    monkeypatch.setattr(hcs, "adopt_parked_clone", backend.adopt)
    monkeypatch.setattr(hcs, "parked_clone_alive", backend.alive)
    monkeypatch.setattr(hcs, "destroy_parked_clone", backend.destroy)
    return backend


def _template(tmp_path: Path, created: float = 1.0) -> str:
    d = tmp_path / "templates" / "k1"
    d.mkdir(parents=True, exist_ok=True)
    (d / COMPLETE_FILE).write_text(json.dumps({"key": "k1", "created": created, "files": []}))
    return str(d)


def _document(template: str, memory_mb: int = 256) -> dict[str, Any]:
    return {
        "VirtualMachine": {
            "ComputeTopology": {"Memory": {"SizeInMB": memory_mb}},
            "RestoreState": {"SaveStateFilePath": template, "TemplateSystemId": "k1"},
        }
    }


def _pool(tmp_path: Path) -> Pool:
    return Pool(str(tmp_path / "pool"), TemplateStore(str(tmp_path / "templates")))


def test_fill_with_fake_parking_adds_up_to_the_size_and_is_idempotent(
    tmp_path: Path, fake: FakeBackend
) -> None:
    pool = _pool(tmp_path)
    doc = _document(_template(tmp_path))
    assert asyncio.run(pool.fill("k1", PoolConfig(2), doc)) == 2
    assert len(pool.ready("k1")) == 2 and len(fake.parked) == 2
    assert asyncio.run(pool.fill("k1", PoolConfig(2))) == 0  # full: nothing parked
    assert len(fake.parked) == 2
    meta = json.loads(Path(pool.ready("k1")[0], ENTRY_FILE).read_text())
    assert meta["memory_mb"] == 256 and meta["template_created"] == 1.0 and meta["pid"] > 1000


def test_a_second_filler_returns_at_once_while_one_waits_with_fake_parking(
    tmp_path: Path, fake: FakeBackend
) -> None:
    import fcntl

    pool = _pool(tmp_path)
    doc = _document(_template(tmp_path))
    os.makedirs(pool.key_dir("k1"))
    queue = os.open(os.path.join(pool.key_dir("k1"), pool_mod.QUEUE_LOCK), os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(queue, fcntl.LOCK_EX)  # a filler is already queued
        started = time.monotonic()
        assert asyncio.run(pool.fill("k1", PoolConfig(2), doc)) == 0
        assert time.monotonic() - started < 1 and fake.parked == []
    finally:
        os.close(queue)


def test_leftovers_of_a_killed_filler_are_destroyed_by_the_next_with_fake_parking(
    tmp_path: Path, fake: FakeBackend
) -> None:
    pool = _pool(tmp_path)
    doc = _document(_template(tmp_path))
    half = Path(pool.key_dir("k1"), ".b-deadbeef")
    half.mkdir(parents=True)
    (half / ENTRY_FILE).write_text(json.dumps({"memory_mb": 256}))
    assert asyncio.run(pool.fill("k1", PoolConfig(1), doc)) == 1
    assert str(half) in fake.destroyed and not half.exists()


def test_memory_cap_counts_every_key_with_fake_parking(tmp_path: Path, fake: FakeBackend) -> None:
    pool = _pool(tmp_path)
    template = _template(tmp_path)
    other = Path(pool.key_dir("k0"), "e-other")
    other.mkdir(parents=True)
    record = {"memory_mb": 512, "template": template, "template_created": 1.0}
    (other / ENTRY_FILE).write_text(json.dumps(record))
    doc = _document(template, memory_mb=256)
    # 512 of another key + 2 x 256 = 1024: a third would pass the cap.
    assert asyncio.run(pool.fill("k1", PoolConfig(size=5, memory_mb=1024), doc)) == 2
    assert pool.reserved_mb() == 1024
    assert asyncio.run(pool.fill("k1", PoolConfig(size=5, memory_mb=1024))) == 0


def test_a_failing_park_stops_the_fill_and_leaves_nothing_with_fake_parking(
    tmp_path: Path, fake: FakeBackend
) -> None:
    pool = _pool(tmp_path)
    fake.fail_park = True
    assert asyncio.run(pool.fill("k1", PoolConfig(3), _document(_template(tmp_path)))) == 0
    assert pool.entries() == []


def test_two_claimers_race_for_one_fake_entry_and_one_wins(tmp_path: Path, fake: FakeBackend) -> None:
    pool = _pool(tmp_path)
    doc = _document(_template(tmp_path))
    asyncio.run(pool.fill("k1", PoolConfig(1), doc))

    async def both() -> list[Any]:
        return list(await asyncio.gather(pool.claim("a@vm", "k1", doc), pool.claim("b@vm", "k1", doc)))

    results = asyncio.run(both())
    assert sorted(r is None for r in results) == [False, True]
    assert len(fake.adopted) == 1 and pool.ready("k1") == []


def test_claim_on_an_empty_pool_returns_none_at_once_with_fake_backend(
    tmp_path: Path, fake: FakeBackend
) -> None:
    pool = _pool(tmp_path)
    assert asyncio.run(pool.claim("a@vm", "k1", _document(_template(tmp_path)))) is None
    assert fake.adopted == []


def test_claim_discards_stale_and_dead_fake_entries_and_falls_back(tmp_path: Path, fake: FakeBackend) -> None:
    pool = _pool(tmp_path)
    template = _template(tmp_path, created=1.0)
    doc = _document(template)
    asyncio.run(pool.fill("k1", PoolConfig(2), doc))
    _, second = pool.ready("k1")
    fake.dead.add(os.path.basename(second))
    _template(tmp_path, created=2.0)  # rebuilt since the entries were parked
    assert asyncio.run(pool.claim("a@vm", "k1", doc)) is None
    assert fake.adopted == [] and pool.ready("k1") == []
    assert len(fake.destroyed) == 2


def test_claim_skips_an_entry_whose_adoption_fails_with_fake_backend(
    tmp_path: Path, fake: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = _pool(tmp_path)
    doc = _document(_template(tmp_path))
    asyncio.run(pool.fill("k1", PoolConfig(2), doc))
    calls: list[str] = []

    async def flaky(system_id: str, directory: str, document: Any) -> Any:
        calls.append(directory)
        if len(calls) == 1:
            raise hcs.ErrVmcomputeUnexpectedExit("AdoptComputeSystem", system_id, "the parked QEMU is gone")
        return await fake.adopt(system_id, directory, document)

    monkeypatch.setattr(hcs, "adopt_parked_clone", flaky)
    assert asyncio.run(pool.claim("a@vm", "k1", doc)) is not None
    assert len(calls) == 2


def test_clone_with_a_pool_claims_or_restores_and_refills_with_fake_backend(
    tmp_path: Path, fake: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hcsshim.uvm import template as uvm_template

    template = _template(tmp_path)
    store = TemplateStore(str(tmp_path / "templates"))
    monkeypatch.setenv("HCSSHIM_RUN_DIR", str(tmp_path / "run"))
    settings.reset()

    async def fake_key(document: Any) -> str:
        return "k1"

    async def fake_ensure(self: TemplateStore, key: str, doc: Any) -> str:
        return template

    restored: list[str] = []

    class FakeVm:
        def __init__(self) -> None:
            self.on_ready: list[Any] = []

    async def fake_create(uvm_id: str, document: Any = None, **_: Any) -> FakeVm:
        restored.append(uvm_id)
        return FakeVm()

    refills: list[tuple[str, PoolConfig]] = []
    monkeypatch.setattr(uvm_template, "template_key", fake_key)
    monkeypatch.setattr(TemplateStore, "ensure", fake_ensure)
    monkeypatch.setattr(UtilityVM, "create", fake_create)
    monkeypatch.setattr(Pool, "refill_in_background", lambda self, k, d, c: refills.append((k, c)))
    doc = {"VirtualMachine": {"ComputeTopology": {"Memory": {"SizeInMB": 256}}}}
    config = PoolConfig(1)

    first: Any = asyncio.run(store.clone("p0", doc, pool=config))
    assert isinstance(first, FakeVm) and restored == ["p0"]  # empty: restored at once
    assert refills == []  # not while the UVM starts: once it is ready
    for ready in first.on_ready:
        ready()
    assert refills == [("k1", config)]
    asyncio.run(Pool(store=store).fill("k1", config, _document(template)))
    vm = asyncio.run(store.clone("p1", doc, pool=config))
    claimed: object = vm.system
    assert claimed == ("system", "p1@vm", str(tmp_path / "state" / "p1@vm")) and vm.restored
    assert restored == ["p0"] and len(vm.on_ready) == 1
    last: Any = asyncio.run(store.clone("p2", doc))
    assert isinstance(last, FakeVm) and last.on_ready == []  # no pool: no claim, no refill
    assert restored == ["p0", "p2"]


def test_drain_removes_every_fake_entry_and_the_pool_directory(tmp_path: Path, fake: FakeBackend) -> None:
    pool = _pool(tmp_path)
    asyncio.run(pool.fill("k1", PoolConfig(2), _document(_template(tmp_path))))
    Path(pool.key_dir("k1"), ".b-halfway").mkdir()
    assert len(pool.drain()) == 3
    assert not os.path.exists(pool.root)


def test_pool_cli_lists_and_drains_a_fake_pool(
    tmp_path: Path, fake: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    from hcsshim.cli.main import main as cli_main

    pool = _pool(tmp_path)
    asyncio.run(pool.fill("k1", PoolConfig(1), _document(_template(tmp_path))))
    root = ["uvm", "pool", "--root", pool.root, "--templates", str(tmp_path / "templates")]
    assert cli_main([*root, "list"]) == 0
    out = capsys.readouterr().out
    assert "k1" in out and "ready" in out and "256 MB" in out
    assert cli_main([*root, "drain"]) == 0
    assert "removed" in capsys.readouterr().out
    assert cli_main([*root, "list"]) == 0
    assert "no pooled uvms" in capsys.readouterr().out


# ---- a QEMU the backend did not start -------------------------------------------------------------


def _wait_for_argv(pid: int, needle: str) -> None:
    """Until the exec has set the argv (it is empty for a moment after the exec returns)."""
    deadline = time.monotonic() + 10
    while not foreign.names(pid, needle) and time.monotonic() < deadline:
        time.sleep(0.01)


def _killed(proc: subprocess.Popen[bytes]) -> bool:
    # -9, or 0 when the backend reaped our child itself before Popen could (it waits for its kills)
    return proc.wait(timeout=10) in (-9, 0) and not os.path.exists(f"/proc/{proc.pid}")


def _fake_parked_qemu(directory: str) -> subprocess.Popen[bytes]:
    """A fake QEMU: a process whose argv names the directory it was parked in."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-chardev", directory])
    _wait_for_argv(proc.pid, directory)
    record = {"pid": proc.pid, "origin": directory, "memory_mb": 256}
    os.makedirs(directory, exist_ok=True)
    Path(directory, foreign.PARKED_FILE).write_text(json.dumps(record))
    Path(directory, "qemu.pid").write_text(str(proc.pid))
    return proc


def test_shim_delete_kills_the_fake_qemu_of_a_claimed_pool_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HCSSHIM_RUN_DIR", str(tmp_path))
    settings.reset()
    origin = str(tmp_path / "pool" / "k1" / ".b-0123")
    proc = _fake_parked_qemu(origin)
    try:
        state = state_dir_for("pod-y@vm")
        os.makedirs(os.path.dirname(state))
        os.rename(origin, state)  # claimed: its argv no longer names its directory
        manager.kill_uvm("pod-y")
        assert _killed(proc)
        assert not os.path.exists(state)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_sweep_kills_the_fake_qemu_of_an_adopter_that_died(tmp_path: Path) -> None:
    root = tmp_path / "qemu"
    origin = str(tmp_path / "pool" / "e-1")
    proc = _fake_parked_qemu(origin)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        state = root / "pod-z"
        root.mkdir()
        os.rename(origin, state)
        Path(state, foreign.OWNER_FILE).write_text(f"{dead.pid} 12345")
        sweep_stale_state(str(root))
        assert _killed(proc)
        assert not state.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_live_adopter_keeps_its_fake_qemu_through_a_sweep(tmp_path: Path) -> None:
    root = tmp_path / "qemu"
    root.mkdir()
    state = str(root / "pod-w")
    proc = _fake_parked_qemu(state)
    try:
        foreign.write_owner(state)
        assert not foreign.owner_gone(state)
        sweep_stale_state(str(root))
        assert proc.poll() is None and os.path.isdir(state)
    finally:
        proc.kill()
        proc.wait()


def test_a_foreign_fake_qemu_is_watched_through_a_pidfd_and_its_status_read(tmp_path: Path) -> None:
    needle = str(tmp_path / "parked-here")
    # Started by a shell that exits at once: the fake QEMU is not our child.
    child = f"{sys.executable} -c 'import time, sys; time.sleep(0.5); sys.exit(7)' {needle}"
    script = f"{child} >/dev/null 2>&1 & echo $!"
    pid = int(subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout)
    _wait_for_argv(pid, needle)

    async def main() -> int | None:
        proc = foreign.ForeignProcess.open(pid, needle)
        proc.watch()
        assert proc.running
        code = await asyncio.wait_for(proc.wait(), 10)
        assert not proc.running
        return code

    assert asyncio.run(main()) in (7, None)  # None only where the kernel cannot say (before 6.15)
    with pytest.raises(ProcessLookupError):
        foreign.ForeignProcess.open(os.getpid(), needle)  # a pid whose argv does not name it


def test_a_parked_clone_listens_on_its_own_qmp_socket(tmp_path: Path) -> None:
    from hcsshim.hcs.qemu.cmdline import build_argv
    from hcsshim.hcs.qemu.config import parse_document
    from hcsshim.hcs.qemu.parked import paths_in

    for name in ("kernel", "initrd.img"):
        (tmp_path / name).write_bytes(b"x")
    saved = tmp_path / "tpl"
    saved.mkdir()
    for name in ("memory", "state"):
        (saved / name).write_bytes(b"")
    doc = {
        "VirtualMachine": {
            "Chipset": {
                "LinuxKernelDirect": {
                    "KernelFilePath": str(tmp_path / "kernel"),
                    "InitRdPath": str(tmp_path / "initrd.img"),
                }
            },
            "ComputeTopology": {"Memory": {"SizeInMB": 256}, "Processor": {"Count": 1}},
            "RestoreState": {"SaveStateFilePath": str(saved)},
        }
    }
    cfg = parse_document(doc, "p")
    paths = paths_in("/run/hcsshim/pool/k/.b-1")
    parked = build_argv("qemu-system-x86_64", "p", cfg, paths, "tcg", qmp_server=True)
    assert f"socket,id=qmp,path={paths.qmp},server=on,wait=off" in parked
    assert "-incoming" in parked and "-S" in parked
    created = build_argv("qemu-system-x86_64", "p", cfg, paths, "tcg")
    assert f"socket,id=qmp,path={paths.qmp}" in created  # a created VM's QEMU dials its creator


def test_a_detached_filler_is_spawned_at_sched_idle_and_refuses_a_gone_template(tmp_path: Path) -> None:
    pool = _pool(tmp_path)
    doc = _document(str(tmp_path / "templates" / "gone"))
    pool._spawn_filler("k1", doc, PoolConfig(1))
    seen: set[int] = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.SCHED_IDLE not in seen:
        for pid in pool_mod._fillers(pool.root, "k1"):
            with contextlib.suppress(OSError):
                seen.add(os.sched_getscheduler(pid))
        if not seen and not any(pool_mod._fillers(pool.root, "k1")):
            break  # gone before it could be looked at
        time.sleep(0.005)
    assert os.SCHED_IDLE in seen or not seen, seen
    pool_mod._wait(functools.partial(pool_mod._no_fillers, pool.root, "k1"), 60)  # idle: may wait
    log = Path(pool.key_dir("k1"), "filler.log").read_text()
    assert "not filling the warm pool" in log and pool.ready("k1") == []


def test_no_filler_is_spawned_where_the_fake_host_cannot_park(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pool = _pool(tmp_path)
    doc = _document(str(tmp_path / "templates" / "t"))
    monkeypatch.setattr(hcs, "parking_unsupported", lambda: "this host uses vsock (fake)")
    spawned: list[object] = []

    def fake_spawn(*args: object, **kwargs: object) -> int:
        spawned.append(args)
        return 1

    monkeypatch.setattr(os, "posix_spawn", fake_spawn)
    with caplog.at_level(logging.INFO, logger=pool_mod.log.name):
        pool._spawn_filler("k1", doc, PoolConfig(1))
    assert spawned == [] and not os.path.exists(Path(pool.key_dir("k1"), "filler.log"))
    assert any(getattr(r, "why", "") == "this host uses vsock (fake)" for r in caplog.records)
