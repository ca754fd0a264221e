"""Helpers for the UVM tests and the boot benchmark: boot files, a tiny busybox initrd, VHDs."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hcsshim.image.cpio import CpioWriter
from hcsshim.layers.vhd import append_footer_to_path
from hcsshim.uvm.document import boot_files_path
from hcsshim.uvm.scsi import ScsiMount
from hcsshim.uvm.utility_vm import UtilityVM

T = TypeVar("T")

BUSYBOX = "/bin/busybox"
FLOOR_READY = "HCSSHIM-FLOOR-READY"


def boot_files() -> str | None:
    """The image helper's boot files directory when it holds a kernel and an initrd."""
    root = boot_files_path()
    ok = all(os.path.isfile(os.path.join(root, f)) for f in ("kernel", "initrd.img"))
    return root if ok else None


def kernel() -> str | None:
    root = boot_files_path()
    path = os.path.join(root, "kernel")
    return path if os.path.isfile(path) else os.environ.get("HCSSHIM_TEST_KERNEL")


def build_busybox_initrd(path: str, init_script: str) -> str:
    """A gzip'd newc cpio with busybox-static as /bin/sh and `init_script` as /init."""
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    archive = io.BytesIO()
    w = CpioWriter(archive)
    for directory in ("bin", "dev", "proc", "sys"):
        w.add_dir(directory)
    w.add_bytes("bin/busybox", busybox, 0o755)
    w.add_symlink("bin/sh", "busybox")
    w.add_bytes("init", init_script.encode(), 0o755)
    w.finish()
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(archive.getvalue())
    return path


def build_floor_initrd(path: str, then: str = "poweroff -f") -> str:
    """The floor: the same kernel, an init that only says it is ready on the console."""
    script = (
        "#!/bin/sh\n"
        "/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null\n"
        f"echo {FLOOR_READY} > /dev/ttyS0\n"
        f"/bin/busybox {then}\n"
    )
    return build_busybox_initrd(path, script)


def make_vhd_from_dir(path: str, src: str, size_mb: int = 16) -> str:
    """An ext4 image of `src` with a fixed VHD footer (QEMU's `vpc`)."""
    with tempfile.TemporaryDirectory(prefix="hcsshim-vhd-") as tmp:
        raw = os.path.join(tmp, "disk.ext4")
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-d", src, raw, f"{size_mb}M"],
            check=True,
            capture_output=True,
        )
        shutil.move(raw, path)
    append_footer_to_path(path)
    return path


def make_vhd_with_file(path: str, name: str, content: bytes, size_mb: int = 16) -> str:
    """An ext4 image holding one file, with a fixed VHD footer."""
    with tempfile.TemporaryDirectory(prefix="hcsshim-vhd-src-") as src:
        with open(os.path.join(src, name), "wb") as f:
            f.write(content)
        return make_vhd_from_dir(path, src, size_mb)


def qemu_processes() -> list[int]:
    """PIDs of qemu-system processes (for leftover checks)."""
    out = subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def have_root_and_qemu() -> bool:
    return os.geteuid() == 0 and shutil.which("qemu-system-x86_64") is not None


