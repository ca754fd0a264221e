"""UVM boot benchmark: create-to-agent-ready time of a UtilityVM from the default LCOW document
(the builder's V2 document over the boot files; median of several boots), next to the floor
measured in the same run: the same kernel under bare QEMU booting a busybox init that only prints a
ready line. Also the QEMU RSS and the guest's free memory after boot."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import _qemu

from hcsshim.hcs import document_to_dict
from hcsshim.hcs.qemu.system import QemuComputeSystem, qemu_binary
from hcsshim.uvm.document import boot_files_path, default_lcow_document
from hcsshim.uvm.utility_vm import UtilityVM
from tests.support.uvm import FLOOR_READY, build_floor_initrd

BOOTS = int(os.environ.get("BENCH_UVM_BOOTS", "3"))
MEMORY_MB = 1024
CPUS = 2


def floor_initrd(boot_files: str, work: str) -> tuple[str, str]:
    """(initrd, ready marker): the image's floor-initrd.img when `hcsshim uvm build` made one (it
    prints "READY <uptime>"), else a busybox one built here."""
    built = os.path.join(boot_files, "floor-initrd.img")
    if os.path.isfile(built):
        return built, "READY "
    return build_floor_initrd(os.path.join(work, "floor-initrd.img")), FLOOR_READY


def floor_boot(kernel: str, initrd: str, marker: str, accel: str, work: str) -> float:
    console = os.path.join(work, "floor-console.log")
    if os.path.exists(console):
        os.unlink(console)
    argv = [
        qemu_binary(),
        *("-nodefaults", "-no-user-config", "-nographic", "-no-reboot"),
        *("-machine", "pc", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max"),
        *("-m", str(MEMORY_MB), "-smp", str(CPUS)),
        *("-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet"),
        *("-serial", f"file:{console}"),
    ]

    def ready() -> bool:
        try:
            with open(console, errors="replace") as f:
                return marker in f.read()
        except FileNotFoundError:
            return False

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        while True:
            exited = proc.poll() is not None
            if ready():
                return time.perf_counter() - t0
            if exited:
                raise RuntimeError(f"floor QEMU exited {proc.returncode} before it was ready")
            if time.perf_counter() - t0 > 120:
                raise RuntimeError("floor boot did not become ready within 120s")
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()


def _meminfo(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


async def uvm_boot(n: int) -> tuple[float, int, int, int]:
    """(create-to-ready seconds, QEMU RSS, guest MemFree, guest MemAvailable)."""
    doc = document_to_dict(default_lcow_document(f"bench-{n}"))
    topology = doc["VirtualMachine"]["ComputeTopology"]
    assert topology["Memory"]["SizeInMB"] == MEMORY_MB and topology["Processor"]["Count"] == CPUS
    t0 = time.perf_counter()
    vm = await UtilityVM.create(f"bench-{os.getpid()}-{n}", doc)
    try:
        await vm.start(timeout=180)
        elapsed = time.perf_counter() - t0
        rss = vm.system.rss_bytes() if isinstance(vm.system, QemuComputeSystem) else 0
        code, out, _ = await vm.exec_in_uvm(["cat", "/proc/meminfo"])
        text = out.decode() if code == 0 else ""
        return elapsed, rss, _meminfo(text, "MemFree"), _meminfo(text, "MemAvailable")
    finally:
        await vm.terminate()


def mib(n: float) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def main() -> int:
    root = boot_files_path()
    kernel = os.path.join(root, "kernel")
    if not os.path.isfile(kernel) or not os.path.isfile(os.path.join(root, "initrd.img")):
        print(f"uvm_boot: no UVM image in {root}; run `hcsshim uvm build` first")
        return 1
    chosen = _qemu.chosen()
    accel = chosen.spec
    with tempfile.TemporaryDirectory(prefix="hcsshim-bench-") as work:
        initrd, marker = floor_initrd(root, work)
        floors = [floor_boot(kernel, initrd, marker, accel, work) for _ in range(BOOTS)]
    results = [asyncio.run(uvm_boot(i)) for i in range(BOOTS)]
    boots = [r[0] for r in results]
    floor, uvm = statistics.median(floors), statistics.median(boots)
    rss = statistics.median(r[1] for r in results)
    free = statistics.median(r[2] for r in results)
    avail = statistics.median(r[3] for r in results)
    print(f"{_qemu.describe(chosen)}; {BOOTS} boots each; {MEMORY_MB} MiB, {CPUS} vCPUs")
    print(f"{'measure':44} {'median':>10} {'samples'}")
    print(f"{'floor: kernel + busybox init to ready (s)':44} {floor:>10.2f} {[round(x, 2) for x in floors]}")
    print(f"{'UtilityVM create to agent ready (s)':44} {uvm:>10.2f} {[round(x, 2) for x in boots]}")
    print(f"{'ratio (UVM / floor)':44} {uvm / floor:>10.2f}")
    print(f"{'QEMU process RSS after boot':44} {mib(rss):>10}")
    print(f"{'guest MemFree after boot':44} {mib(free):>10}")
    print(f"{'guest MemAvailable after boot':44} {mib(avail):>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
