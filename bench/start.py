"""Pod start with UVM templates, every figure against its reference in this run:

1. a UVM to agent-ready: restored from its template against a cold boot of the same document;
2. `ctr run --rm` to the command's output: io.containerd.runc.v2, our shim cold (templates off by
   annotation) and from the template;
3. CRI RunPodSandbox + CreateContainer + StartContainer: the runc handler, runhcs-v1 cold and from
   the template;
4. the PSS of 3 pods' QEMU processes, cold against from one template.

The warm-pool rows (io.hcsshim.virtualmachine.pool.size=1) are timed only once the pool holds a
parked clone (each claim refills it in the background, at SCHED_IDLE, between the timed runs); the
pool is drained at the end."""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import _qemu

from hcsshim.shim.host import build_uvm_document
from hcsshim.uvm.pool import Pool
from hcsshim.uvm.template import PoolConfig, TemplateStore, restored_document
from hcsshim.uvm.utility_vm import UtilityVM
from tests.support.containerd import Containerd, available, running_containerd
from tests.support.cri import CriClient
from tests.support.oci_image import DEFAULT_NAME, build_image, build_pause_image
from tests.support.shim_checks import RUNTIME, import_busybox, qemu_pids, wait_until
from tests.support.uvm import boot_files

RUNS = int(os.environ.get("BENCH_START_RUNS", "3"))
TEMPLATES = "io.hcsshim.virtualmachine.templates"
MARKER = "hello-from-the-container"
OFF = {TEMPLATES: "false"}
ON = {TEMPLATES: "true"}
POOL = {TEMPLATES: "true", "io.hcsshim.virtualmachine.pool.size": "1"}
POOL_READY_TIMEOUT = 180.0


def wait_pool_ready(timeout: float = POOL_READY_TIMEOUT) -> None:
    """Until every template key the pool has seen holds a parked clone again (its filler is done)."""
    pool = Pool()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        keys = pool.keys()
        if keys and all(pool.ready(k) for k in keys):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the warm pool did not refill in {timeout:.0f}s: {pool.entries()}")


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# ---- 1. agent-ready --------------------------------------------------------------------------------


async def _ready(make: Callable[[str], Awaitable[UtilityVM]]) -> float:
    uvm_id = f"bench-start-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    vm = await make(uvm_id)
    try:
        await vm.start(timeout=300)
        return time.monotonic() - start
    finally:
        await vm.terminate()


def agent_ready() -> tuple[list[float], list[float], list[float]]:
    store = TemplateStore()
    config = PoolConfig(size=1)

    async def cold(uvm_id: str) -> UtilityVM:
        return await UtilityVM.create(uvm_id, build_uvm_document(uvm_id, {}, None))

    async def clone(uvm_id: str) -> UtilityVM:
        return await store.clone(uvm_id, build_uvm_document(uvm_id, {}, None))

    async def pooled(uvm_id: str) -> UtilityVM:
        return await store.clone(uvm_id, build_uvm_document(uvm_id, {}, None), pool=config)

    async def from_pool() -> float:
        await asyncio.to_thread(wait_pool_ready)
        before = _parked()
        took = await _ready(pooled)
        _claimed(before, "agent-ready")
        return took

    async def run() -> tuple[list[float], list[float], list[float]]:
        await _ready(clone)  # builds the template when there is none yet
        doc = build_uvm_document("bench-pool", {}, None).to_dict()
        key, directory = await store.build_for(doc)
        await Pool(store=store).fill(key, config, restored_document(doc, key, directory))
        colds = [await _ready(cold) for _ in range(RUNS)]
        clones = [await _ready(clone) for _ in range(RUNS)]
        pools = [await from_pool() for _ in range(RUNS)]
        return colds, clones, pools

    return asyncio.run(run())


# ---- 2. ctr run ------------------------------------------------------------------------------------


def ctr_to_output(c: Containerd, runtime: str, annotations: dict[str, str] | None = None) -> float:
    cid = f"bench-{uuid.uuid4().hex[:8]}"
    extra = [a for k, v in (annotations or {}).items() for a in ("--annotation", f"{k}={v}")]
    argv = c.ctr_argv("run", "--rm", "--runtime", runtime, *extra, DEFAULT_NAME, cid, "echo", MARKER)
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=c.env
    )
    assert proc.stdout is not None
    first = 0.0
    for raw in proc.stdout:
        if MARKER.encode() in raw and not first:
            first = time.monotonic() - start
    code = proc.wait(timeout=600)
    if code != 0 or not first:
        raise RuntimeError(f"ctr run with {runtime} {annotations} failed ({code}):\n{c.log_tail()}")
    return first


