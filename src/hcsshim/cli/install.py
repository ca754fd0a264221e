"""``hcsshim install``: set a Kubernetes node's containerd up for our runtime.

It adds a CRI runtime handler to containerd's config.toml in the schema of the containerd that runs
(asked over its Version API): config version 2 for 1.6/1.7
(``plugins."io.containerd.grpc.v1.cri".containerd.runtimes.<handler>``), version 3 for 2.x
(``plugins."io.containerd.cri.v1.runtime".containerd.runtimes.<handler>``), and prints a RuntimeClass
whose ``overhead.podFixed`` is measured: one UVM is booted the way the shim boots a pod's, and the
resident memory of QEMU plus this process (the same Python stack a shim server runs) and their CPU use
while idle are rounded up (memory to 16 MiB, CPU to 10 millicores).

The handler lives in a block between two marker comments, so a second run finds it and changes nothing
and a changed setting replaces only that block. A handler of the same name configured by hand is left
alone: equal settings count as installed, different ones are an error. ``--dry-run`` prints the diff
and writes nothing. containerd reads its config at start: restart it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import os
import re
import secrets
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "/etc/containerd/config.toml"
DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_HANDLER = "runhcs-v1"
DEFAULT_RUNTIME_TYPE = "io.containerd.runhcs.v1"
# The annotations our builder reads from a pod (VM size, devices, ...) must reach the shim.
PASSED_ANNOTATIONS = ["io.microsoft.*"]
CRI_RUNTIMES = {
    2: ("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"),
    3: ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"),
}
MEMORY_UNIT = 16 << 20
CPU_UNIT_MILLI = 10
SETTLE_SECONDS = 1.0
CPU_WINDOW_SECONDS = 3.0
VERSION_TIMEOUT = 10.0


class InstallError(RuntimeError):
    pass


# ---- containerd ------------------------------------------------------------------------------


def containerd_version(address: str, timeout: float = VERSION_TIMEOUT) -> str:
    """The running daemon's version (``containerd.services.version.v1.Version/Version``)."""
    import grpc  # type: ignore[import-untyped]
    from google.protobuf import empty_pb2, wrappers_pb2

    # VersionResponse is {string version = 1; string revision = 2}: field 1 decodes as a StringValue.
    path = address.removeprefix("unix://")
    with grpc.insecure_channel(f"unix://{path}") as channel:
        call = channel.unary_unary(
            "/containerd.services.version.v1.Version/Version",
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=wrappers_pb2.StringValue.FromString,
        )
        try:
            reply = call(empty_pb2.Empty(), timeout=timeout)
        except grpc.RpcError as exc:
            raise InstallError(f"containerd at {path}: {exc.details() or exc}") from exc
    version: str = reply.value
    return version


def config_version_for(containerd: str) -> int:
    match = re.match(r"v?(\d+)\.(\d+)", containerd)
    if match is None:
        raise InstallError(f"cannot read containerd version {containerd!r}")
    major = int(match.group(1))
    if major < 1 or (major == 1 and int(match.group(2)) < 6):
        raise InstallError(f"containerd {containerd} is too old: 1.6 or later is needed")
    return 3 if major >= 2 else 2


# ---- config.toml -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Handler:
    name: str
    runtime_type: str
    runtime_path: str

    def settings(self) -> dict[str, Any]:
        return {
            "runtime_type": self.runtime_type,
            "runtime_path": self.runtime_path,
            "pod_annotations": PASSED_ANNOTATIONS,
            "container_annotations": PASSED_ANNOTATIONS,
        }


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _key(part: str) -> str:
    return part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else _toml_value(part)


def _markers(handler: str) -> tuple[str, str]:
    return f"# BEGIN hcsshim install: handler {handler}", f"# END hcsshim install: handler {handler}"


def handler_block(handler: Handler, config_version: int) -> str:
    table = ".".join(_key(p) for p in (*CRI_RUNTIMES[config_version], handler.name))
    begin, end = _markers(handler.name)
    lines = [begin, f"[{table}]"]
    lines += [f"  {k} = {_toml_value(v)}" for k, v in handler.settings().items()]
    return "\n".join([*lines, end]) + "\n"


