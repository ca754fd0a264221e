"""Regression tests for the frozen guest: static-key live patching under multi-threaded TCG.

QEMU before 8.1 could run a stale translation of a page the guest kernel was patching through a
temporary INT3 (text_poke_bp); both vCPUs then spun in the int3 handler forever and the agent never
ran again. Each test boots a UVM of its own (a frozen guest must not take the shared one down), keeps
both vCPUs translating kernel code with fork loops while a static key is flipped, and asks the agent
for its stacks every half second throughout: each answer must come within ANSWER_WITHIN and the
stress must finish.
- The scheduler's key: 3000 writes of `kernel.sched_schedstats` in a container, from its create on
  (memcg_kmem, the key that froze `runc create` in the first place, is on from boot: init holds the
  keys a container's cgroup would flip, see test_init_holds_the_cgroup_static_keys_on).
- The page allocator's key: 1500 cpuset mkdir/rmdir pairs in the UVM itself (cpusets_enabled_key),
  the hot path where the original freeze was caught.
- The kmem tracepoints' keys: 150 enables and disables of tracefs's `events/kmem`, whose sites sit
  in every page and slab allocation. This one catches the freeze: on QEMU 7.2.18 and 7.2.22 with
  thread=multi it froze every run, within seconds (both vCPUs at the allocator's tracepoint site,
  one in asm_exc_int3, the site already the final NOP; a soft lockup and an RCU stall follow).

To run them against another QEMU: HCSSHIM_QEMU=/path/to/qemu HCSSHIM_ACCEL=tcg,thread=multi (the
backend would otherwise make a QEMU older than 8.1 run TCG single-threaded)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hcsshim import loopwatch
from hcsshim.gcs.bridge import BridgeTimeoutError
from hcsshim.hcs.qemu.system import QemuComputeSystem
from hcsshim.uvm import UtilityVM
from tests.support.guest import container_document, oci_spec, read_all
from tests.support.loop_watch import GUEST_SLOW_CALLBACK_MS
from tests.support.uvm import STDIO_OUT, _layers, boot_files, boot_uvm, have_root_and_qemu, make_busybox_vhd

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.root,
    pytest.mark.timeout(600),
]

T = TypeVar("T")

FLIPS = 3000
# A healthy agent answers in well under a second even under TCG with all vCPUs busy; a frozen
# guest never answers. The bound is a hang guard, not a speed claim.
ANSWER_WITHIN = 15.0
# Fork loops on both vCPUs keep kernel code being retranslated while the stress patches it: the
# patching vCPU and the one translating stale code differ. `kill $pids` ends them.
FORK_LOOPS = """pids=""
for cpu in 0 1 1; do
    busybox taskset -c $cpu sh -c 'while :; do /bin/true; done' &
    pids="$pids $!"
done
"""
STRESS = f"""
test -w /proc/sys/kernel/sched_schedstats || {{ echo "sched_schedstats not writable"; exit 2; }}
{FORK_LOOPS}i=0
while [ $i -lt {FLIPS} ]; do
    echo 1 > /proc/sys/kernel/sched_schedstats
    echo 0 > /proc/sys/kernel/sched_schedstats
    i=$((i + 1))
    [ $((i % 500)) -eq 0 ] && echo "at $i"
