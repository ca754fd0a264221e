"""Shim manager: Go-style flags, legacy options vs BootstrapParams, start/serve/delete as processes."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from hcsshim import errdefs
from hcsshim.api.containerd.bootstrap.v1 import bootstrap_pb2
from hcsshim.api.containerd.task.v2 import shim_pb2 as task_v2
from hcsshim.api.runhcs.options import runhcs_pb2
from hcsshim.shim import manager
from hcsshim.shim.flags import FlagError, parse
from hcsshim.shim.options import decode_start_input, log_level, start_answer
from hcsshim.ttrpc import Client

SHIM = [sys.executable, "-m", "hcsshim.cli.shim_runhcs_v1"]


def _options_any(**fields: object) -> any_pb2.Any:
    opts = runhcs_pb2.Options(**fields)  # type: ignore[arg-type]
    return any_pb2.Any(type_url="containerd.runhcs.v1.Options", value=opts.SerializeToString())


def test_flags_go_style() -> None:
    head = ["-namespace", "k8s.io", "--address=/run/c.sock", "-publish-binary", "/bin/c", "-id", "x"]
    f = parse([*head, "-debug", "start"])
    assert (f.namespace, f.address, f.publish_binary, f.id, f.debug, f.action) == (
        "k8s.io",
        "/run/c.sock",
        "/bin/c",
        "x",
        True,
        "start",
    )
    assert parse(["-debug=false", "delete"]).debug is False
    assert parse(["-v"]).version
    with pytest.raises(FlagError):
        parse(["-nope", "start"])
    with pytest.raises(FlagError):
        parse(["-id"])


def test_legacy_options_any_is_not_mistaken_for_bootstrap() -> None:
    data = _options_any(debug=True, vm_memory_size_in_mb=2048).SerializeToString()
    got = decode_start_input(data, "c1", "default")
    assert not got.is_bootstrap
    assert got.options is not None and got.options.vm_memory_size_in_mb == 2048
    assert log_level(got, False) == "debug"
    assert start_answer(got, "unix:///run/s/abc") == b"unix:///run/s/abc"


def test_empty_and_unknown_stdin_are_tolerated() -> None:
    assert decode_start_input(b"", "c1", "default").options is None
    other = any_pb2.Any(type_url="containerd.runc.v1.Options", value=b"\x08\x01").SerializeToString()
    got = decode_start_input(other, "c1", "default")
    assert got.options is None and got.options_any is not None


def test_bootstrap_params_detected_by_id_and_namespace() -> None:
    params = bootstrap_pb2.BootstrapParams(
        instance_id="c1",
        namespace="default",
        log_level=bootstrap_pb2.LOG_LEVEL_DEBUG,
        containerd_version="2.3.0",
        containerd_ttrpc_address="/run/containerd/containerd.sock.ttrpc",
        socket_dir="/run/x/s",
    )
    params.extensions.add().value.CopyFrom(_options_any(vm_processor_count=4))
    data = params.SerializeToString()
    got = decode_start_input(data, "c1", "default")
    assert got.is_bootstrap and got.options is not None and got.options.vm_processor_count == 4
    assert log_level(got, False) == "debug"
    answer = start_answer(got, "unix:///run/x/s/abc")
    assert not answer.endswith(b"\n")
    result = bootstrap_pb2.BootstrapResult.FromString(answer)
    assert (result.version, result.address, result.protocol) == (2, "unix:///run/x/s/abc", "ttrpc")
    # Same bytes with another -id: legacy caller; the bytes are then an (odd) Any, never bootstrap.
    assert not decode_start_input(data, "c2", "default").is_bootstrap


def test_socket_path_is_short_and_stable() -> None:
    a = manager.socket_path("/run/containerd/containerd.sock", "default", "pod1")
    assert a == manager.socket_path("/run/containerd/containerd.sock", "default", "pod1")
    assert a != manager.socket_path("/run/containerd/containerd.sock", "default", "pod2")
    assert len(a) < 107


@pytest.fixture
def bundle(tmp_path: Path) -> Iterator[Path]:
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "config.json").write_text('{"annotations": {}}')
    os.mkfifo(b / "log")
    # containerd keeps the log FIFO open for reading and copies it; do the same.
    fd = os.open(b / "log", os.O_RDWR | os.O_NONBLOCK)
    lines: list[bytes] = []
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                lines.append(os.read(fd, 65536))
            except BlockingIOError:
                time.sleep(0.02)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    yield b
    stop.set()
    t.join()
    os.close(fd)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # unix socket paths must stay under 108 bytes; pytest's tmp_path is too deep.
    d = Path(tempfile.mkdtemp(prefix="hs", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HCSSHIM_SHIM_SOCKET_DIR"] = str(tmp_path / "s")
    env["TTRPC_ADDRESS"] = str(tmp_path / "nothing.ttrpc")
    src = Path(__file__).resolve().parents[2] / "src"
    env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _flags(task_id: str) -> list[str]:
    return [
        "-namespace",
        "default",
        "-address",
        "/run/fake.sock",
        "-publish-binary",
        "/bin/true",
        "-id",
        task_id,
    ]


async def _connect_and_shutdown(address: str, task_id: str) -> int:
    client = await Client.connect(address, timeout=5)
    try:
        md = {"containerd-namespace-ttrpc": "default"}
        resp = await client.call(
            "containerd.task.v2.Task",
            "Connect",
            task_v2.ConnectRequest(id=task_id),
            task_v2.ConnectResponse,
            metadata=md,
        )
        await client.call(
            "containerd.task.v3.Task",
            "Shutdown",
            task_v2.ShutdownRequest(id=task_id),
            task_v2.StartResponse,
            metadata=md,
        )
    finally:
        await client.close()
    return int(resp.shim_pid)


def test_start_serve_shutdown_delete_as_processes(bundle: Path, short_dir: Path) -> None:
    env = _env(short_dir)
    stdin = _options_any(debug=True).SerializeToString()
    proc = subprocess.run(
        [*SHIM, *_flags("t1"), "start"], input=stdin, capture_output=True, cwd=bundle, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    address = proc.stdout.decode()
    assert address.startswith("unix://") and "\n" not in address
    assert (bundle / "address").read_text() == address
    sock = address[len("unix://") :]
    assert os.path.exists(sock)
    shim_pid = asyncio.run(_connect_and_shutdown(address, "t1"))
    assert shim_pid == int((bundle / "shim.pid").read_text())
    deadline = time.monotonic() + 10
    while os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(sock), "the server removes its socket on exit"
    proc = subprocess.run(
        [*SHIM, *_flags("t1"), "-bundle", str(bundle), "delete"], capture_output=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    resp = task_v2.DeleteResponse.FromString(proc.stdout)
    assert resp.exit_status == 255 and resp.exited_at.seconds > 0


def test_bootstrap_start_answers_protobuf(bundle: Path, short_dir: Path) -> None:
    env = _env(short_dir)
    params = bootstrap_pb2.BootstrapParams(
        instance_id="t2", namespace="default", socket_dir=str(short_dir / "bs"), containerd_version="2.3.0"
    )
    proc = subprocess.run(
        [*SHIM, *_flags("t2"), "start"],
        input=params.SerializeToString(),
        capture_output=True,
        cwd=bundle,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result = bootstrap_pb2.BootstrapResult.FromString(proc.stdout)
    assert result.address.startswith("unix://" + str(short_dir / "bs"))
    asyncio.run(_connect_and_shutdown(result.address, "t2"))


def test_container_start_joins_missing_pod_fails_cleanly(bundle: Path, short_dir: Path) -> None:
    (bundle / "config.json").write_text(
        '{"annotations": {"io.kubernetes.cri.container-type": "container",'
        ' "io.kubernetes.cri.sandbox-id": "nopod"}}'
    )
    proc = subprocess.run(
        [*SHIM, *_flags("c9"), "start"],
        input=b"",
        capture_output=True,
        cwd=bundle,
        env=_env(short_dir),
        timeout=60,
    )
    assert proc.returncode != 0
    assert b"nopod" in proc.stderr


def test_start_answers_only_its_address_even_when_something_logs_with_fake_start() -> None:
    # containerd 1.6 reads start's stderr into the address it dials: asyncio's debug mode reporting a
    # slow callback there once failed a pod with "dial unix Executing <Task ...> took 0.390 seconds".
    # A process of its own: pytest's log and warning capture would hide what reaches stderr.
    program = """