class LoopThread:
    """One event loop on a thread for the whole session, so a UVM booted once (with its QMP client,
    mux and bridge bound to that loop) can serve many synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="uvm-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 300.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


STDIO_OUT = {"CreateStdOutPipe": True, "CreateStdErrPipe": True}


@dataclass
class BootedUvm:
    loop: LoopThread
    vm: UtilityVM
    layer: ScsiMount
    boot_seconds: float

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 300.0) -> T:
        return self.loop.run(coro, timeout)

    def run_busybox(
        self, cid: str, args: list[str], mounts: list[dict[str, Any]] | None = None
    ) -> tuple[int, bytes, bytes]:
        return self.run(run_busybox(self.vm, self.layer.guest_path, cid, args, mounts))

    def sh(self, script: str) -> str:
        """`script` run by sh in the UVM (not in a container); its stdout. Fails unless it exits 0."""
        code, out, err = self.run(self.vm.exec_in_uvm(["sh", "-c", script]))
        assert code == 0, (script, out, err)
        return out.decode()


def _layers(cid: str, root: str, layer: str) -> dict[str, Any]:
    # A scratch on the guest's /run tmpfs: overlayfs refuses a single lower layer without an upper.
    scratch = f"/run/scratch/{cid}"
    return {
        "ContainerID": cid,
        "ContainerRootPath": root,
        "Layers": [{"Path": layer}],
        "ScratchPath": scratch,
    }


def make_busybox_vhd(work: Path) -> str:
    """A read-only layer VHD holding a busybox rootfs."""
    from tests.support.guest import make_busybox_rootfs

    rootfs = make_busybox_rootfs(str(work / "busybox-rootfs"))
    return make_vhd_from_dir(str(work / "busybox.vhd"), rootfs, 16)


async def start_busybox(vm: UtilityVM, layer: str, cid: str, args: list[str]) -> int:
    """Create and start a busybox container running `args` (no stdio); returns its init pid."""
    from tests.support.guest import container_document, oci_spec

    bundle = f"/run/gcs/c/{cid}"
    layers = _layers(cid, f"{bundle}/rootfs", layer)
    await vm.guest_modify("CombinedLayers", "Add", layers)
    spec = oci_spec(args, root=f"{bundle}/rootfs")
    spec["root"]["readonly"] = True
    await vm.bridge.create_container(cid, container_document(bundle, spec))
    await vm.bridge.start_container(cid)
    proc = await vm.bridge.execute_process(cid, {})
    return int(proc.pid)


async def stop_busybox(vm: UtilityVM, layer: str, cid: str, pid: int) -> None:
    """Kill, reap and delete a container start_busybox started, and remove its layers."""
    await vm.bridge.shutdown_forced(cid)
    await vm.bridge.wait_process(cid, pid, timeout=30)
    await vm.bridge.delete_container_state(cid)
    await vm.guest_modify("CombinedLayers", "Remove", _layers(cid, f"/run/gcs/c/{cid}/rootfs", layer))


async def run_busybox(
    vm: UtilityVM, layer: str, cid: str, args: list[str], mounts: list[dict[str, Any]] | None = None
) -> tuple[int, bytes, bytes]:
    """Run `args` as the init of a busybox container whose rootfs is the read-only `layer`."""
    from tests.support.guest import container_document, oci_spec, read_all

    bundle = f"/run/gcs/c/{cid}"
    root = f"{bundle}/rootfs"
    layers = _layers(cid, root, layer)
    await vm.guest_modify("CombinedLayers", "Add", layers)
    try:
        spec = oci_spec(args, root=root)
        spec["root"]["readonly"] = True
        spec["mounts"] += mounts or []
        await vm.bridge.create_container(cid, container_document(bundle, spec))
        await vm.bridge.start_container(cid)
        proc = await vm.bridge.execute_process(cid, STDIO_OUT)
        out, err = await asyncio.gather(read_all(proc.stdout, 60), read_all(proc.stderr, 60))
        code = await vm.bridge.wait_process(cid, proc.pid)
        await vm.bridge.delete_container_state(cid)
        return code, out, err
    finally:
        await vm.guest_modify("CombinedLayers", "Remove", layers)


async def boot_uvm(uvm_id: str, document: Any = None, timeout: float = 180.0) -> tuple[UtilityVM, float]:
    start = time.monotonic()
    vm = await UtilityVM.create(uvm_id, document)
    try:
        await vm.start(timeout=timeout)
    except BaseException:
        await vm.terminate()
        raise
    return vm, time.monotonic() - start


@pytest.fixture(scope="session")
def booted_uvm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedUvm]:
    """One UVM booted from the default LCOW document, shared by the e2e tests, with a busybox
    layer VHD attached on SCSI."""
    if not have_root_and_qemu():
        pytest.skip("needs root and qemu-system-x86_64")
    if boot_files() is None:
        pytest.skip(f"no UVM image in {boot_files_path()} (run `hcsshim uvm build`)")
    layer_vhd = make_busybox_vhd(tmp_path_factory.mktemp("uvm"))
    loop = LoopThread()
    try:
        vm, seconds = loop.run(boot_uvm(f"test-{os.getpid()}"))
        try:
            layer = loop.run(vm.add_scsi(layer_vhd, read_only=True))
            yield BootedUvm(loop, vm, layer, seconds)
        finally:
            loop.run(vm.terminate(), 60)
    finally:
        loop.close()
