"""KVM or TCG: KVM only where a probe boot proves it works.

/dev/kvm can exist and still hang a stock kernel (nested PVM), so opening it proves nothing. The
probe boots the real kernel with no root filesystem under KVM: a working KVM reaches the
"unable to mount root" panic and QEMU exits (panic=-1 + -no-reboot) within seconds; a broken one
times out. The answer is cached per host boot (boot_id) and kernel, under /run."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
import tempfile

log = logging.getLogger(__name__)

CACHE_DIR = os.environ.get("HCSSHIM_RUN_DIR", "/run/hcsshim")
PROBE_TIMEOUT = 20.0


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _cache_path(kernel: str) -> str:
    key = hashlib.sha256(f"{_boot_id()}:{os.path.realpath(kernel)}".encode()).hexdigest()[:16]
    return os.path.join(CACHE_DIR, f"accel-{key}.json")


async def probe_kvm(qemu: str, kernel: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Boot `kernel` under KVM without a rootfs; True when it reaches its panic and QEMU exits."""
    with tempfile.TemporaryDirectory(prefix="hcsshim-kvm-probe-") as tmp:
        console = os.path.join(tmp, "console.log")
        proc = await asyncio.create_subprocess_exec(
            qemu,
            *("-nodefaults", "-no-user-config", "-nographic", "-no-reboot"),
            *("-machine", "pc,accel=kvm", "-cpu", "host", "-m", "256"),
            *("-kernel", kernel, "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"),
            *("-serial", f"file:{console}"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False, f"kvm probe boot did not finish within {timeout:.0f}s (hangs under this KVM)"
        with open(console, errors="replace") as f:
            out = f.read()
        if "Kernel panic" in out or "VFS:" in out:
            return True, "kvm probe boot reached the kernel's root-mount panic"
        detail = err.decode(errors="replace").strip()[-200:]
        return False, f"kvm probe boot exited {proc.returncode}: {detail}"


async def choose_accel(qemu: str, kernel: str) -> tuple[str, str]:
    """Return (accel, why). HCSSHIM_ACCEL=tcg|kvm forces a choice (kvm is still not probed then)."""
    forced = os.environ.get("HCSSHIM_ACCEL", "")
    if forced in ("tcg", "kvm"):
        return forced, "forced by HCSSHIM_ACCEL"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is not available"
    os.makedirs(CACHE_DIR, exist_ok=True)
    path = _cache_path(kernel)
    # One probe per host boot even when several VMs start at once.
    with open(path + ".lock", "w") as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        try:
            try:
                with open(path) as f:
                    cached = json.load(f)
                return str(cached["accel"]), f"cached probe: {cached['why']}"
            except (OSError, ValueError, KeyError):
                pass
            ok, why = await probe_kvm(qemu, kernel)
            accel = "kvm" if ok else "tcg"
            log.info("accel probe", extra={"accel": accel, "why": why, "kernel": kernel})
            with open(path, "w") as f:
                json.dump({"accel": accel, "why": why}, f)
            return accel, why
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
