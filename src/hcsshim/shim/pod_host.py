"""One pod's view of a utility VM that several pods share (containerd-shim-lcow-v2, reference §1.8).

The pod model (``shim.pod.Pod``, ``shim.task.Task``) runs on a :class:`~hcsshim.shim.host.Host`. In the
lcow-v2 shim every sandbox is a pod in the shim's one UVM; a :class:`PodHost` is that pod's host: the
same bridge, shares and disks as the UVM, but its container bundles under
``/run/gcs/pods/<pod>/<container>`` in the guest, its own sandbox container (the pod's network, IPC
and UTS namespaces and its cgroup ``/pods/<pod>``) and NICs, and a ``terminate`` that tears down only
the pod. The VM itself goes when the shim's last sandbox is shut down.

The sandbox container is the pod's pause: ``/bin/busybox sleep`` of the UVM image, bind-mounted into
an empty rootfs shared from the sandbox bundle, so a pod needs no pause image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Callable
from typing import Any, Protocol

from hcsshim.gcs.connection import ExitCallback, OomCallback, OomKill
from hcsshim.gcs.protocol import INIT_PROCESS_ID_KEY
from hcsshim.hvsock.abi import LCOW_POD_ROOT
from hcsshim.network import PodNetwork
from hcsshim.shim.host import Bridge, Pausable, container_document
from hcsshim.shim.spec import CONTAINER_TYPE, SANDBOX_ID

log = logging.getLogger("hcsshim.shim.pod_host")

_PROC_NS = re.compile(r"^/proc/[0-9]+/ns/([a-z_]+)$")

PAUSE_BINARY = "/bin/busybox"  # in the UVM image
PAUSE_ARGS = (PAUSE_BINARY, "sleep", "2147483647")
PAUSE_ROOTFS = "sandbox-rootfs"
PAUSE_STDIO = {
    "CreateStdInPipe": False,
    "CreateStdOutPipe": False,
    "CreateStdErrPipe": False,
    "EmulateConsole": False,
}
TEARDOWN_TIMEOUT = 10.0


class SharedVM(Protocol):
    """What the lcow-v2 shim needs of its UVM (``hcsshim.uvm.UtilityVM`` has all of it)."""

    @property
    def id(self) -> str: ...
    @property
    def bridge(self) -> Bridge: ...
    def adjust_spec(self, spec: dict[str, Any]) -> dict[str, Any]: ...
    def subscribe(self, *, on_exit: ExitCallback | None = ..., on_oom: OomCallback | None = ...) -> None: ...
    async def add_plan9(self, host_path: str, read_only: bool = ...) -> str: ...
    async def remove_plan9(self, host_path: str) -> None: ...
    async def add_scsi(self, host_path: str, read_only: bool = ...) -> Any: ...
    async def remove_scsi(self, host_path: str) -> None: ...
    async def guest_modify(self, resource_type: str, request_type: str, settings: dict[str, Any]) -> Any: ...
    async def add_network_adapter(
        self, nic_id: str, host_settings: dict[str, Any], guest_settings: dict[str, Any]
    ) -> None: ...
    async def remove_network_adapter(
        self, nic_id: str, namespace_id: str, host_settings: dict[str, Any]
    ) -> None: ...
    async def start(self) -> None: ...
    async def terminate(self) -> None: ...
    async def wait(self) -> Any: ...
    def exit_reason(self) -> str: ...
    async def properties(self) -> dict[str, Any]: ...


def pause_spec(sandbox_id: str, hostname: str, netns_path: str) -> dict[str, Any]:
    """The OCI spec of a pod's sandbox container (the guest gives it fresh network/IPC/UTS namespaces,
    the pod's hostname and files, and the cgroup ``/pods/<pod>/<pod>``)."""
    namespaces: list[dict[str, str]] = [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]
    namespaces.append({"type": "network", "path": netns_path} if netns_path else {"type": "network"})
    spec: dict[str, Any] = {
        "ociVersion": "1.1.0",
        "process": {
            "args": list(PAUSE_ARGS),
            "cwd": "/",
            "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0},
        },
        "root": {"path": PAUSE_ROOTFS, "readonly": False},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
        ],
        "linux": {"namespaces": namespaces},
        "annotations": {CONTAINER_TYPE: "sandbox", SANDBOX_ID: sandbox_id},
    }
    if hostname:
        spec["hostname"] = hostname
    return spec


