"""Regression test for the frozen guest: static-key live patching under multi-threaded TCG.

QEMU before 8.1 could run a stale translation of a page the guest kernel was patching through a
temporary INT3 (text_poke_bp); both vCPUs then spun in the int3 handler forever and the agent never
ran again. Flipping `kernel.sched_schedstats` toggles a static key on every write, so a thousand
flips while the other vCPU forks in a loop froze QEMU 7.2's multi-threaded TCG in 7 of 10 boots.
The test boots a UVM of its own (a frozen guest must not take the shared one down), runs that stress
in a container, and asks the agent for a container's statistics every half second throughout: each
answer must come within seconds and the stress must finish."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from hcsshim.gcs.bridge import BridgeTimeoutError
from hcsshim.hcs.qemu.system import QemuComputeSystem
from tests.support.guest import container_document, oci_spec, read_all
from tests.support.uvm import STDIO_OUT, _layers, boot_files, boot_uvm, have_root_and_qemu, make_busybox_vhd

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.root,
    pytest.mark.timeout(600),
]

FLIPS = 1000
# A healthy agent answers in well under a second even under TCG with both vCPUs busy; a frozen
# guest never answers. The bound is a hang guard, not a speed claim.
ANSWER_WITHIN = 15.0
STRESS = f"""
test -w /proc/sys/kernel/sched_schedstats || {{ echo "sched_schedstats not writable"; exit 2; }}
# The flips on vCPU 0, a fork loop on vCPU 1: the patching CPU and the one running stale code differ.
busybox taskset -c 1 sh -c 'while :; do /bin/true; done' &
forker=$!
busybox taskset -c 0 sh -c '
i=0
while [ $i -lt {FLIPS} ]; do
    echo 1 > /proc/sys/kernel/sched_schedstats
    echo 0 > /proc/sys/kernel/sched_schedstats
    i=$((i + 1))
done
echo "flipped $i"'
kill $forker
"""


def test_static_key_stress_keeps_the_agent_answering(tmp_path: Path) -> None:
    assert have_root_and_qemu(), "the e2e group needs root and qemu-system-x86_64 (make test sets them up)"
    assert boot_files() is not None, "the e2e group needs the UVM image (make test builds it)"
    layer_vhd = make_busybox_vhd(tmp_path)

    async def run() -> tuple[int, bytes, list[float], str]:
        vm, _ = await boot_uvm(f"stress-{os.getpid()}")
        try:
            assert isinstance(vm.system, QemuComputeSystem) and vm.system.accel is not None
            accel = f"QEMU {vm.system.accel.qemu_version}, {vm.system.accel.spec}"
            layer = await vm.add_scsi(layer_vhd, read_only=True)
            cid = "stress"
            bundle = f"/run/gcs/c/{cid}"
            layers = _layers(cid, f"{bundle}/rootfs", layer.guest_path)
            await vm.guest_modify("CombinedLayers", "Add", layers)
            spec = oci_spec(["sh", "-c", STRESS], root=f"{bundle}/rootfs")
            spec["root"]["readonly"] = True
            spec["linux"]["readonlyPaths"] = []  # the stress writes /proc/sys
            await vm.bridge.create_container(cid, container_document(bundle, spec))
            await vm.bridge.start_container(cid)
            proc = await vm.bridge.execute_process(cid, STDIO_OUT)
            output = asyncio.ensure_future(read_all(proc.stdout, 300))
            latencies: list[float] = []
            while not output.done():
                t0 = time.monotonic()
                try:
                    # DumpStacks is answered by the agent alone: no runc, no file system.
                    await vm.bridge.dump_stacks(timeout=ANSWER_WITHIN)
                except BridgeTimeoutError as e:
                    if output.done():  # the container exited between the check and the call
                        break
                    console = vm.system.paths.console
                    raise AssertionError(
                        f"the agent did not answer within {ANSWER_WITHIN}s during the stress ({accel}): {e}; "
                        f"console tail: {Path(console).read_text(errors='replace')[-1500:]}"
                    ) from e
                latencies.append(time.monotonic() - t0)
                await asyncio.sleep(0.5)
            out = await output
            code = await vm.bridge.wait_process(cid, proc.pid, timeout=60)
            await vm.bridge.delete_container_state(cid)
            await vm.guest_modify("CombinedLayers", "Remove", layers)
            return code, out, latencies, accel
        finally:
            await vm.terminate()

    code, out, latencies, accel = asyncio.run(run())
    assert (code, out) == (0, f"flipped {FLIPS}\n".encode()), accel
    assert latencies, "the stress ended before the agent was asked anything"
    assert max(latencies) < ANSWER_WITHIN, (accel, latencies)
