#!/usr/bin/env bash
# The main job (make run): a private containerd 1.6 with our shim on PATH, a local busybox image
# imported with `ctr images import`, then
#   ctr run --rm --runtime io.containerd.runhcs.v1 busybox main-<id> echo hello from a UVM
# printing the container's output, its exit code and the time it took. Everything (containerd,
# the shim, QEMU, mounts, sockets) is cleaned up on exit, so it is safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "run-main: needs root (containerd, mounts, QEMU)" >&2
    exit 1
fi
exec .venv/bin/python - "$@" <<'PY'
import os
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.getcwd())

from tests.support.containerd import running_containerd
from tests.support.shim_checks import RUNTIME, import_busybox, qemu_pids
from tests.support.uvm import boot_files

if boot_files() is None:
    sys.exit("run-main: no UVM image; build it with `.venv/bin/hcsshim uvm build` (make image)")
cmd = sys.argv[1:] or ["sh", "-c", "echo hello from a UVM; echo kernel: $(uname -r)"]
cid = f"main-{uuid.uuid4().hex[:8]}"
with running_containerd() as c, tempfile.TemporaryDirectory() as work:
    image = import_busybox(c, work)
    print(f"$ ctr run --rm --runtime {RUNTIME} {image} {cid} {' '.join(cmd)}", flush=True)
    start = time.monotonic()
    proc = c.ctr("run", "--rm", "--runtime", RUNTIME, image, cid, *cmd, check=False, timeout=600)
    elapsed = time.monotonic() - start
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr + "\n--- containerd log ---\n" + c.log_tail(40) + "\n")
    print(f"exit code {proc.returncode}; ctr run --rm took {elapsed:.2f}s (UVM boot, run, teardown)")
    print(f"host kernel: {os.uname().release}; QEMU processes left for {cid}: {len(qemu_pids(cid))}")
sys.exit(proc.returncode)
PY
