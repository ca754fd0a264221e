"""UVM templates end to end: a real UVM booted once and saved, clones restored from it with real
QEMU and the real agent, each with its own identity, running containers; a changed kernel is a new
template and the stale one is removed."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from hcsshim import settings
from hcsshim.uvm.document import default_lcow_document
from hcsshim.uvm.template import COMPLETE_FILE, TemplateStore
from hcsshim.uvm.utility_vm import UtilityVM
from tests.support.procs import argvs
from tests.support.uvm import boot_files, have_root_and_qemu, make_busybox_vhd, qemu_processes, run_busybox

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.root,
    pytest.mark.skipif(not have_root_and_qemu(), reason="needs root and qemu-system-x86_64"),
    pytest.mark.skipif(boot_files() is None, reason="needs the UVM image (hcsshim uvm build)"),
    pytest.mark.timeout(900),
]

IDENTITY = "cat /run/hcsshim/machine-id; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s"


def _qemu_argv(vm: UtilityVM) -> list[str]:
    want = f"guest={vm.id}@vm".encode()
    for _, argv in argvs():
        if any(want in a for a in argv):
            return [a.decode(errors="replace") for a in argv]
    raise AssertionError(f"no QEMU process for {vm.id}")


async def _identity(vm: UtilityVM) -> tuple[str, str, int]:
    rc, out, err = await vm.exec_in_uvm(["sh", "-c", IDENTITY])
    assert rc == 0, err
    machine_id, rand, clock = out.decode().split()
    return machine_id, rand, int(clock)


def test_clones_of_one_template_are_distinct_and_run_containers(tmp_path: Path) -> None:
    store = TemplateStore(str(tmp_path / "templates"))
    layer_vhd = make_busybox_vhd(tmp_path)
    before = set(qemu_processes())

    async def scenario() -> None:
        clones: list[UtilityVM] = []
        try:
            for n in range(2):
                vm = await store.clone(f"tpl-e2e-{os.getpid()}-{n}", default_lcow_document(f"tpl-{n}"))
                clones.append(vm)
                await vm.start(timeout=120)
                assert vm.restored
                argv = _qemu_argv(vm)
                assert "-incoming" in argv, argv
                assert any("share=off,readonly=on,rom=off" in a for a in argv), argv
            # The template VM is gone once saved: only the clones run.
            assert set(qemu_processes()) - before == {_pid(c) for c in clones}
            (ida, randa, clocka), (idb, randb, clockb) = [await _identity(c) for c in clones]
            assert ida != idb, "two clones share a machine id"
            assert randa != randb, "two clones produce the same random stream"
            assert len(ida) == 32 and len(randa) == 64
            # A restored guest's wall clock is set by its host, not left at the template's save time.
            assert abs(clocka - time.time()) < 30 and abs(clockb - time.time()) < 30
            # Each clone runs containers on its own; a write in one is not seen in the other.
            for n, vm in enumerate(clones):
                layer = await vm.add_scsi(layer_vhd, read_only=True)
                code, out, _ = await run_busybox(
                    vm, layer.guest_path, f"c{n}", ["sh", "-c", f"echo clone-{n}; exit 3"]
                )
                assert (code, out) == (3, f"clone-{n}\n".encode())
            rc, out, _ = await clones[0].exec_in_uvm(
                ["sh", "-c", "ls /dev/shm; echo mine >/run/only-in-0; echo ok"]
            )
            assert rc == 0 and out.decode().strip().endswith("ok")
            rc, out, _ = await clones[1].exec_in_uvm(
                ["sh", "-c", "test -e /run/only-in-0 && echo leaked || echo clean"]
            )
            assert out.decode().strip() == "clean"
        finally:
            for vm in clones:
                await vm.terminate()

    asyncio.run(scenario())
    assert set(qemu_processes()) - before == set()
    [entry] = store.list()
    assert os.path.isfile(os.path.join(entry["dir"], COMPLETE_FILE))


def _pid(vm: UtilityVM) -> int:
    pid = getattr(vm.system, "pid", None)
    assert isinstance(pid, int)
    return pid


def test_a_changed_kernel_is_a_new_template_and_the_stale_one_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot = boot_files()
    assert boot is not None
    private = tmp_path / "boot"
    shutil.copytree(boot, private, ignore=shutil.ignore_patterns(".cache", "vmlinux"))
    store = TemplateStore(str(tmp_path / "templates"))
    monkeypatch.setenv("HCSSHIM_BOOT_FILES", str(private))
    settings.reset()  # boot_files() above already loaded them

    async def one(n: int) -> str:
        vm = await store.clone(f"tpl-stale-{os.getpid()}-{n}", default_lcow_document(f"stale-{n}"))
        try:
            await vm.start(timeout=120)
            rc, _, _ = await vm.exec_in_uvm(["true"])
            assert rc == 0
            return str(vm.document["VirtualMachine"]["RestoreState"]["TemplateSystemId"])
        finally:
            await vm.terminate()

    first = asyncio.run(one(0))
    assert asyncio.run(one(1)) == first  # the same configuration reuses its template
    kernel = private / "kernel"
    st = kernel.stat()
    os.utime(kernel, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = asyncio.run(one(2))
    assert second != first
    assert [e["key"] for e in store.list()] == [second]
    assert not (tmp_path / "templates" / first).exists()


def test_template_build_ahead_of_time_then_pods_reuse_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = str(tmp_path / "templates")
    cli = [sys.executable, "-m", "hcsshim.cli.main", "uvm", "template", "--root", root]
    first = subprocess.run([*cli, "build"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    key, directory = first.stdout.split()
    assert os.path.isfile(os.path.join(directory, COMPLETE_FILE))
    again = subprocess.run([*cli, "build"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.split()[0] == key  # nothing rebuilt
    listing = subprocess.run([*cli, "list"], capture_output=True, text=True, timeout=60).stdout
    assert key in listing
    memory = "io.microsoft.virtualmachine.computetopology.memory.sizeinmb"
    bad = subprocess.run(
        [*cli, "build", "--annotation", f"{memory}=lots"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1 and memory in bad.stderr and "lots" in bad.stderr, bad.stderr
    assert sorted(os.listdir(root)) == sorted([f".{key}.lock", key])  # nothing of the failed build