done
kill $pids
echo "flipped $i"
"""


# Console lines that tell a frozen kernel from a starved agent: SysRq's CPU backtraces (where each
# vCPU is in the kernel, and whether in the int3 handler), lockup and stall reports (the soft-lockup
# watchdog needs about 20 s to speak, so the test waits for it).
_EVIDENCE = (
    "soft lockup",
    "rcu: INFO",
    "starved for",
    "NMI backtrace for cpu",
    "RIP: 0010:",
    "exc_int3",
    "hung_task",
)


def console_evidence(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if any(e in line for e in _EVIDENCE)]
    return [line for i, line in enumerate(lines) if i == 0 or line != lines[i - 1]][-30:]


async def frozen_guest_report(console: str, accel: str, error: BaseException) -> str:
    await asyncio.sleep(30)
    text = await asyncio.to_thread(Path(console).read_text, errors="replace")
    evidence = console_evidence(text)
    return (
        f"the agent did not answer within {ANSWER_WITHIN}s during the stress ({accel}): {error}; "
        f"console evidence 30 s later: {evidence}"
    )


async def while_the_agent_answers(vm: UtilityVM, work: Coroutine[Any, Any, T]) -> tuple[T, list[float]]:
    """Run `work` while asking the agent for its stacks every half second (answered by the agent
    alone: no runc, no file system); each answer must come within ANSWER_WITHIN. The answer times."""
    assert isinstance(vm.system, QemuComputeSystem) and vm.system.accel is not None
    accel = f"QEMU {vm.system.accel.qemu_version}, {vm.system.accel.spec}"
    console = vm.system.paths.console
    latencies: list[float] = []

    async def poll() -> None:
        while True:
            t0 = time.monotonic()
            try:
                await vm.bridge.dump_stacks(timeout=ANSWER_WITHIN)
            except BridgeTimeoutError as e:
                raise AssertionError(await frozen_guest_report(console, accel, e)) from e
            latencies.append(time.monotonic() - t0)
            await asyncio.sleep(0.5)

    poller = asyncio.ensure_future(poll())
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait({poller, task}, return_when=asyncio.FIRST_COMPLETED)
        if poller.done():
            poller.result()  # raises the agent's silence
        result = await task
    finally:
        for t in (poller, task):
            t.cancel()
        await asyncio.gather(poller, task, return_exceptions=True)
    assert latencies, "the stress ended before the agent was asked anything"
    return result, latencies


def test_static_key_stress_keeps_the_agent_answering(tmp_path: Path) -> None:
    assert have_root_and_qemu(), "the e2e group needs root and qemu-system-x86_64 (make test sets them up)"
    assert boot_files() is not None, "the e2e group needs the UVM image (make test builds it)"
    layer_vhd = make_busybox_vhd(tmp_path)

    async def run() -> tuple[int, bytes, list[float], str]:
        vm, _ = await boot_uvm(f"stress-{os.getpid()}")
        try:
            layer = await vm.add_scsi(layer_vhd, read_only=True)
            cid = "stress"
            bundle = f"/run/gcs/c/{cid}"
            layers = _layers(cid, f"{bundle}/rootfs", layer.guest_path)
            await vm.guest_modify("CombinedLayers", "Add", layers)
            spec = oci_spec(["sh", "-c", STRESS], root=f"{bundle}/rootfs")
            spec["root"]["readonly"] = True
            spec["linux"]["readonlyPaths"] = []  # the stress writes /proc/sys

            async def stress() -> tuple[int, bytes]:
                await vm.bridge.create_container(cid, container_document(bundle, spec))
                await vm.bridge.start_container(cid)
                proc = await vm.bridge.execute_process(cid, STDIO_OUT)
                out = await read_all(proc.stdout, 600)
                return await vm.bridge.wait_process(cid, proc.pid, timeout=60), out

            (code, out), latencies = await while_the_agent_answers(vm, stress())
            await vm.bridge.delete_container_state(cid)
            await vm.guest_modify("CombinedLayers", "Remove", layers)
            assert isinstance(vm.system, QemuComputeSystem)
            console = await asyncio.to_thread(Path(vm.system.paths.console).read_text, errors="replace")
            return code, out, latencies, console
        finally:
            await vm.terminate()

    code, out, latencies, console = asyncio.run(run())
    # The agent watched its own loop throughout (a report would have failed the test through
    # tests/support/loop_watch.py): its console says so, with the suite's threshold.
    installed = [line for line in console.splitlines() if loopwatch.INSTALLED in line]
    assert installed and f'"threshold_ms": {GUEST_SLOW_CALLBACK_MS}' in installed[0], installed
    assert code == 0 and out.endswith(f"flipped {FLIPS}\n".encode()), (code, out)
    assert max(latencies) < ANSWER_WITHIN, latencies


CPUSET_FLIPS = 1500
# cpusets_enabled_key guards the page allocator's hot path (every fork allocates): a child cpuset's
# creation increments it and its removal decrements it, so with no other child cpuset each mkdir and
# rmdir live-patches the allocator while fork loops on both vCPUs keep translating it. Run in the
# UVM itself (no container: a container's own cpuset would hold the key at 1), with init's
# key-holding cgroup removed for the stress (it holds the key at 1 too) and put back after it.
CPUSET_STRESS = f"""
cd /sys/fs/cgroup || exit 2
grep -qw cpuset cgroup.subtree_control || echo +cpuset > cgroup.subtree_control || exit 3
rmdir hcsshim-keys || exit 4
{FORK_LOOPS}i=0
while [ $i -lt {CPUSET_FLIPS} ]; do
    mkdir hcsshim-flip && rmdir hcsshim-flip || {{ echo "mkdir/rmdir failed at $i"; break; }}
    i=$((i + 1))
