"""UVM templates: boot a configuration once, save it at agent-ready, restore later UVMs from it.

A template lives in ROOT/<key>, the key being the compute backend's fingerprint of the document
(hcs.template_key: QEMU's argv without per-instance paths, and the identity of QEMU, the kernel,
the initrd and every boot disk). A changed image, kernel or QEMU is a new key; templates whose
files no longer match are removed when the next one is built. A template is built in a private
directory under an exclusive lock, and renamed into place only once saved and synced, so a crash
mid-build never leaves a template that looks complete. Clones map the memory file copy-on-write;
its directory is removed by unlinking only, so running clones keep their mapping."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fcntl
import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hcsshim import errdefs
from hcsshim.hcs import ErrNotSupported, HcsError, template_key
from hcsshim.uvm.document import boot_files_path, uvm_document
from hcsshim.uvm.errors import UvmError
from hcsshim.uvm.utility_vm import UtilityVM

log = logging.getLogger(__name__)

COMPLETE_FILE = "template.json"
FAILED_SUFFIX = ".failed"
# Each template holds the guest's touched memory on disk (about 150 MB for the default UVM); the
# least recently used beyond this many are removed when another is built.
MAX_TEMPLATES = 8
FAILED_RETRY_AFTER = 600.0


@dataclass(frozen=True)
class PoolConfig:
    """The warm pool of one configuration (uvm/pool.py): `size` paused clones kept ready (0: no
    pool), the guest memory of all pooled clones together at most `memory_mb` (0: no cap)."""

    size: int = 0
    memory_mb: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 0


class TemplateUnavailable(Exception):
    """This configuration cannot be templated (an earlier build failed, and says why)."""

    kind = errdefs.Kind.UNAVAILABLE


def default_root() -> str:
    """Beside the boot files (/var/cache/hcsshim/templates): the same disk, kept across reboots."""
    return os.path.join(os.path.dirname(os.path.abspath(boot_files_path())), "templates")


def _files_of(doc: dict[str, Any]) -> list[str]:
    vm = doc.get("VirtualMachine") or {}
    lkd = (vm.get("Chipset") or {}).get("LinuxKernelDirect") or {}
    files = [str(lkd.get(k)) for k in ("KernelFilePath", "InitRdPath") if lkd.get(k)]
    for ctrl in ((vm.get("Devices") or {}).get("Scsi") or {}).values():
        for att in (ctrl.get("Attachments") or {}).values():
            if att.get("Path"):
                files.append(str(att["Path"]))
    return files


def _identity(path: str) -> list[Any]:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None]
    return [path, st.st_size, st.st_mtime_ns]


class TemplateStore:
    def __init__(self, root: str | None = None) -> None:
        self.root = root or default_root()

    def path(self, key: str) -> str:
        return os.path.join(self.root, key)

    def complete(self, key: str) -> bool:
        return os.path.isfile(os.path.join(self.path(key), COMPLETE_FILE))

    async def clone(self, uvm_id: str, document: Any, *, pool: PoolConfig | None = None) -> UtilityVM:
        """A created (not started) UVM restored from the template of `document`'s configuration,
        building the template first when there is none. With an enabled `pool` the UVM is a paused
        clone taken from the warm pool when one is ready (uvm/pool.py), and the pool is refilled in
        the background. Raises ErrNotSupported where the backend cannot clone and
        TemplateUnavailable where this configuration could not be saved."""
        doc = await asyncio.to_thread(uvm_document, document, uvm_id)
        key = await template_key(doc)
        directory = await self.ensure(key, doc)
        # Last use, for the least-recently-used pruning.
        await asyncio.to_thread(_touch, os.path.join(directory, COMPLETE_FILE))
        restored = restored_document(doc, key, directory)
        started = time.monotonic()
        if pool is not None and pool.enabled:
            from hcsshim.uvm.pool import Pool

            warm = Pool(store=self)
            system = await warm.claim(f"{uvm_id}@vm", key, restored)
            if system is not None:
                log.info(
                    "uvm taken from the warm pool",
                    extra={"id": uvm_id, "template": key, "seconds": round(time.monotonic() - started, 3)},
                )
                vm = UtilityVM(uvm_id, system, restored)
            else:
                vm = await UtilityVM.create(uvm_id, restored)
                log.info(
                    "uvm restored from template",
                    extra={"id": uvm_id, "template": key, "seconds": round(time.monotonic() - started, 3)},
                )
            # Refilled once this UVM is ready: the filler must not compete with the start.
            vm.on_ready.append(functools.partial(warm.refill_in_background, key, restored, pool))
            return vm
        vm = await UtilityVM.create(uvm_id, restored)
        log.info(
            "uvm restored from template",
            extra={"id": uvm_id, "template": key, "seconds": round(time.monotonic() - started, 3)},
        )
        return vm

    async def build_for(self, document: Any) -> tuple[str, str]:
        """(key, directory) of `document`'s template, built now unless it exists."""
        doc = await asyncio.to_thread(uvm_document, document, "template")
        key = await template_key(doc)
        return key, await self.ensure(key, doc)

    def remove_all(self) -> list[str]:
        removed = [name for name, _ in self._templates()]
        for name in removed:
            _remove(self.path(name))
        return removed

    async def ensure(self, key: str, doc: dict[str, Any]) -> str:
        final = self.path(key)
        if self.complete(key):
            return final
        await asyncio.to_thread(os.makedirs, self.root, 0o700, True)
        lock_fd = await asyncio.to_thread(
            os.open, os.path.join(self.root, f".{key}.lock"), os.O_CREAT | os.O_RDWR, 0o600
        )
        try:
            # Another shim may be building the same template: wait for it rather than build twice.
            await asyncio.to_thread(fcntl.flock, lock_fd, fcntl.LOCK_EX)
            failed = await asyncio.to_thread(_recent_failure, final + FAILED_SUFFIX)
            if failed is not None:
                raise TemplateUnavailable(f"template {key} could not be built earlier: {failed}")
            if not self.complete(key):
                try:
                    await self._build(key, doc)
                except (HcsError, UvmError) as e:
                    # Remembered per key (a changed image is a new key): later UVMs of this
                    # configuration boot cold at once instead of failing the same build again.
                    await asyncio.to_thread(_write_text, final + FAILED_SUFFIX, str(e))
                    raise TemplateUnavailable(f"building template {key} failed: {e}") from e
        finally:
            os.close(lock_fd)
        return final

    async def _build(self, key: str, doc: dict[str, Any]) -> None:
        final = self.path(key)
        tmp = f"{final}.build-{os.getpid()}"
        await asyncio.to_thread(_remove, tmp)
        await asyncio.to_thread(_remove, final)  # an incomplete leftover of a crashed build
        await asyncio.to_thread(os.makedirs, tmp, 0o700)
        source = copy.deepcopy(doc)
        source["Owner"] = f"template-{key[:12]}"
        source["VirtualMachine"]["SaveableAsTemplate"] = {"SaveStateFilePath": tmp}
        started = time.monotonic()
        log.info("building uvm template", extra={"template": key, "dir": final})
        try:
            vm = await UtilityVM.create(f"template-{key[:12]}-{os.getpid()}", source)
            try:
                await vm.start()
                await vm.save_as_template(tmp)
            finally:
                await vm.terminate()
            meta = {"key": key, "created": time.time(), "files": [_identity(f) for f in _files_of(doc)]}
            await asyncio.to_thread(_write_json, os.path.join(tmp, COMPLETE_FILE), meta)
            await asyncio.to_thread(os.rename, tmp, final)
        except BaseException:
            await asyncio.to_thread(_remove, tmp)
            raise
        log.info(
            "uvm template saved",
            extra={"template": key, "seconds": round(time.monotonic() - started, 3), "dir": final},
        )
        await asyncio.to_thread(self.prune_stale)

    def stale_reason(self, directory: str, created: float | None = None) -> str | None:
        """Why the template in `directory` can no longer be cloned (gone, rebuilt since `created`, or
        its kernel, initrd or disks changed), or None while it is current. Blocking."""
        try:
            with open(os.path.join(directory, COMPLETE_FILE)) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return f"template {directory} is gone"
        if created is not None and meta.get("created") != created:
            return f"template {directory} was rebuilt"
        changed = [str(f[0]) for f in meta.get("files", []) if _identity(str(f[0])) != f]
        return f"the files of template {directory} changed: {', '.join(changed)}" if changed else None

    def created(self, directory: str) -> float | None:
        try:
            with open(os.path.join(directory, COMPLETE_FILE)) as f:
                value = json.load(f).get("created")
        except (OSError, ValueError, AttributeError):
            return None
        return float(value) if isinstance(value, (int, float)) else None

    def prune_stale(self, keep: int = MAX_TEMPLATES) -> list[str]:
        """Remove templates whose kernel, initrd or disks changed since they were saved (their key can
        never match again), then the least recently used beyond `keep`; returns what was removed."""
        removed = []
        fresh: list[tuple[float, str]] = []
        for name, meta in self._templates():
            if any(_identity(str(f[0])) != f for f in meta.get("files", [])):
                _remove(self.path(name))
                removed.append(name)
                log.info("removed stale uvm template", extra={"template": name})
            else:
                with contextlib.suppress(OSError):
                    fresh.append((os.stat(os.path.join(self.path(name), COMPLETE_FILE)).st_mtime, name))
        for _, name in sorted(fresh, reverse=True)[keep:]:
            _remove(self.path(name))
            removed.append(name)
            log.info("removed least recently used uvm template", extra={"template": name})
        return removed

    def _templates(self) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in names:
            with (
                contextlib.suppress(OSError, ValueError),
                open(os.path.join(self.root, name, COMPLETE_FILE)) as f,
            ):
                yield name, json.load(f)

    def list(self) -> list[dict[str, Any]]:
        return [{"key": name, "dir": self.path(name), **meta} for name, meta in self._templates()]


