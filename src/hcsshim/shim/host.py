"""What the pod model needs from the layer below: a started utility VM with a bridge to its guest.

The protocols name exactly the calls the shim makes, so tests can stand in a fake VM and bridge. The real
factory builds the UVM document with the builder's V1 pipeline (runhcs-v1 behaviour) and boots it through
:class:`hcsshim.uvm.UtilityVM`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from hcsshim import hcs, oci, settings
from hcsshim.api.runhcs.options import runhcs_pb2
from hcsshim.builder import BootFiles, RuntimeOptions, build_lcow_container_document, build_lcow_uvm_v1
from hcsshim.gcs.connection import ExitCallback, OomCallback
from hcsshim.schema import ComputeSystem
from hcsshim.shim.io import GuestStdio
from hcsshim.shim.spec import BundleSpec
from hcsshim.uvm.document import boot_file_names, boot_files_path

if TYPE_CHECKING:
    from hcsshim.uvm.template import PoolConfig


class Bridge(Protocol):
    async def create_container(
        self, container_id: str, document: dict[str, Any], *, timeout: float | None = ...
    ) -> dict[str, Any]: ...
    async def start_container(self, container_id: str, *, timeout: float | None = ...) -> None: ...
    async def execute_process(
        self, container_id: str, params: dict[str, Any], *, timeout: float | None = ...
    ) -> Any: ...
    async def wait_process(self, container_id: str, pid: int, *, timeout: float | None = ...) -> int: ...
    async def signal_process(
        self, container_id: str, pid: int, signal: int, *, timeout: float | None = ...
    ) -> None: ...
    async def resize_console(
        self, container_id: str, pid: int, height: int, width: int, *, timeout: float | None = ...
    ) -> None: ...
    async def get_properties(
        self, container_id: str, property_types: list[str], *, timeout: float | None = ...
    ) -> dict[str, Any]: ...
    async def update_container(
        self, container_id: str, resources: dict[str, Any], *, timeout: float | None = ...
    ) -> None: ...
    async def shutdown_forced(self, container_id: str, *, timeout: float | None = ...) -> None: ...
    async def delete_container_state(self, container_id: str, *, timeout: float | None = ...) -> None: ...
    async def dump_stacks(self, *, timeout: float | None = ...) -> str: ...


class ExitInfoLike(Protocol):
    @property
    def reason(self) -> Any: ...


class Pausable(Protocol):
    """What can freeze a whole pod: a UVM's compute system."""

    async def pause(self) -> None: ...
    async def resume(self) -> None: ...


class Host(Protocol):
    """A running pod host: a utility VM (``hcsshim.uvm.UtilityVM``) or the no-VM local agent
    (``hcsshim.shim.local.LocalHost``). Everything the shim asks of one is here."""

    @property
    def id(self) -> str: ...
    @property
    def bridge(self) -> Bridge: ...
    @property
    def system(self) -> Pausable | None:
        """The compute system to pause a task alone in its VM; None when there is no VM."""

    @property
    def bundle_root(self) -> str:
        """Where container bundles go in the guest ("" for the agent's default, /run/gcs/c)."""

    def adjust_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The container spec as this host's guest runs it."""

    def subscribe(self, *, on_exit: ExitCallback | None = ..., on_oom: OomCallback | None = ...) -> None:
        """Where the guest's container exits and OOM kills go."""

    async def add_plan9(self, host_path: str, read_only: bool = ...) -> str: ...
    async def remove_plan9(self, host_path: str) -> None: ...
    async def terminate(self) -> None: ...
    async def wait(self) -> Any: ...
    def exit_reason(self) -> str: ...


class GuestProcessLike(GuestStdio, Protocol):
    pid: int


HostFactory = Callable[[str, dict[str, Any], runhcs_pb2.Options | None], Awaitable[Host]]


# Proto fields whose names are not snake_case upstream.
_RENAMED = {"GPUVHDPath": "gpu_vhd_path", "NCProxyAddr": "ncproxy_addr"}


def runtime_options(options: runhcs_pb2.Options | None) -> RuntimeOptions:
    """The builder's RuntimeOptions from the proto (the builder stays protobuf-free)."""
    if options is None:
        return RuntimeOptions()
    fields: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(RuntimeOptions)}
    for desc, value in options.ListFields():
        name = _RENAMED.get(desc.name, desc.name)
        if name in names:
            fields[name] = dict(value) if name == "default_container_annotations" else value
    return RuntimeOptions(**fields)