done
kill $pids
mkdir hcsshim-keys && echo "100000 100000" > hcsshim-keys/cpu.max
echo "flipped $i"
"""


def test_allocator_static_key_stress_keeps_the_agent_answering() -> None:
    assert have_root_and_qemu(), "the e2e group needs root and qemu-system-x86_64 (make test sets them up)"
    assert boot_files() is not None, "the e2e group needs the UVM image (make test builds it)"

    async def run() -> tuple[int, bytes, bytes, list[float]]:
        vm, _ = await boot_uvm(f"stress-cpuset-{os.getpid()}")
        try:
            work = vm.exec_in_uvm(["sh", "-c", CPUSET_STRESS], timeout=540)
            (code, out, err), latencies = await while_the_agent_answers(vm, work)
            return code, out, err, latencies
        finally:
            await vm.terminate()

    code, out, err, latencies = asyncio.run(run())
    assert (code, out.splitlines()[-1:]) == (0, [f"flipped {CPUSET_FLIPS}".encode()]), (code, out, err)
    assert max(latencies) < ANSWER_WITHIN, latencies


TRACE_FLIPS = 150
# Each enable or disable of the kmem trace events flips the static keys of their tracepoints, whose
# sites are in the page and slab allocators (every fork and page fault runs them): hundreds of live
# patches per flip on code both vCPUs keep retranslating. Tracing stays off (tracing_on 0), so only
# the keys change. In the UVM itself: tracefs is the host's business, not a container's.
TRACE_STRESS = f"""
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing || exit 2
cd /sys/kernel/tracing || exit 3
echo 0 > tracing_on
{FORK_LOOPS}i=0
while [ $i -lt {TRACE_FLIPS} ]; do
    echo 1 > events/kmem/enable && echo 0 > events/kmem/enable || {{ echo "flip failed at $i"; break; }}
    i=$((i + 1))
done
kill $pids
echo "flipped $i"
"""


def test_tracepoint_static_key_stress_keeps_the_agent_answering() -> None:
    assert have_root_and_qemu(), "the e2e group needs root and qemu-system-x86_64 (make test sets them up)"
    assert boot_files() is not None, "the e2e group needs the UVM image (make test builds it)"

    async def run() -> tuple[int, bytes, bytes, list[float]]:
        vm, _ = await boot_uvm(f"stress-trace-{os.getpid()}")
        try:
            work = vm.exec_in_uvm(["sh", "-c", TRACE_STRESS], timeout=540)
            (code, out, err), latencies = await while_the_agent_answers(vm, work)
            return code, out, err, latencies
        finally:
            await vm.terminate()

    code, out, err, latencies = asyncio.run(run())
    assert (code, out.splitlines()[-1:]) == (0, [f"flipped {TRACE_FLIPS}".encode()]), (code, out, err)
    assert max(latencies) < ANSWER_WITHIN, latencies