class PodHost:
    """A pod in a shared UVM; satisfies ``shim.host.Host`` (and the layer and NIC targets)."""

    def __init__(
        self,
        pod_id: str,
        vm: SharedVM,
        subscribe: Callable[[str, OomCallback | None], None],
        *,
        bundle: str,
        hostname: str = "",
        network: PodNetwork | None = None,
    ) -> None:
        self.pod_id = pod_id
        self.vm = vm
        self._subscribe = subscribe
        self.bundle = bundle
        self.hostname = hostname
        self.network = network
        self.sandbox_pid = 0
        self._rootfs = ""
        self._created = False

    # ---- Host ------------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.pod_id

    @property
    def bridge(self) -> Bridge:
        return self.vm.bridge

    @property
    def system(self) -> Pausable | None:
        return None  # pausing the VM would pause every pod in it

    @property
    def bundle_root(self) -> str:
        return f"{LCOW_POD_ROOT}/{self.pod_id}"

    def adjust_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A pod container's spec as the guest runs it. containerd's CRI names the pod's namespaces
        by the sandbox's pid (``/proc/<pid>/ns/<type>``, its PodSandbox pid: 0 from StartSandbox);
        in the guest they are the pod's sandbox container's, so such paths point at its init."""
        linux = spec.get("linux")
        namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
        if self.sandbox_pid and isinstance(linux, dict) and isinstance(namespaces, list):
            rewritten = []
            for ns in namespaces:
                match = _PROC_NS.match(str(ns.get("path") or "")) if isinstance(ns, dict) else None
                if match is not None:
                    ns = {**ns, "path": f"/proc/{self.sandbox_pid}/ns/{match.group(1)}"}
                rewritten.append(ns)
            spec = {**spec, "linux": {**linux, "namespaces": rewritten}}
        return self.vm.adjust_spec(spec)

    def subscribe(self, *, on_exit: ExitCallback | None = None, on_oom: OomCallback | None = None) -> None:
        if on_exit is not None:
            raise NotImplementedError(
                "PodHost.subscribe: on_exit (exits are observed through WaitForProcess)"
            )
        self._subscribe(self.pod_id, on_oom)

    async def add_plan9(self, host_path: str, read_only: bool = True) -> str:
        return await self.vm.add_plan9(host_path, read_only=read_only)

    async def remove_plan9(self, host_path: str) -> None:
        await self.vm.remove_plan9(host_path)

    async def add_scsi(self, host_path: str, read_only: bool = True) -> Any:
        return await self.vm.add_scsi(host_path, read_only=read_only)

    async def remove_scsi(self, host_path: str) -> None:
        await self.vm.remove_scsi(host_path)

    async def guest_modify(self, resource_type: str, request_type: str, settings: dict[str, Any]) -> Any:
        return await self.vm.guest_modify(resource_type, request_type, settings)

    async def add_network_adapter(
        self, nic_id: str, host_settings: dict[str, Any], guest_settings: dict[str, Any]
    ) -> None:
        await self.vm.add_network_adapter(nic_id, host_settings, guest_settings)

    async def remove_network_adapter(
        self, nic_id: str, namespace_id: str, host_settings: dict[str, Any]
    ) -> None:
        await self.vm.remove_network_adapter(nic_id, namespace_id, host_settings)

    async def wait(self) -> Any:
        return await self.vm.wait()

    def exit_reason(self) -> str:
        return self.vm.exit_reason()

    async def terminate(self) -> None:
        """Tear down this pod only: its sandbox container, its share and its NICs."""
        await self.remove_sandbox_container()
        if self.network is not None:
            net, self.network = self.network, None
            await net.detach(self)
            await net.release()

    # ---- the pod's sandbox container -------------------------------------------------------------

    async def create_sandbox_container(self) -> int:
        """Attach the pod's NICs, then create and start its sandbox container; returns its guest pid."""
        if self.network is not None:
            await self.network.attach(self)
        rootfs = os.path.join(self.bundle, PAUSE_ROOTFS)
        await asyncio.to_thread(os.makedirs, rootfs, exist_ok=True)
        guest_root = await self.vm.add_plan9(rootfs, read_only=False)
        self._rootfs = rootfs
        spec = pause_spec(self.pod_id, self.hostname, self.network.netns_path if self.network else "")
        spec["mounts"].append(
            {"destination": PAUSE_BINARY, "type": "bind", "source": PAUSE_BINARY, "options": ["rbind", "ro"]}
        )
        spec = self.adjust_spec(spec)
        document = container_document(
            self.pod_id, spec, guest_root, bundle_path=f"{self.bundle_root}/{self.pod_id}"
        )
        response = await self.bridge.create_container(self.pod_id, document)
        self._created = True
        pid = response.get(INIT_PROCESS_ID_KEY) if isinstance(response, dict) else None
        await self.bridge.start_container(self.pod_id)
        # The init runs (runc start) when it is executed, as a task's init is; it has no stdio.
        guest = await self.bridge.execute_process(self.pod_id, dict(PAUSE_STDIO))
        self.sandbox_pid = int(guest.pid or pid or 0)
        log.info("pod sandbox container started", extra={"pod": self.pod_id, "pid": self.sandbox_pid})
        return self.sandbox_pid

    async def remove_sandbox_container(self) -> None:
        if self._created:
            self._created = False
            bridge = self.bridge
            with contextlib.suppress(Exception):
                await bridge.shutdown_forced(self.pod_id, timeout=TEARDOWN_TIMEOUT)
            if self.sandbox_pid:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        bridge.wait_process(self.pod_id, self.sandbox_pid, timeout=TEARDOWN_TIMEOUT),
                        TEARDOWN_TIMEOUT,
                    )
            try:
                await bridge.delete_container_state(self.pod_id, timeout=TEARDOWN_TIMEOUT)
            except Exception as exc:
                log.warning("pod sandbox container delete failed", extra={"pod": self.pod_id, "error": exc})
        if self._rootfs:
            rootfs, self._rootfs = self._rootfs, ""
            with contextlib.suppress(Exception):
                await self.vm.remove_plan9(rootfs)


def oom_router(
    owner_of: Callable[[str], str | None],
) -> tuple[Callable[[str, OomCallback | None], None], OomCallback]:
    """One OOM callback for the UVM that hands each kill to the pod whose container it is
    (``owner_of(container_id)`` names the pod): returns (register(pod_id, callback), the UVM's callback)."""
    callbacks: dict[str, OomCallback] = {}

    def register(pod_id: str, callback: OomCallback | None) -> None:
        if callback is None:
            callbacks.pop(pod_id, None)
        else:
            callbacks[pod_id] = callback

    def dispatch(event: OomKill) -> None:
        pod_id = owner_of(event.container_id)
        callback = callbacks.get(pod_id) if pod_id is not None else None
        if callback is None:
            log.info("OOM kill in a container of no pod", extra={"container": event.container_id})
            return
        callback(event)

    return register, dispatch
