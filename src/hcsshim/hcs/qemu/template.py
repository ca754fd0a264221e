"""VM templates in the qemu backend: what identifies a configuration, and QEMU's save and restore.

A template VM maps its RAM from TEMPLATE_MEMORY_FILE with share=on; saving it with the
x-ignore-shared capability writes only device state (TEMPLATE_STATE_FILE) because the RAM is
already in the file. A clone maps that file privately (QEMU >= 8.2: read-only file, writable
copy-on-write mapping), so the pages no clone writes stay one copy in the page cache, and loads the
device state with `-incoming defer` + migrate-incoming (Kata's VM templating, in QEMU terms)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

from hcsshim.hcs.errors import (
    ErrInvalidData,
    ErrNotSupported,
    ErrTimeout,
    ErrVmcomputeUnexpectedExit,
    HcsError,
)
from hcsshim.hcs.qemu.accel import QemuVersion
from hcsshim.hcs.qemu.cmdline import Paths, build_argv
from hcsshim.hcs.qemu.config import TEMPLATE_MEMORY_FILE, TEMPLATE_STATE_FILE, VmConfig

# Bumped when what a saved template holds, or how a clone is restored, changes.
FORMAT = 1
# readonly=on,rom=off (a private writable mapping of a read-only file) arrived in QEMU 8.2.
TEMPLATES_SINCE = (8, 2)
MIGRATION_TIMEOUT = 120.0
_POLL = 0.02

Execute = Callable[[str, dict[str, Any] | None], Awaitable[Any]]

IGNORE_SHARED = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}


def supported(version: QemuVersion) -> tuple[bool, str]:
    if version.numbers and version.numbers[:2] >= TEMPLATES_SINCE:
        return True, f"QEMU {version} can map a template's memory copy-on-write"
    return False, (
        f"QEMU {version} is older than {'.'.join(map(str, TEMPLATES_SINCE))}: it cannot map a "
        "template's memory file read-only and copy-on-write, so UVMs boot cold"
    )


def _file_identity(path: str) -> list[Any]:
    try:
        st = os.stat(path)
    except OSError as e:
        return [path, f"missing: {e.strerror}"]
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino]


def fingerprint(cfg: VmConfig, qemu: str, accel_spec: str, version: QemuVersion) -> str:
    """The key of a configuration: QEMU's argv with every per-instance name and path left out, and the
    identity of every file it reads (QEMU itself, kernel, initrds, disks, PMem). A change to any of
    them is a different key, so a stale template is never restored."""
    plain = dataclasses.replace(cfg, owner="", template_dir=None, restore_dir=None, plan9=[])
    argv = build_argv(qemu, "template", plain, Paths("@qmp", "@mux", "@console", "@plan9"), accel_spec)
    files = [shutil.which(qemu) or qemu, cfg.kernel, cfg.initrd or "", cfg.stage1_initrd or ""]
    files += [d.path for c in cfg.scsi.values() for d in c.disks.values()]
    files += [d.path for d in cfg.vpmem.values()]
    body = {
        "format": FORMAT,
        "argv": argv[1:],
        "qemu": version.text,
        "files": [_file_identity(f) for f in files if f],
        "plan9": sorted((s.name, s.read_only) for s in cfg.plan9),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


async def _wait_migration(execute: Execute, op: str, system_id: str, alive: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MIGRATION_TIMEOUT
    while True:
        info = await execute("query-migrate", None)
        status = info.get("status", "") if isinstance(info, dict) else ""
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise HcsError(op, system_id, f"saving the VM failed: {info.get('error-desc', status)}")
        if not alive():
            raise ErrVmcomputeUnexpectedExit(op, system_id, "QEMU exited while saving the VM")
        if loop.time() > deadline:
            raise ErrTimeout(
                op, system_id, f"saving the VM did not finish in {MIGRATION_TIMEOUT:.0f}s ({status})"
            )
        await asyncio.sleep(_POLL)


async def save(execute: Execute, system_id: str, cfg: VmConfig, alive: Callable[[], bool]) -> None:
    """Write the paused VM's device state beside its memory file."""
    assert cfg.template_dir is not None
    state = os.path.join(cfg.template_dir, TEMPLATE_STATE_FILE)
    await execute("migrate-set-capabilities", IGNORE_SHARED)
    await execute("migrate", {"uri": f"file:{state}"})
    await _wait_migration(execute, "Save", system_id, alive)
    # The clones read the memory file through the page cache; fsync makes the template survive a
    # host crash too (a half-written one is never marked complete by the caller).
    await asyncio.to_thread(_fsync_files, [state, os.path.join(cfg.template_dir, TEMPLATE_MEMORY_FILE)])


def _fsync_files(paths: list[str]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def restore(execute: Execute, system_id: str, cfg: VmConfig, alive: Callable[[], bool]) -> None:
    """Load a template's device state into a QEMU started with `-incoming defer` and -S: it ends
    paused, like a created VM, and start() resumes it."""
    assert cfg.restore_dir is not None
    op = "CreateComputeSystem"
    await execute("migrate-set-capabilities", IGNORE_SHARED)
    await execute("migrate-incoming", {"uri": f"file:{os.path.join(cfg.restore_dir, TEMPLATE_STATE_FILE)}"})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MIGRATION_TIMEOUT
    while True:
        status = await execute("query-status", None)
        run_state = status.get("status", "") if isinstance(status, dict) else ""
        if run_state not in ("inmigrate", ""):
            if run_state != "paused" and run_state != "prelaunch":
                raise ErrInvalidData(op, system_id, f"restoring the template left QEMU {run_state!r}")
            return
        if not alive():
            raise ErrInvalidData(op, system_id, "QEMU exited while restoring the template (see its log)")
        if loop.time() > deadline:
            raise ErrTimeout(
                op, system_id, f"restoring the template did not finish in {MIGRATION_TIMEOUT:.0f}s"
            )
        await asyncio.sleep(_POLL)


def check_save_options(options: dict[str, Any], cfg: VmConfig, system_id: str) -> None:
    save_type = options.get("SaveType")
    if save_type != "AsTemplate":
        raise ErrNotSupported(
            "Save", system_id, f"SaveOptions.SaveType {save_type!r}: only 'AsTemplate' is supported"
        )
    if cfg.template_dir is None:
        raise ErrNotSupported(
            "Save",
            system_id,
            "this VM was not created SaveableAsTemplate: its RAM is not in a file QEMU can leave "
            "out of the saved state",
        )
    path = options.get("SaveStateFilePath") or cfg.template_dir
    if os.path.realpath(str(path)) != os.path.realpath(cfg.template_dir):
        raise ErrInvalidData(
            "Save",
            system_id,
            f"SaveOptions.SaveStateFilePath {path!r} is not the directory the VM was created with "
            f"({cfg.template_dir!r})",
        )
