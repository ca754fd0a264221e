"""The warm pool end to end: real QEMUs parked paused by a filler, claimed by UVM starts through the
same path a shim takes (TemplateStore.clone with a pool), each claimed clone running the very QEMU
that was parked, with an identity of its own, running a container; drain leaves nothing."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from hcsshim import settings
from hcsshim.cli.main import main as cli_main
from hcsshim.shim.host import build_uvm_document
from hcsshim.uvm.pool import Pool
from hcsshim.uvm.template import PoolConfig, TemplateStore, restored_document
from hcsshim.uvm.utility_vm import UtilityVM
from tests.support.uvm import boot_files, have_root_and_qemu, make_busybox_vhd, qemu_processes, run_busybox

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.root,
    pytest.mark.skipif(not have_root_and_qemu(), reason="needs root and qemu-system-x86_64"),
    pytest.mark.skipif(boot_files() is None, reason="needs the UVM image (hcsshim uvm build)"),
    pytest.mark.timeout(600),
]

IDENTITY = "cat /run/hcsshim/machine-id; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo"


async def _identity(vm: UtilityVM) -> tuple[str, str]:
    rc, out, err = await vm.exec_in_uvm(["sh", "-c", IDENTITY])
    assert rc == 0, err
    machine_id, rand = out.decode().split()
    return machine_id, rand


def _pid(vm: UtilityVM) -> int:
    pid = getattr(vm.system, "pid", None)
    assert isinstance(pid, int)
    return pid


def test_pod_uvms_claim_parked_clones_and_drain_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = TemplateStore()
    pool = Pool(store=store)
    assert not pool.keys(), f"a warm pool is already in {pool.root}"
    layer_vhd = make_busybox_vhd(tmp_path)
    before = set(qemu_processes())
    state_root = settings.current().qemu_state_dir
    config = PoolConfig(size=2)

    async def scenario() -> str:
        doc = build_uvm_document("pool-e2e", {}, None).to_dict()
        key, directory = await store.build_for(doc)
        assert await pool.fill(key, config, restored_document(doc, key, directory)) == 2
        parked = {int(e["pid"]) for e in pool.entries() if e["state"] == "ready"}
        assert len(parked) == 2 and parked <= set(qemu_processes())
        vms: list[UtilityVM] = []
        try:
            for n in range(2):
                uvm_id = f"pool-e2e-{os.getpid()}-{n}"
                vm = await store.clone(uvm_id, build_uvm_document(uvm_id, {}, None), pool=config)
                vms.append(vm)
                # The claim is the parked QEMU itself, not a new one.
                assert _pid(vm) in parked, (_pid(vm), parked)
                await vm.start(timeout=120)
                assert vm.restored
            assert {_pid(vm) for vm in vms} == parked
            (ida, randa), (idb, randb) = [await _identity(vm) for vm in vms]
            assert ida != idb, "two pooled clones share a machine id"
            assert randa != randb, "two pooled clones produce the same random stream"
            assert ida == vms[0].machine_id and idb == vms[1].machine_id
            layer = await vms[0].add_scsi(layer_vhd, read_only=True)
            code, out, _ = await run_busybox(
                vms[0], layer.guest_path, "c0", ["sh", "-c", "echo pooled; exit 3"]
            )
            assert (code, out) == (3, b"pooled\n")
        finally:
            for vm in vms:
                await vm.terminate()
        return key

    key = asyncio.run(scenario())
    # The claims started a detached filler (at SCHED_IDLE) that parks new clones up to the size.
    deadline = time.monotonic() + 90
    while len(pool.ready(key)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    refilled = {int(e["pid"]) for e in pool.entries() if e["state"] == "ready"}
    assert len(refilled) == 2, pool.entries()
    assert cli_main(["uvm", "pool", "list"]) == 0
    listing = capsys.readouterr().out
    assert all(str(pid) in listing for pid in refilled), listing
    assert cli_main(["uvm", "pool", "drain"]) == 0
    assert not os.path.exists(pool.root), os.listdir(pool.root)
    assert set(qemu_processes()) - before == set()
    leftover = (
        [n for n in os.listdir(state_root) if n.startswith("pool-e2e")] if os.path.isdir(state_root) else []
    )
    assert leftover == []