def build_uvm_document(owner: str, spec: dict[str, Any], options: runhcs_pb2.Options | None) -> ComputeSystem:
    """The V1 pipeline's LCOW UVM document (runhcs-v1 behaviour) for what the compute backend can do."""
    ann = {str(k): str(v) for k, v in (spec.get("annotations") or {}).items()}
    root = (options.boot_files_root_path if options is not None else "") or boot_files_path()
    files = boot_file_names(root)
    # The Create path hands down the spec it already parsed (BundleSpec); other callers a plain dict.
    parsed = spec.parsed if isinstance(spec, BundleSpec) else oci.Spec.from_dict(spec)
    # A sandbox bundle may carry an empty spec; the V1 pipeline wants a Linux one.
    lcow_spec = parsed if parsed.linux else dataclasses.replace(parsed, linux={})
    document, _ = build_lcow_uvm_v1(
        owner=owner,
        spec=lcow_spec,
        annotations=ann,
        options=runtime_options(options),
        boot_files=BootFiles(root=root, files=files),
        uvm_id=f"{owner}@vm",
        capabilities=hcs.capabilities(),
    )
    return document


def pod_annotations(spec: dict[str, Any], options: runhcs_pb2.Options | None) -> dict[str, str]:
    """The runtime handler's default_container_annotations, overridden by the spec's own."""
    merged = dict(options.default_container_annotations) if options is not None else {}
    merged.update({str(k): str(v) for k, v in (spec.get("annotations") or {}).items()})
    return merged


def templates_enabled(spec: dict[str, Any], options: runhcs_pb2.Options | None) -> bool:
    """UVM templates for this pod: the spec's annotation, else the runtime handler's
    default_container_annotations, else on."""
    from hcsshim.annotations import keys
    from hcsshim.annotations.parse import parse_bool

    return parse_bool(pod_annotations(spec, options), keys.UVM_TEMPLATES, True)


def pool_config(spec: dict[str, Any], options: runhcs_pb2.Options | None) -> PoolConfig:
    """The warm pool for this pod's UVM configuration: the spec's annotations, else the runtime
    handler's default_container_annotations, else HCSSHIM_UVM_POOL_SIZE / _MEMORY_MB (off)."""
    from hcsshim.annotations import keys
    from hcsshim.annotations.parse import AnnotationError, parse_uint32
    from hcsshim.uvm.pool import MAX_SIZE
    from hcsshim.uvm.template import PoolConfig

    merged = pod_annotations(spec, options)
    current = settings.current()
    size = parse_uint32(merged, keys.UVM_POOL_SIZE, current.uvm_pool_size)
    if size > MAX_SIZE:
        raise AnnotationError(
            keys.UVM_POOL_SIZE, merged.get(keys.UVM_POOL_SIZE, str(size)), f"at most {MAX_SIZE}"
        )
    memory = parse_uint32(merged, keys.UVM_POOL_MEMORY_MB, current.uvm_pool_memory_mb)
    return PoolConfig(size=size, memory_mb=memory)


async def create_uvm(uvm_id: str, spec: dict[str, Any], options: runhcs_pb2.Options | None) -> Host:
    """Create and boot the pod's (or a standalone task's) UVM; terminated again if the boot fails."""
    # HCSSHIM_SHIM_HOST_FACTORY: ``module:function`` of another HostFactory, for tests that run the
    # guest agent without a VM.
    override = settings.current().shim_host_factory
    if override:
        module, _, name = override.partition(":")
        factory: HostFactory = getattr(importlib.import_module(module), name)
        return await factory(uvm_id, spec, options)
    from hcsshim.shim import network
    from hcsshim.uvm.template import create_uvm as create_templated_uvm

    templates = templates_enabled(spec, options)
    pool = pool_config(spec, options)
    # Read CNI's netns before booting: a missing or empty one fails the pod with no VM started.
    pod_net = await network.open_pod_network(spec)
    try:
        # Building the document parses every annotation and the spec (a tenth of a second of CPU on
        # a busy host): a thread, so the shim's other tasks keep answering.
        document = await asyncio.to_thread(build_uvm_document, uvm_id, spec, options)
        vm = await create_templated_uvm(uvm_id, document, templates=templates, pool=pool)
    except BaseException:
        if pod_net is not None:
            await pod_net.release()
        raise
    try:
        await vm.start()
        if pod_net is not None:
            await pod_net.attach(vm)
            await pod_net.start_port_forward(network.port_forward_dialer(vm))
    except BaseException:
        await vm.terminate()
        if pod_net is not None:
            await pod_net.release()
        raise
    if pod_net is not None:
        network.register(vm, pod_net)
    return vm


def container_document(
    task_id: str, spec: dict[str, Any], root_path: str, bundle_path: str = ""
) -> dict[str, Any]:
    """The LCOW container document sent to the guest, rooted at ``root_path`` (a guest path); the bundle
    goes to ``bundle_path`` in the guest, or the V1 layout's ``/run/gcs/c/<id>``."""
    final = dict(spec)
    final["root"] = {**(spec.get("root") or {}), "path": root_path}
    return build_lcow_container_document(
        task_id, final, root_path=root_path, bundle_path=bundle_path
    ).to_dict()
