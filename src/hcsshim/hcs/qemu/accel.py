"""KVM or TCG: KVM only where a probe boot proves it works; and how TCG may use threads.

/dev/kvm can exist and still hang a stock kernel (nested PVM), so opening it proves nothing. The
probe boots the real kernel with no root filesystem under KVM: a working KVM reaches the
"unable to mount root" panic and QEMU exits (panic=-1 + -no-reboot) within seconds; a broken one
times out. The answer is cached per host boot (boot_id) and kernel, under /run.

Multi-threaded TCG before QEMU 8.1 can run a stale translation of a page the guest kernel is
live-patching (text_poke_bp's temporary INT3, e.g. when the first memory cgroup flips the memcg_kmem
static key): the int3 handler then retries forever on every vCPU and the guest freezes with no
message. QEMU 8.1 fixed it ("accel/tcg: Always lock pages before translation"); on older QEMU the
backend runs TCG single-threaded."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

from hcsshim import settings

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 20.0
MTTCG_SAFE_SINCE = (8, 1)
_VERSION_RE = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class QemuVersion:
    """What `qemu --version` said; `numbers` is () when it could not be parsed."""

    numbers: tuple[int, ...]
    text: str

    def __str__(self) -> str:
        return ".".join(map(str, self.numbers)) if self.numbers else f"unknown ({self.text[:60]!r})"


@dataclass(frozen=True)
class Accel:
    """The accelerator a VM runs under: `name` (kvm/tcg), the `-accel` argument, and why."""

    name: str
    spec: str
    why: str
    qemu_version: QemuVersion


_versions: dict[tuple[str, int], QemuVersion] = {}


def parse_version(text: str) -> QemuVersion:
    m = _VERSION_RE.search(text)
    numbers = tuple(int(g) for g in m.groups() if g is not None) if m else ()
    return QemuVersion(numbers, text.strip().splitlines()[0] if text.strip() else "")


async def qemu_version(qemu: str) -> QemuVersion:
    """`qemu --version`, asked once per binary (path and mtime)."""
    path = shutil.which(qemu) or qemu
    try:
        key = (os.path.realpath(path), os.stat(path).st_mtime_ns)
    except OSError:
        key = (path, 0)
    cached = _versions.get(key)
    if cached is not None:
        return cached
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        version = parse_version(out.decode(errors="replace"))
    except (OSError, TimeoutError) as e:
        version = QemuVersion((), f"{path} --version failed: {e}")
    _versions[key] = version
    return version


def tcg_threads(version: QemuVersion) -> tuple[str, str]:
    """("multi" | "single", why) for TCG on this QEMU."""
    if version.numbers and version.numbers[:2] >= MTTCG_SAFE_SINCE:
        return "multi", f"QEMU {version} has the multi-threaded TCG fix of 8.1"
    return "single", (
        f"QEMU {version} is older than 8.1: multi-threaded TCG can freeze the guest when its kernel "
        "live-patches a static key, so TCG runs single-threaded (install QEMU >= 8.1 for parallel vCPUs)"
    )


async def choose(qemu: str, kernel: str) -> Accel:
    """The accelerator for a VM: KVM where the probe proved it, else TCG with the threading this QEMU
    can run safely. HCSSHIM_ACCEL with a comma (e.g. `tcg,thread=multi`) is passed to QEMU verbatim."""
    version = await qemu_version(qemu)
    forced = settings.current().accel
    if "," in forced:
        return Accel(forced.split(",")[0], forced, "forced by HCSSHIM_ACCEL", version)
    name, why = await choose_accel(qemu, kernel)
    if name != "tcg":
        return Accel(name, name, why, version)
    thread, thread_why = tcg_threads(version)
    if thread == "single":
        log.warning("tcg single-threaded", extra={"qemu": str(version), "why": thread_why})
    return Accel("tcg", f"tcg,thread={thread}", f"{why}; {thread_why}", version)


def cache_dir() -> str:
    """Where probe results are kept (HCSSHIM_RUN_DIR)."""
    return settings.current().run_dir


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _cache_path(kernel: str) -> str:
    key = hashlib.sha256(f"{_boot_id()}:{os.path.realpath(kernel)}".encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), f"accel-{key}.json")


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
        detail = " | ".join(err.decode(errors="replace").strip().splitlines())[-200:]
        return False, f"kvm probe boot exited {proc.returncode}: {detail}"


async def choose_accel(qemu: str, kernel: str) -> tuple[str, str]:
    """Return (accel, why). HCSSHIM_ACCEL=tcg|kvm forces a choice (kvm is still not probed then)."""
    forced = settings.current().accel
    if forced in ("tcg", "kvm"):
        return forced, "forced by HCSSHIM_ACCEL"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is not available"
    os.makedirs(cache_dir(), exist_ok=True)
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