# ---- 3. CRI ----------------------------------------------------------------------------------------


def cri_start(cri: CriClient, handler: str, logs: str, annotations: dict[str, str] | None) -> float:
    name = f"bench-{uuid.uuid4().hex[:6]}"
    config = cri.sandbox_config(name, logs, host_network=True, annotations=annotations)
    if handler == "runc":
        config.hostname = ""  # runc cannot set a host name without a UTS namespace of its own
    start = time.monotonic()
    pod = cri.run_pod_sandbox(config, handler)
    cid = ""
    try:
        cid = cri.create_container(pod, config, "c", DEFAULT_NAME, ["sleep", "600"], f"{name}.log")
        cri.start_container(cid)
        return time.monotonic() - start
    finally:
        if cid:
            cri.stop_container(cid, timeout=1)
            cri.remove_container(cid)
        cri.stop_pod_sandbox(pod)
        cri.remove_pod_sandbox(pod)


# ---- 4. PSS ----------------------------------------------------------------------------------------


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        m = re.search(r"^Pss:\s+(\d+)", f.read(), re.M)
    return int(m.group(1)) if m else 0


def three_pods_pss(c: Containerd, annotations: dict[str, str]) -> list[int]:
    extra = [a for k, v in annotations.items() for a in ("--annotation", f"{k}={v}")]
    ids = [f"bench-pss-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    try:
        for cid in ids:
            c.ctr("run", "-d", "--runtime", RUNTIME, *extra, DEFAULT_NAME, cid, "sleep", "600", timeout=600)
        time.sleep(2.0)
        return [pss_kib(qemu_pids(cid)[0]) for cid in ids]
    finally:
        for cid in ids:
            c.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
        for cid in ids:
            wait_until(lambda i=cid: i not in c.ctr("task", "ls", check=False).stdout or _stopped(c, i), 60)
            c.ctr("task", "delete", cid, check=False, timeout=60)
            c.ctr("container", "delete", cid, check=False)


def _stopped(c: Containerd, cid: str) -> bool:
    for line in c.ctr("task", "ls", check=False).stdout.splitlines():
        if line.startswith(cid):
            return "STOPPED" in line
    return True


def row(label: str, ours: float, ref: float, unit: str = "s") -> None:
    print(f"{label:52} {ours:>9.2f}{unit} {ref:>9.2f}{unit} {ours / ref:>8.2f}")


def main() -> int:
    reason = available()
    if reason is not None:
        print(f"start: skipped ({reason})")
        return 0
    if boot_files() is None:
        print("start: no UVM image; run `hcsshim uvm build` first")
        return 0
    print(_qemu.describe(_qemu.chosen()), flush=True)
    try:
        return _main()
    finally:
        Pool().drain()


def _parked() -> set[str]:
    return {str(e["dir"]) for e in Pool().entries() if e["state"] == "ready"}


def _claimed(before: set[str], what: str) -> None:
    """A warm-pool sample counts only if the start took one of the clones parked before it."""
    if before <= _parked():
        raise RuntimeError(f"{what}: no parked clone was claimed (the pool row would be a template start)")


def _pool_ctr(c: Containerd) -> float:
    wait_pool_ready()
    before = _parked()
    took = ctr_to_output(c, RUNTIME, POOL)
    _claimed(before, "ctr run")
    return took


def _pool_cri(cri: CriClient, work: str) -> float:
    wait_pool_ready()
    before = _parked()
    took = cri_start(cri, "runhcs-v1", work, POOL)
    _claimed(before, "CRI")
    return took


def _main() -> int:
    colds, clones, pools = agent_ready()
    print(
        f"agent-ready samples: cold {[round(x, 2) for x in colds]} template {[round(x, 2) for x in clones]} "
        f"pool {[round(x, 2) for x in pools]}",
        flush=True,
    )
    with running_containerd() as c, tempfile.TemporaryDirectory() as work:
        import_busybox(c, work)
        ctr_to_output(c, "io.containerd.runc.v2")  # warm caches
        ctr_to_output(c, RUNTIME, ON)
        runc = [ctr_to_output(c, "io.containerd.runc.v2") for _ in range(RUNS)]
        cold = [ctr_to_output(c, RUNTIME, OFF) for _ in range(RUNS)]
        tmpl = [ctr_to_output(c, RUNTIME, ON) for _ in range(RUNS)]
        ctr_to_output(c, RUNTIME, POOL)  # the shim's pool of this document's key starts filling
        pool = [_pool_ctr(c) for _ in range(RUNS)]
        pss_cold = three_pods_pss(c, OFF)
        pss_tmpl = three_pods_pss(c, ON)
        print(
            f"ctr run samples: cold {cold} template {tmpl} runc {runc}; PSS {pss_cold} {pss_tmpl}", flush=True
        )
        cri_rows: dict[str, list[float]] = {}
        if c.cri_ok:
            for tar in (
                build_image(os.path.join(work, "bb.tar")),
                build_pause_image(os.path.join(work, "p.tar")),
            ):
                c.ctr("images", "import", tar, namespace="k8s.io", timeout=120)
            cri = CriClient(c.grpc_address)
            try:
                cri_start(cri, "runc", work, None)
                cri_rows["runc"] = [cri_start(cri, "runc", work, None) for _ in range(RUNS)]
                cri_rows["cold"] = [cri_start(cri, "runhcs-v1", work, OFF) for _ in range(RUNS)]
                cri_rows["tmpl"] = [cri_start(cri, "runhcs-v1", work, ON) for _ in range(RUNS)]
                cri_start(cri, "runhcs-v1", work, POOL)
                cri_rows["pool"] = [_pool_cri(cri, work) for _ in range(RUNS)]
            finally:
                cri.close()
    print(f"median of {RUNS} runs each; the template was built before the timed runs")
    print(f"{'measure':52} {'ours':>10} {'reference':>10} {'ratio':>8}")
    row("UVM to agent-ready: template vs cold boot", median(clones), median(colds))
    row("UVM to agent-ready: warm pool vs cold boot", median(pools), median(colds))
    row("UVM to agent-ready: warm pool vs template", median(pools), median(clones))
    row("ctr run to output: template vs cold", median(tmpl), median(cold))
    row("ctr run to output: template vs runc.v2", median(tmpl), median(runc))
    row("ctr run to output: cold vs runc.v2", median(cold), median(runc))
    row("ctr run to output: warm pool vs runc.v2", median(pool), median(runc))
    row("ctr run to output: warm pool vs cold", median(pool), median(cold))
    row("ctr run to output: warm pool vs template", median(pool), median(tmpl))
    if cri_rows:
        row("CRI pod+container start: template vs cold", median(cri_rows["tmpl"]), median(cri_rows["cold"]))
        row("CRI pod+container start: template vs runc", median(cri_rows["tmpl"]), median(cri_rows["runc"]))
        row("CRI pod+container start: warm pool vs cold", median(cri_rows["pool"]), median(cri_rows["cold"]))
        row("CRI pod+container start: warm pool vs runc", median(cri_rows["pool"]), median(cri_rows["runc"]))
    else:
        print("CRI: containerd's CRI plugin did not initialise; no CRI rows")
    per_tmpl, per_cold = sum(pss_tmpl) / 3 / 1024, sum(pss_cold) / 3 / 1024
    row("PSS per pod, 3 pods (MiB): template vs cold", per_tmpl, per_cold, "M")
    print(
        f"samples agent-ready cold {[round(x, 2) for x in colds]} template {[round(x, 2) for x in clones]} "
        f"pool {[round(x, 2) for x in pools]}"
    )
    print(
        f"samples ctr run cold {[round(x, 2) for x in cold]} template {[round(x, 2) for x in tmpl]} "
        f"pool {[round(x, 2) for x in pool]}"
    )
    print(f"samples ctr run runc {[round(x, 3) for x in runc]}")
    for label, xs in cri_rows.items():
        print(f"samples CRI {label} {[round(x, 2) for x in xs]}")
    print(f"PSS KiB cold {pss_cold} template {pss_tmpl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
