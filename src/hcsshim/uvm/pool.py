"""The warm pool: paused clones of a template kept ready, so a pod start is a claim, the clone's
identity and a resume instead of starting QEMU and restoring.

Each pod has a shim process of its own, so pooled clones belong to no shim: they are parked by the
compute backend (hcs.park_clone: a QEMU in a session of its own, paused, listening on its own QMP
socket) in ROOT/<template key>/e-<id>/, and a shim takes one with hcs.adopt_parked_clone, which
renames the directory into its own state directory (atomic: of two claimers one wins) and watches
the QEMU through a pidfd. A pooled clone has not run since its template was saved; its identity is
applied when its claimer starts it, exactly as for a clone restored on demand.

The pool never delays or fails a request: a claim that finds nothing usable returns None at once and
the caller restores as before. Refilling happens in a detached filler process
(`python -m hcsshim.uvm.pool fill KEY ...`, at SCHED_IDLE) started after every claim, one per key at
a time (an flock; a second one queues, a third has nothing to add), within the memory cap: the guest
memory of every pooled clone of every key together. Entries whose template is gone, rebuilt or whose
files changed, and entries whose QEMU died, are removed by the next claim or filler.

Layout of ROOT/<key>/: `document.json` (the clone document fillers park), `.fill.lock` and
`.queue.lock`, `e-<id>/` ready entries, `.b-<id>/` entries being parked (only while their filler
holds `.fill.lock`), `.d-<id>/` entries being destroyed. Each entry holds the backend's files and
ENTRY_FILE, the pool's record (key, template, memory)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from hcsshim import hcs, procfs, settings
from hcsshim.hcs import ComputeSystem, ErrElementNotFound, HcsError
from hcsshim.uvm.template import PoolConfig, TemplateStore

log = logging.getLogger(__name__)

ENTRY_FILE = "pool.json"
DOCUMENT_FILE = "document.json"
FILL_LOCK = ".fill.lock"
QUEUE_LOCK = ".queue.lock"
READY, BUILDING, DOOMED = "e-", ".b-", ".d-"
MAX_SIZE = 64
DRAIN_WAIT = 20.0
FILLER_MODULE = "hcsshim.uvm.pool"

_background: set[asyncio.Task[None]] = set()


def default_root() -> str:
    """HCSSHIM_RUN_DIR/pool: beside the VMs' state directories (the same file system, so a claim is
    a rename; a tmpfs, so a reboot, which kills the pool's QEMUs, also forgets them)."""
    return os.path.join(settings.current().run_dir, "pool")


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            body = json.load(f)
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _write_json(path: str, body: dict[str, Any]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(body, f)
    os.rename(tmp, path)


def memory_of(document: dict[str, Any]) -> int:
    """The guest memory (MB) of a VM document."""
    vm = document.get("VirtualMachine") or {}
    size = ((vm.get("ComputeTopology") or {}).get("Memory") or {}).get("SizeInMB")
    return int(size) if isinstance(size, int) and size > 0 else 1024


def _template_dir(document: dict[str, Any]) -> str:
    restore = (document.get("VirtualMachine") or {}).get("RestoreState") or {}
    return str(restore.get("SaveStateFilePath") or "")


class Pool:
    def __init__(self, root: str | None = None, store: TemplateStore | None = None) -> None:
        self.root = root or default_root()
        self.store = store or TemplateStore()

    def key_dir(self, key: str) -> str:
        return os.path.join(self.root, key)

    # ---- looking -------------------------------------------------------------------------------

    def _subdirs(self, key: str, prefix: str) -> list[str]:
        try:
            names = os.listdir(self.key_dir(key))
        except FileNotFoundError:
            return []
        return [os.path.join(self.key_dir(key), n) for n in names if n.startswith(prefix)]

    def ready(self, key: str) -> list[str]:
        """The ready entries of `key`, oldest first."""

        def age(path: str) -> float:
            with contextlib.suppress(OSError):
                return os.stat(os.path.join(path, ENTRY_FILE)).st_mtime
            return 0.0

        return sorted(self._subdirs(key, READY), key=age)

    def keys(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.root) if os.path.isdir(self.key_dir(n)))
        except FileNotFoundError:
            return []

    def entries(self) -> list[dict[str, Any]]:
        """Every entry: key, dir, state (ready, building, doomed), pid, memory_mb, created."""
        states = {READY: "ready", BUILDING: "building", DOOMED: "doomed"}
        out = []
        for key in self.keys():
            for prefix, state in states.items():
                for path in self._subdirs(key, prefix):
                    meta = _read_json(os.path.join(path, ENTRY_FILE)) or {}
                    out.append({"key": key, "dir": path, "state": state, **meta})
        return out

    def reserved_mb(self) -> int:
        """Guest memory of every pooled clone of every key, ready or being parked or destroyed."""
        return sum(int(e.get("memory_mb") or 0) for e in self.entries())

    def stale_reason(self, entry: str) -> str | None:
        meta = _read_json(os.path.join(entry, ENTRY_FILE))
        if meta is None:
            return "no pool record"
        reason = self.store.stale_reason(str(meta.get("template") or ""), meta.get("template_created"))
        if reason is not None:
            return reason
        if not hcs.parked_clone_alive(entry):
            return "its QEMU is gone"
        return None

    # ---- claiming ------------------------------------------------------------------------------

    async def claim(self, system_id: str, key: str, document: dict[str, Any]) -> ComputeSystem | None:
        """A created (paused) system made of a pooled clone of `key`, or None when no entry is ready
        or usable (the caller restores instead). Never raises but for cancellation."""
        try:
            entries = await asyncio.to_thread(self.ready, key)
        except OSError as e:
            log.warning("warm pool unreadable", extra={"id": system_id, "error": str(e)})
            return None
        for entry in entries:
            try:
                reason = await asyncio.to_thread(self.stale_reason, entry)
                if reason is not None:
                    await asyncio.to_thread(self.discard, entry, reason)
                    continue
                system = await hcs.adopt_parked_clone(system_id, entry, document)
            except ErrElementNotFound:
                continue  # another shim took it first
            except Exception as e:  # the pool must never fail a request: restore instead
                log.warning(
                    "claiming a pooled clone failed", extra={"id": system_id, "entry": entry, "error": str(e)}
                )
                continue
            log.info("claimed a pooled clone", extra={"id": system_id, "entry": entry, "template": key})
            return system
        log.info("warm pool empty", extra={"id": system_id, "template": key})
        return None

    def discard(self, entry: str, reason: str) -> bool:
        """Destroy a ready entry unless a claimer took it first (both rename it). Blocking."""
        head, name = os.path.split(entry)
        doomed = os.path.join(head, DOOMED + name.removeprefix(READY))
        try:
            os.rename(entry, doomed)
        except FileNotFoundError:
            return False
        log.info("removing a pooled clone", extra={"entry": entry, "why": reason})
        hcs.destroy_parked_clone(doomed)
        return True

    def sweep(self) -> list[str]:
        """Remove the ready entries of every key whose template is stale or whose QEMU died."""
        removed = []
        for key in self.keys():
            for entry in self.ready(key):
                reason = self.stale_reason(entry)
                if reason is not None and self.discard(entry, reason):
                    removed.append(entry)
        return removed

    # ---- filling -------------------------------------------------------------------------------

    def deficit(self, key: str, config: PoolConfig) -> int:
        return max(0, min(config.size, MAX_SIZE) - len(self.ready(key)))

    async def fill(self, key: str, config: PoolConfig, document: dict[str, Any] | None = None) -> int:
        """Park clones of `key` until `config.size` are ready or the memory cap is reached; returns
        how many were added. One filler per key runs at a time; when one is already waiting for
        its turn this returns 0 at once (the waiting one sees what this one would have added)."""
        kd = self.key_dir(key)
        await asyncio.to_thread(os.makedirs, kd, 0o700, True)
        if document is not None:
            await asyncio.to_thread(_write_json, os.path.join(kd, DOCUMENT_FILE), document)
        queue_fd = await asyncio.to_thread(
            os.open, os.path.join(kd, QUEUE_LOCK), os.O_CREAT | os.O_RDWR, 0o600
        )
        try:
            fcntl.flock(queue_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(queue_fd)
            return 0
        run_fd = await asyncio.to_thread(os.open, os.path.join(kd, FILL_LOCK), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                await asyncio.to_thread(fcntl.flock, run_fd, fcntl.LOCK_EX)
            finally:
                os.close(queue_fd)
            return await self._fill_locked(key, config)
        finally:
            os.close(run_fd)

    async def _fill_locked(self, key: str, config: PoolConfig) -> int:
        kd = self.key_dir(key)
        # Holding the fill lock: every `.b-` of this key is left by a filler that died, every `.d-`
        # by a destroy that did not finish.
        for path in self._subdirs(key, BUILDING) + self._subdirs(key, DOOMED):
            await asyncio.to_thread(hcs.destroy_parked_clone, path)
        await asyncio.to_thread(self.sweep)
        document = await asyncio.to_thread(_read_json, os.path.join(kd, DOCUMENT_FILE))
        if document is None:
            log.warning("no document to fill the warm pool from", extra={"template": key})
            return 0
        template = _template_dir(document)
        reason = await asyncio.to_thread(self.store.stale_reason, template)
        if reason is not None:
            log.warning("not filling the warm pool", extra={"template": key, "why": reason})
            return 0
        created = await asyncio.to_thread(self.store.created, template)
        memory = memory_of(document)
        added = 0
        while await asyncio.to_thread(self.deficit, key, config):
            entry = await asyncio.to_thread(self._reserve, key, memory, config, template, created)
            if entry is None:
                break
            try:
                pid = await hcs.park_clone(entry, document)
                meta = _read_json(os.path.join(entry, ENTRY_FILE)) or {}
                await asyncio.to_thread(_write_json, os.path.join(entry, ENTRY_FILE), {**meta, "pid": pid})
                name = os.path.basename(entry).removeprefix(BUILDING)
                await asyncio.to_thread(os.rename, entry, os.path.join(kd, READY + name))
            except HcsError as e:
                log.error(
                    "parking a clone for the warm pool failed", extra={"template": key, "error": str(e)}
                )
                await asyncio.to_thread(hcs.destroy_parked_clone, entry)
                break
            except BaseException:
                await asyncio.to_thread(hcs.destroy_parked_clone, entry)
                raise
            added += 1
            ready = len(await asyncio.to_thread(self.ready, key))
            log.info("warm pool entry ready", extra={"template": key, "pid": pid, "ready": ready})
        return added

    def _reserve(
        self, key: str, memory: int, config: PoolConfig, template: str, created: float | None
    ) -> str | None:
        """A new `.b-` entry holding its record, unless the memory cap would be passed. The cap is
        checked and the record written under one lock for all keys."""
        os.makedirs(self.root, 0o700, exist_ok=True)
        fd = os.open(os.path.join(self.root, ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            used = self.reserved_mb()
            if config.memory_mb and used + memory > config.memory_mb:
                log.info(
                    "warm pool at its memory cap",
                    extra={"template": key, "used_mb": used, "cap_mb": config.memory_mb, "needs_mb": memory},
                )
                return None
            entry = os.path.join(self.key_dir(key), BUILDING + secrets.token_hex(6))
            os.makedirs(entry, 0o700)
            record = {
                "key": key,
                "template": template,
                "template_created": created,
                "memory_mb": memory,
                "created": time.time(),
                "filler": os.getpid(),
            }
            _write_json(os.path.join(entry, ENTRY_FILE), record)
            return entry
        finally:
            os.close(fd)

    def refill_in_background(self, key: str, document: dict[str, Any], config: PoolConfig) -> None:
        """Start a detached filler for `key` unless the pool is full; returns at once."""
        task = asyncio.get_running_loop().create_task(self._start_filler(key, document, config))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _start_filler(self, key: str, document: dict[str, Any], config: PoolConfig) -> None:
        try:
            await asyncio.to_thread(self._spawn_filler, key, document, config)
        except Exception as e:
            log.warning("starting the warm pool filler failed", extra={"template": key, "error": str(e)})

    def _spawn_filler(self, key: str, document: dict[str, Any], config: PoolConfig) -> None:
        if not self.deficit(key, config):
            return
        # A filler would fail at its first park: not one per pod start, just this line.
        why = hcs.parking_unsupported()
        if why:
            log.info("warm pool not refilled", extra={"template": key, "why": why})
            return
        kd = self.key_dir(key)
        os.makedirs(kd, 0o700, exist_ok=True)
        _write_json(os.path.join(kd, DOCUMENT_FILE), document)
        argv = [sys.executable, "-m", FILLER_MODULE, "fill", key, "--root", self.root]
        argv += ["--size", str(config.size), "--memory-mb", str(config.memory_mb), "--background"]
        logfile = os.path.join(kd, "filler.log")
        append = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        # Born at SCHED_IDLE (its imports included: chrt execs it so) in a session of its own: it
        # only gets the CPU the pod that started it leaves idle, and outlives this process. Without
        # chrt it goes idle once its imports are done.
        chrt = shutil.which("chrt")
        if chrt:
            argv = [chrt, "--idle", "0", *argv]
        pid = os.posix_spawn(
            argv[0],
            argv,
            settings.inherited_environ(),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, logfile, append, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )
        # Reaped by a thread: the filler outlives a short request.
        threading.Thread(target=_reap, args=(pid,), name=f"pool-filler-{pid}", daemon=True).start()
        log.info("warm pool filler started", extra={"template": key, "pid": pid, "size": config.size})

    # ---- draining ------------------------------------------------------------------------------

    def drain(self, key: str | None = None) -> list[str]:
        """Stop the fillers, destroy every pooled clone (of `key`, or all) and remove the pool's
        directories. Blocking."""
        removed: list[str] = []
        pids: list[int] = []
        for k in [key] if key else self.keys():
            kd = self.key_dir(k)
            if not os.path.isdir(kd):
                continue
            for pid in _fillers(self.root, k):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            fd = os.open(os.path.join(kd, FILL_LOCK), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                _lock_or_kill(fd, self.root, k)
                for prefix in (READY, BUILDING, DOOMED):
                    for path in self._subdirs(k, prefix):
                        parked = (_read_json(os.path.join(path, ENTRY_FILE)) or {}).get("pid")
                        pids += [parked] if isinstance(parked, int) else []
                        hcs.destroy_parked_clone(path)
                        removed.append(path)
                shutil.rmtree(kd, ignore_errors=True)
            finally:
                os.close(fd)
            # A filler told to stop exits at once; until it has, the QEMUs it parked are its zombies.
            _wait(functools.partial(_no_fillers, self.root, k), DRAIN_WAIT)
        _wait(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids), DRAIN_WAIT)
        if not self.keys():
            shutil.rmtree(self.root, ignore_errors=True)
        return removed


def _fillers(root: str, key: str) -> Iterator[int]:
    """Filler processes of `key` in the pool at `root` (running or waiting for the lock)."""
    want = [FILLER_MODULE.encode(), key.encode(), root.encode()]
    for pid in procfs.pids():
        if pid != os.getpid() and all(w in procfs.argv(pid) for w in want):
            yield pid


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _no_fillers(root: str, key: str) -> bool:
    """No filler of `key` in two scans 50 ms apart. Blocking. One scan can miss a filler: while
    `chrt` execs python, the process's cmdline reads empty for a moment."""
    if any(_fillers(root, key)):
        return False
    time.sleep(0.05)
    return not any(_fillers(root, key))


def _wait(done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)


def _lock_or_kill(fd: int, root: str, key: str) -> None:
    deadline = time.monotonic() + DRAIN_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                for pid in _fillers(root, key):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                fcntl.flock(fd, fcntl.LOCK_EX)
                return
            time.sleep(0.05)


# ---- the filler process ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {FILLER_MODULE}")
    sub = parser.add_subparsers(dest="command", required=True)
    fill = sub.add_parser("fill", help="park clones of one template key up to --size")
    fill.add_argument("key")
    fill.add_argument("--root", required=True)
    fill.add_argument("--size", type=int, required=True)
    fill.add_argument("--memory-mb", type=int, default=0)
    fill.add_argument("--background", action="store_true", help="run at SCHED_IDLE")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if ns.background:
        # Only when nothing else wants the CPU: a refill never slows the pod that caused it.
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    async def run() -> int:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await Pool(ns.root).fill(ns.key, PoolConfig(ns.size, ns.memory_mb))

    try:
        added = asyncio.run(run())
    except asyncio.CancelledError:
        log.info("warm pool filler stopped", extra={"template": ns.key})
        return 1
    log.info(f"warm pool filler done: {added} added", extra={"template": ns.key})
    return 0


if __name__ == "__main__":
    sys.exit(main())