import logging, sys, warnings
from hcsshim.shim import entry, manager
from hcsshim.shim.kind import RUNHCS_V1

def noisy_start(flags, data, bundle, kind):
    logging.getLogger("asyncio").warning("Executing <Task pending name='Task-1'> took 0.390 seconds")
    warnings.warn("a stray warning", RuntimeWarning)
    return b"unix:///run/containerd/s/abc"

manager.start = noisy_start
sys.exit(entry.main(RUNHCS_V1, ["-namespace", "ns", "-id", "t1", "-address", "/run/c.sock", "start"]))
"""
    proc = subprocess.run(
        [sys.executable, "-c", program], input=b"", capture_output=True, timeout=120, check=False
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"unix:///run/containerd/s/abc", b"")


def test_a_failed_start_shows_what_was_logged_with_fake_start(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_start(flags: object, data: bytes, bundle: str, kind: object) -> bytes:
        logging.getLogger("hcsshim.shim.manager").warning("the pod's shim did not answer")
        raise manager.StartError("connect to the shim of sandbox p1: refused", errdefs.Kind.UNAVAILABLE)

    monkeypatch.setattr(manager, "start", failing_start)
    flags = parse(["-namespace", "ns", "-id", "t1", "-address", "/run/c.sock", "start"])
    code, out, err = manager.run(flags, stdin=[b""])
    assert (code, out) == (1, b"")
    assert "connect to the shim of sandbox p1: refused" in err and "the pod's shim did not answer" in err