def _lookup(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = doc
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _parse(text: str, path: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InstallError(f"{path}: not valid TOML: {exc}") from exc


def updated_config(text: str, handler: Handler, config_version: int, path: str = "config.toml") -> str:
    """``text`` with the handler installed (``text`` itself when it already is)."""
    doc = _parse(text, path) if text.strip() else {}
    found = doc.get("version")
    if text.strip() and found != config_version:
        what = f"version = {found}" if found is not None else "no version (containerd reads it as version 1)"
        raise InstallError(
            f"{path} has {what}, but the running containerd uses version {config_version}: "
            "migrate it first (`containerd config migrate`)"
        )
    begin, end = _markers(handler.name)
    block = handler_block(handler, config_version)
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        new = pattern.sub(lambda _: block, text, count=1)
    else:
        existing = _lookup(doc, (*CRI_RUNTIMES[config_version], handler.name))
        if existing is not None:
            wanted = handler.settings()
            differs = sorted(k for k, v in wanted.items() if existing.get(k) != v)
            if not differs:
                return text
            table = ".".join(CRI_RUNTIMES[config_version])
            raise InstallError(
                f"{path}: runtime handler {handler.name!r} in {table} is already configured with other "
                f"settings ({', '.join(differs)}); remove it or choose another --handler"
            )
        if not text.strip():
            new = f"version = {config_version}\n\n{block}"
        else:
            new = text + ("" if text.endswith("\n") else "\n") + "\n" + block
    result = _lookup(_parse(new, path), (*CRI_RUNTIMES[config_version], handler.name))
    if result != handler.settings():
        raise InstallError(f"{path}: the handler block would not read back as written ({result!r})")
    return new


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---- overhead --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overhead:
    memory_bytes: int
    cpu_milli: int
    measured: str

    @property
    def memory(self) -> str:
        return f"{-(-self.memory_bytes // MEMORY_UNIT) * (MEMORY_UNIT >> 20)}Mi"

    @property
    def cpu(self) -> str:
        return f"{-(-self.cpu_milli // CPU_UNIT_MILLI) * CPU_UNIT_MILLI}m"


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def measure_overhead(runtime_type: str) -> Overhead:
    """Boot one UVM as the shim's host factory does, let it settle, and sample it."""
    if runtime_type == "io.containerd.process.v2":
        raise InstallError("process-v2 runs no VM: give --overhead-memory and --overhead-cpu")
    from hcsshim.shim.host import create_uvm

    vm = await create_uvm(f"hcsshim-install-{secrets.token_hex(4)}", {}, None)
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        # A UtilityVM's compute system; its properties say which process is the VM.
        system: Any = getattr(vm, "system", None)
        if system is None:
            raise InstallError(f"the host factory gave a {type(vm).__name__}, not a VM to measure")
        props = await system.properties()
        qemu = int((props.get("Backend") or {}).get("ProcessId") or 0)
        if not qemu:
            raise InstallError("the compute backend reports no VM process to measure: give the overhead")
        pids = (qemu, os.getpid())
        before = await asyncio.to_thread(lambda: sum(_cpu_seconds(p) for p in pids))
        start = time.monotonic()
        await asyncio.sleep(CPU_WINDOW_SECONDS)
        after = await asyncio.to_thread(lambda: sum(_cpu_seconds(p) for p in pids))
        elapsed = time.monotonic() - start
        memory = await asyncio.to_thread(lambda: sum(_rss_bytes(p) for p in pids))
    finally:
        await vm.terminate()
    cpu_milli = int((after - before) / elapsed * 1000)
    accel = (props.get("Backend") or {}).get("Accelerator") or "unknown"
    return Overhead(memory, cpu_milli, f"idle UVM, accel {accel}: RSS {memory >> 20} MiB, {cpu_milli}m CPU")


def runtime_class(handler: str, overhead: Overhead) -> str:
    return (
        f"# hcsshim install: pod overhead measured on {os.uname().nodename} ({overhead.measured})\n"
        "apiVersion: node.k8s.io/v1\n"
        "kind: RuntimeClass\n"
        "metadata:\n"
        f"  name: {handler}\n"
        f"handler: {handler}\n"
        "overhead:\n"
        "  podFixed:\n"
        f'    memory: "{overhead.memory}"\n'
        f'    cpu: "{overhead.cpu}"\n'
    )


# ---- command ---------------------------------------------------------------------------------


def _shim_binary(runtime_type: str) -> str:
    match = re.fullmatch(r"io\.containerd\.([a-z0-9]+)\.(v[0-9]+)", runtime_type)
    if match is None:
        raise InstallError(f"--runtime-type {runtime_type!r} is not io.containerd.<name>.v<N>")
    path = Path(sys.executable).parent / f"containerd-shim-{match.group(1)}-{match.group(2)}"
    if not path.exists():
        raise InstallError(f"--runtime-type {runtime_type}: no shim binary {path}")
    return str(path)


def _parse_memory(text: str) -> int:
    match = re.fullmatch(r"(\d+)(Mi|Gi)", text)
    if match is None:
        raise InstallError(f"--overhead-memory {text!r}: use <N>Mi or <N>Gi")
    return int(match.group(1)) << (20 if match.group(2) == "Mi" else 30)


def _parse_cpu(text: str) -> int:
    match = re.fullmatch(r"(\d+)m", text)
    if match is None:
        raise InstallError(f"--overhead-cpu {text!r}: use <N>m (millicores)")
    return int(match.group(1))


def run(ns: argparse.Namespace) -> int:
    path = Path(ns.config)
    version = ns.containerd_version or containerd_version(ns.address)
    config_version = config_version_for(version)
    handler = Handler(ns.handler, ns.runtime_type, _shim_binary(ns.runtime_type))
    old = path.read_text() if path.exists() else ""
    new = updated_config(old, handler, config_version, str(path))
    if (ns.overhead_memory is None) != (ns.overhead_cpu is None):
        raise InstallError("give both --overhead-memory and --overhead-cpu, or neither (to measure)")
    if ns.overhead_memory is not None:
        overhead = Overhead(_parse_memory(ns.overhead_memory), _parse_cpu(ns.overhead_cpu), "given")
    else:
        try:
            overhead = asyncio.run(measure_overhead(ns.runtime_type))
        except InstallError:
            raise
        except Exception as exc:
            raise InstallError(f"measuring the VM overhead: {exc}") from exc
    status = sys.stderr
    sys.stdout.flush()
    if new == old:
        print(f"{path}: runtime handler {handler.name!r} already installed; nothing changed", file=status)
    elif ns.dry_run:
        diff = difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), str(path), f"{path} (new)"
        )
        sys.stdout.write("".join(diff))
        sys.stdout.flush()
        print(f"{path}: dry run, nothing written", file=status)
    else:
        write_atomic(path, new)
        print(
            f"{path}: runtime handler {handler.name!r} installed (containerd {version}, config version "
            f"{config_version}); restart containerd to load it",
            file=status,
        )
    sys.stdout.write(runtime_class(handler.name, overhead))
    return 0


def _cmd(ns: argparse.Namespace) -> int:
    try:
        return run(ns)
    except (InstallError, OSError) as exc:
        print(f"hcsshim install: {exc}", file=sys.stderr)
        return 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "install",
        help="add the runtime handler to containerd's config and print a RuntimeClass",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"containerd config (default {DEFAULT_CONFIG})")
    p.add_argument("--address", default=DEFAULT_ADDRESS, help="the running containerd's gRPC socket")
    p.add_argument("--containerd-version", default="", help="skip asking the daemon (e.g. 2.1.9)")
    p.add_argument("--handler", default=DEFAULT_HANDLER, help=f"CRI handler name (default {DEFAULT_HANDLER})")
    p.add_argument("--runtime-type", default=DEFAULT_RUNTIME_TYPE, help="containerd runtime name")
    p.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    p.add_argument(
        "--overhead-memory", default=None, help="pod overhead memory (e.g. 256Mi) instead of measuring"
    )
    p.add_argument("--overhead-cpu", default=None, help="pod overhead CPU (e.g. 100m) instead of measuring")
    p.set_defaults(func=_cmd)
