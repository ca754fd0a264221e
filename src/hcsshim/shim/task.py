"""A task: one container in the pod's UVM, its init process and its execs.

Create mounts containerd's snapshot at ``<bundle>/rootfs``, shares it into the UVM over Plan9 (read-write:
the writes land in the snapshot's upper directory, never in the image's layers), shares the host
directories and files the spec bind-mounts, and asks the guest to create the container rooted at the
share. Delete undoes all of it in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from hcsshim import errdefs
from hcsshim.gcs.protocol import INIT_PROCESS_ID_KEY
from hcsshim.shim.host import Host, container_document
from hcsshim.shim.io import ProcessIO
from hcsshim.shim.lcow_rootfs import LcowRootfs, find_layers
from hcsshim.shim.process import Process, ProcessError, State
from hcsshim.shim.rootfs import MountSpec, mount_all, unmount
from hcsshim.shim.spec import Role

log = logging.getLogger("hcsshim.shim.task")

# The pod's /dev/shm is a tmpfs in the guest. CRI's /etc/hosts, /etc/resolv.conf and /etc/hostname
# are shared like any other bind mount, so containers see the files CRI wrote for the pod.
GUEST_PROVIDED = frozenset({"/dev/shm"})
CRI_POD_FILES = frozenset({"/etc/hosts", "/etc/resolv.conf", "/etc/hostname"})


class Task:
    def __init__(
        self,
        task_id: str,
        bundle: str,
        spec: dict[str, Any],
        role: Role,
        host: Host,
        init_io: ProcessIO,
        *,
        owns_host: bool,
        on_exit: Callable[[Process], None],
    ) -> None:
        self.id = task_id
        self.bundle = bundle
        self.spec = spec
        self.role = role
        self.host = host
        self.owns_host = owns_host
        self._on_exit = on_exit
        self.init = Process(task_id, "", init_io, on_exit=on_exit, reason_source=host.exit_reason)
        self.execs: dict[str, Process] = {}
        self._rootfs_target = ""
        self._lcow: LcowRootfs | None = None
        self._shares: list[str] = []
        self.created = False
        # An OOM kill reported before TaskStart went out; published right after it.
        self.oom_pending = False

    # ---- lifetime ------------------------------------------------------------------------------

    async def create(self, rootfs: Sequence[MountSpec]) -> None:
        try:
            root_guest = await self._share_rootfs(rootfs)
            spec = await self._share_bind_mounts(self.spec)
            # A UVM's guest joins its own pod netns, never the host's path; the local agent keeps the
            # host's OOM score floor and places bundles in its own state directory.
            spec = self.host.adjust_spec(spec)
            bundle_root = self.host.bundle_root
            bundle = f"{bundle_root}/{self.id}" if bundle_root else ""
            document = container_document(self.id, spec, root_guest, bundle)
            response = await self.host.bridge.create_container(self.id, document)
            self.created = True
            # Our guest names the init's pid from Create on (runc created it); containerd wants it.
            pid = response.get(INIT_PROCESS_ID_KEY) if isinstance(response, dict) else None
            self.init.pid = int(pid or 0)
            self.init.created_in(self.host.bridge)
        except BaseException:
            await self._release()
            raise

    async def _share_rootfs(self, rootfs: Sequence[MountSpec]) -> str:
        layers = await find_layers(rootfs)
        if layers is not None:
            # lcow snapshotter: disks into the UVM, overlay in the guest, nothing on the host.
            self._lcow = LcowRootfs(self.host, self.id)
            bundle_root = self.host.bundle_root
            return await self._lcow.attach(layers, f"{bundle_root}/{self.id}" if bundle_root else "")
        if rootfs:
            target = os.path.join(self.bundle, "rootfs")
            await asyncio.to_thread(mount_all, rootfs, target)
            self._rootfs_target = target
        else:
            # No snapshot (e.g. ``ctr run --rootfs``): the spec's root path, relative to the bundle.
            root = str((self.spec.get("root") or {}).get("path") or "rootfs")
            target = root if os.path.isabs(root) else os.path.join(self.bundle, root)
        guest = await self.host.add_plan9(target, read_only=False)
        self._shares.append(target)
        return guest

    async def _share_bind_mounts(self, spec: dict[str, Any]) -> dict[str, Any]:
        mounts: list[dict[str, Any]] = []
        for m in spec.get("mounts") or []:
            options = list(m.get("options") or [])
            is_bind = m.get("type") == "bind" or "bind" in options or "rbind" in options
            source = str(m.get("source") or "")
            if not is_bind or not os.path.isabs(source):
                mounts.append(m)
                continue
            if m.get("destination") in GUEST_PROVIDED:
                continue
            if not os.path.exists(source):
                raise ProcessError(
                    f"bind mount source {source} does not exist on the host",
                    kind=errdefs.Kind.INVALID_ARGUMENT,
                )
            # CRI's pod files share one directory that the sandbox binds read-only and containers
            # read-write; the share is read-write and each bind mount keeps its own "ro".
            read_only = "ro" in options and m.get("destination") not in CRI_POD_FILES
            shared = source if os.path.isdir(source) else os.path.dirname(source)
            guest_dir = await self.host.add_plan9(shared, read_only=read_only)
            self._shares.append(shared)
            guest_source = guest_dir if shared == source else f"{guest_dir}/{os.path.basename(source)}"
            mounts.append({**m, "source": guest_source})
        return {**spec, "mounts": mounts}

    async def _release(self) -> None:
        if self._lcow is not None:
            await self._lcow.release()
            self._lcow = None
        for path in reversed(self._shares):
            with contextlib.suppress(Exception):
                await self.host.remove_plan9(path)
        self._shares.clear()
        if self._rootfs_target:
            try:
                await asyncio.to_thread(unmount, self._rootfs_target)
            except OSError as exc:
                log.warning("rootfs unmount failed", extra={"task": self.id, "error": exc})
            self._rootfs_target = ""

    async def start(self, on_started: Callable[[Process], None]) -> int:
        await self.host.bridge.start_container(self.id)
        return await self.init.start(self.host.bridge, on_started)

    async def delete(self) -> None:
        """Remove the container from the guest and release host resources (init must have exited)."""
        for proc in list(self.execs.values()):
            await proc.close()
        self.execs.clear()
        await self.init.close()
        log.debug("task processes closed", extra={"task": self.id})
        if self.created:
            bridge = self.host.bridge
            with contextlib.suppress(Exception):
                if self.init.state is State.CREATED:
                    await bridge.shutdown_forced(self.id, timeout=10)
            with contextlib.suppress(Exception):
                await bridge.delete_container_state(self.id, timeout=10)
            self.created = False
        await self._release()

    # ---- processes -----------------------------------------------------------------------------

    def process(self, exec_id: str) -> Process:
        if not exec_id:
            return self.init
        proc = self.execs.get(exec_id)
        if proc is None:
            raise ProcessError(f"exec {exec_id} not found in task {self.id}", not_found=True)
        return proc

    def add_exec(self, exec_id: str, io: ProcessIO, oci_process: dict[str, Any]) -> Process:
        if exec_id in self.execs:
            raise ProcessError(
                f"exec {exec_id} already exists in task {self.id}",
                kind=errdefs.Kind.ALREADY_EXISTS,
            )
        if self.init.state is not State.RUNNING:
            raise ProcessError(f"task {self.id} is {self.init.state.value}, cannot exec")
        proc = Process(
            self.id,
            exec_id,
            io,
            oci_process=oci_process,
            on_exit=self._on_exit,
            reason_source=self.host.exit_reason,
        )
        self.execs[exec_id] = proc
        return proc

    async def remove_exec(self, exec_id: str) -> Process:
        proc = self.process(exec_id)
        if proc.state is State.RUNNING:
            raise ProcessError(f"exec {exec_id} is still running")
        await proc.close()
        del self.execs[exec_id]
        return proc

    async def kill(self, exec_id: str, signal: int, all_processes: bool) -> None:
        if all_processes and not exec_id:
            for proc in list(self.execs.values()):
                if proc.state is State.RUNNING:
                    with contextlib.suppress(Exception):
                        await proc.kill(signal)
        await self.process(exec_id).kill(signal)

    async def pids(self) -> list[int]:
        props = await self.host.bridge.get_properties(self.id, ["ProcessList"])
        return [int(p.get("ProcessId") or 0) for p in props.get("ProcessList") or []]
