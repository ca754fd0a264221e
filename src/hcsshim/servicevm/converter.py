"""LayerConverters that parse the layer tar inside a service VM instead of on the host.

The tar goes in as a raw read-only SCSI disk and the ext4 comes out on a raw read-write one (a
sparse file beside the output, renamed into place only when whole); the guest mounts neither, it
sees block devices (BlockDev). The host appends the VHD footer (tar2ext4.seal), so with the tools
disk carrying the host's own e2fsprogs and hcsshim.layers the result is byte for byte what
HostConverter writes.

Two lifetimes, as Moby's LCOW service VMs had: GlobalServiceVMConverter keeps one VM for every
conversion (booted at first use, conversions one at a time, a dead VM replaced at the next one,
stopped by close()); PerInstanceServiceVMConverter boots one per conversion and terminates it
afterwards, whatever happened (no shared state between two layers' untrusted content)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from hcsshim import errdefs
from hcsshim.layers import tar2ext4
from hcsshim.servicevm.tools import GUEST_PYTHON, GUEST_SCRIPT, ToolsDisk, ensure_tools_disk
from hcsshim.uvm.document import default_lcow_document
from hcsshim.uvm.template import create_uvm
from hcsshim.uvm.utility_vm import UtilityVM

log = logging.getLogger(__name__)

# The output disk: sparse, so its size only bounds the layer (upstream's maxLcowVhdSizeGB).
OUT_DISK_SIZE = 128 << 30
# Where the guest unpacks the tar (ext4: tmpfs has no user.* xattrs before Linux 6.6); sparse too.
SCRATCH_DISK_SIZE = 128 << 30
DEFAULT_TIMEOUT = 600.0
GUEST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_SECTOR = 512


class ServiceVMError(RuntimeError):
    """The service VM could not convert the layer (it did not boot, died, or timed out)."""

    kind = errdefs.Kind.UNAVAILABLE


@dataclass
class _Booted:
    vm: UtilityVM
    tools_guest_path: str

    @property
    def alive(self) -> bool:
        return self.vm.system.exit_info is None


_counter = itertools.count()


def _vm_id(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


def _prepare(tar_path: str, out_path: str) -> tuple[int, str, str]:
    """(tar size, the output disk, the scratch disk): both sparse, the output beside out_path."""
    tar_size = os.stat(tar_path).st_size
    partial = tar2ext4.partial_path(out_path)
    scratch = partial + ".scratch"
    try:
        with open(partial, "r+b") as f:
            f.truncate(OUT_DISK_SIZE)
        with open(scratch, "x+b") as f:
            f.truncate(SCRATCH_DISK_SIZE)
    except BaseException:
        _remove(scratch)
        _remove(partial)
        raise
    return tar_size, partial, scratch


def _finish(partial: str, out_path: str, size: int) -> None:
    """The ext4 the guest wrote is the first `size` bytes; then the footer and the rename."""
    with open(partial, "r+b") as f:
        f.truncate(size)
    tar2ext4.seal(partial, out_path, tar2ext4.Options(append_vhd_footer=True))


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class _ServiceVMBase:
    name = "service-vm"
    prefix = "svm"

    def __init__(
        self,
        *,
        tools_dir: str | None = None,
        templates: bool = True,
        annotations: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._tools_dir = tools_dir
        self._templates = templates
        self._annotations = dict(annotations or {})
        self._timeout = timeout
        self._tools: ToolsDisk | None = None
        self._tools_lock = asyncio.Lock()
        self.boots = 0  # service VMs started (a test and the benchmark read it)
        # The phases of the last conversion: the guest's (inside exec) and the host's (SCSI, exec).
        self.last_guest_seconds: dict[str, float] = {}
        self.last_host_seconds: dict[str, float] = {}

    async def _tools_disk(self) -> ToolsDisk:
        async with self._tools_lock:
            if self._tools is None:
                self._tools = await asyncio.to_thread(ensure_tools_disk, self._tools_dir)
            return self._tools

    async def _boot(self) -> _Booted:
        tools = await self._tools_disk()
        vm_id = _vm_id(self.prefix)
        started = time.monotonic()
        # The builder scans the boot files directory: off the loop.
        document = await asyncio.to_thread(default_lcow_document, vm_id, self._annotations)
        vm = await create_uvm(vm_id, document, templates=self._templates)
        try:
            await vm.start()
            mount = await vm.add_scsi(tools.path, read_only=True)
        except BaseException:
            with contextlib.suppress(Exception):
                await vm.terminate()
            raise
        self.boots += 1
        log.info(
            "service vm ready",
            extra={"id": vm_id, "converter": self.name, "seconds": round(time.monotonic() - started, 3)},
        )
        return _Booted(vm, mount.guest_path)

    async def _convert_in(self, booted: _Booted, tar_path: str, out_path: str, layer: str) -> tar2ext4.Result:
        """One conversion in a running service VM; a failure leaves nothing at out_path and no
        partial file, and names the layer."""
        vm = booted.vm
        tar_path = os.path.abspath(tar_path)
        # File work in as few worker-thread hops as it takes (each one is a loop callback).
        tar_size, partial, scratch = await asyncio.to_thread(_prepare, tar_path, out_path)
        try:
            try:
                answer = await self._run_guest(
                    vm, booted.tools_guest_path, tar_path, tar_size, partial, scratch, layer
                )
            finally:
                await asyncio.to_thread(_remove, scratch)
            if "error" in answer:
                raise tar2ext4.LayerError(f"layer {layer}: {answer['error']}")
            size = int(answer["size"])
            log.info(
                "layer converted in the service vm",
                extra={"id": vm.id, "layer": layer, "guest_seconds": answer.get("seconds")},
            )
            self.last_guest_seconds = dict(answer.get("seconds") or {})
            await asyncio.to_thread(_finish, partial, out_path, size)
        except BaseException:
            await asyncio.to_thread(_remove, partial)
            raise
        return tar2ext4.Result(
            out_path, size, int(answer["entries"]), int(answer["whiteouts"]), int(answer["opaque_dirs"])
        )

    async def _run_guest(
        self,
        vm: UtilityVM,
        tools: str,
        tar_path: str,
        tar_size: int,
        partial: str,
        scratch: str,
        layer: str,
    ) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            async with contextlib.AsyncExitStack() as stack:
                disks = {}
                for key, path, ro in (
                    ("tar", tar_path, True),
                    ("out", partial, False),
                    ("scratch", scratch, False),
                ):
                    disks[key] = (await vm.add_scsi(path, read_only=ro, block_dev=True)).guest_path
                    stack.push_async_callback(vm.remove_scsi, path)
                args = {
                    "tools": tools,
                    "tar_size": tar_size,
                    "out_size": OUT_DISK_SIZE,
                    "scratch_dir": f"/run/hcsshim-svm/{os.path.basename(partial)}",
                    **disks,
                }
                argv = [GUEST_PYTHON, "-S", f"{tools}/{GUEST_SCRIPT}", json.dumps(args)]
                t1 = time.monotonic()
                # The tools' libraries for Python too: its _bz2/_lzma come from the tools disk.
                env = {"PATH": GUEST_PATH, "LD_LIBRARY_PATH": f"{tools}/lib", "LC_ALL": "C"}
                code, out, err = await vm.exec_in_uvm(argv, timeout=self._timeout, env=env)
                t2 = time.monotonic()
            self.last_host_seconds = {
                "attach": round(t1 - t0, 3),
                "exec": round(t2 - t1, 3),
                "detach": round(time.monotonic() - t2, 3),
            }
        except (TimeoutError, OSError, ConnectionError) as e:
            raise ServiceVMError(f"layer {layer}: service VM {vm.id}: {e}") from e
        except Exception as e:
            if isinstance(e, tar2ext4.LayerError):
                raise
            raise ServiceVMError(f"layer {layer}: service VM {vm.id}: {e}") from e
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            answer: dict[str, Any] = json.loads(lines[-1]) if lines else {}
        except ValueError:
            answer = {}
        if not answer or (code != 0 and "error" not in answer):
            why = err.decode(errors="replace").strip()[-2000:] or f"exit code {code}"
            raise ServiceVMError(f"layer {layer}: service VM {vm.id}: the conversion failed: {why}")
        return answer


class GlobalServiceVMConverter(_ServiceVMBase):
    """One long-lived service VM for every conversion (booted at the first, one conversion at a
    time, replaced when it has died, terminated by close())."""

    name = "global-vm"
    prefix = "svm-global"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._vm: _Booted | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def vm(self) -> UtilityVM | None:
        return self._vm.vm if self._vm is not None else None

    async def convert(self, tar_path: str, out_path: str, *, layer: str) -> tar2ext4.Result:
        async with self._lock:
            if self._closed:
                raise ServiceVMError(f"layer {layer}: the global service VM converter is closed")
            if self._vm is not None and not self._vm.alive:
                log.warning("the global service vm died; starting another", extra={"id": self._vm.vm.id})
                await self._stop()
            if self._vm is None:
                try:
                    self._vm = await self._boot()
                except Exception as e:
                    raise ServiceVMError(f"layer {layer}: the service VM did not start: {e}") from e
            try:
                return await self._convert_in(self._vm, tar_path, out_path, layer)
            except tar2ext4.LayerError:
                raise  # the layer's fault; the VM answered and stays
            except BaseException:
                # A VM that failed us (timeout, lost bridge, a cancelled conversion whose guest
                # process may still run) is not trusted with the next layer.
                await self._stop()
                raise

    async def _stop(self) -> None:
        booted, self._vm = self._vm, None
        if booted is not None:
            with contextlib.suppress(Exception):
                await booted.vm.terminate()

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            await self._stop()


class PerInstanceServiceVMConverter(_ServiceVMBase):
    """A fresh service VM for each conversion, terminated when it ends (also on failure)."""

    name = "per-instance-vm"
    prefix = "svm"

    async def convert(self, tar_path: str, out_path: str, *, layer: str) -> tar2ext4.Result:
        try:
            booted = await self._boot()
        except Exception as e:
            raise ServiceVMError(f"layer {layer}: the service VM did not start: {e}") from e
        try:
            return await self._convert_in(booted, tar_path, out_path, layer)
        finally:
            with contextlib.suppress(Exception):
                await booted.vm.terminate()

    async def close(self) -> None:
        return None