def restored_document(doc: dict[str, Any], key: str, directory: str) -> dict[str, Any]:
    """`doc` as a clone of the template `key` saved in `directory`."""
    restored = copy.deepcopy(doc)
    restored["VirtualMachine"]["RestoreState"] = {"SaveStateFilePath": directory, "TemplateSystemId": key}
    return restored


def _touch(path: str) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _recent_failure(path: str) -> str | None:
    """Why the last build failed, if it failed within FAILED_RETRY_AFTER (a failure may be passing,
    such as an overloaded host, so it is tried again after a while)."""
    try:
        with open(path) as f:
            if time.time() - os.fstat(f.fileno()).st_mtime < FAILED_RETRY_AFTER:
                return f.read()
    except FileNotFoundError:
        return None
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return None


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _write_json(path: str, body: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(body, f)
        f.flush()
        os.fsync(f.fileno())


def _remove(path: str) -> None:
    # Unlink only (never truncate): a running clone keeps its private mapping of the memory file.
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


async def create_uvm(
    uvm_id: str,
    document: Any,
    *,
    templates: bool,
    store: TemplateStore | None = None,
    pool: PoolConfig | None = None,
) -> UtilityVM:
    """The UVM for `document`: from its template when `templates` is on and the backend can clone
    (from the warm pool when `pool` is enabled and has one), else booted cold (with a log line
    saying why)."""
    if templates:
        try:
            return await (store or TemplateStore()).clone(uvm_id, document, pool=pool)
        except ErrNotSupported as e:
            log.warning("uvm templates unavailable; booting cold", extra={"id": uvm_id, "why": str(e)})
        except TemplateUnavailable as e:
            log.error(
                "no uvm template for this configuration; booting cold", extra={"id": uvm_id, "error": str(e)}
            )
        except HcsError as e:
            # The restore itself failed, e.g. another shim pruned the template between the lookup and
            # QEMU's start: the pod still gets its UVM, booted as if there were no template.
            log.error(
                "restoring from the uvm template failed; booting cold", extra={"id": uvm_id, "error": str(e)}
            )
    return await UtilityVM.create(uvm_id, document)
