"""Bad input through containerd-shim-runhcs-v1: a clear error that names what was wrong, and nothing
left behind (no QEMU, mount, socket, bundle or FIFO directory)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hcsshim.api.containerd.task.v2 import shim_pb2 as task_v2
from hcsshim.hcs.qemu.system import state_dir_for
from hcsshim.ttrpc import Client, Code, TtrpcError
from tests.support.containerd import Containerd
from tests.support.shim_checks import (
    RUNTIME,
    bundle_path,
    import_busybox,
    mounts_under,
    qemu_pids,
    shim_socket,
    wait_until,
)
from tests.support.uvm import boot_files

pytestmark = [pytest.mark.e2e, pytest.mark.root]

MEMORY = "io.microsoft.virtualmachine.computetopology.memory.sizeinmb"
SHIM = [sys.executable, "-m", "hcsshim.cli.shim_runhcs_v1"]
NS = {"containerd-namespace-ttrpc": "default"}


@pytest.fixture(scope="module")
def image(containerd: Containerd) -> Iterator[str]:
    if boot_files() is None:
        pytest.fail("no UVM image: run `hcsshim uvm build` (make image)")
    with tempfile.TemporaryDirectory() as d:
        yield import_busybox(containerd, d)


def _assert_nothing_left(c: Containerd, task_id: str) -> None:
    assert wait_until(lambda: not qemu_pids(task_id), 20), f"QEMU of {task_id} still running"
    bundle = bundle_path(c, task_id)
    assert wait_until(lambda: not os.path.exists(bundle), 20), "bundle left behind"
    assert not mounts_under(bundle)
    assert not mounts_under(state_dir_for(f"{task_id}@vm"))
    assert wait_until(lambda: not os.path.exists(shim_socket(c, task_id)), 10), "shim socket left behind"
    assert not os.path.exists(state_dir_for(f"{task_id}@vm")), "VM state directory left behind"
    fifo_dir = c.base / "fifo"
    assert not fifo_dir.exists() or not list(fifo_dir.iterdir()), list(fifo_dir.iterdir())


def test_invalid_vm_annotation_names_key_and_value(containerd: Containerd, image: str) -> None:
    proc = containerd.ctr(
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        f"{MEMORY}=lots",
        image,
        "bad-annotation",
        "true",
        check=False,
        timeout=300,
    )
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert MEMORY in err and "lots" in err, err
    _assert_nothing_left(containerd, "bad-annotation")


def test_unknown_container_type_is_rejected(containerd: Containerd, image: str) -> None:
    proc = containerd.ctr(
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.kubernetes.cri.container-type=pet",
        "--annotation",
        "io.kubernetes.cri.sandbox-id=bad-type",
        image,
        "bad-type",
        "true",
        check=False,
        timeout=300,
    )
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "pet" in err, err
    _assert_nothing_left(containerd, "bad-type")


async def _create_with_malformed_spec(address: str, bundle: Path) -> TtrpcError:
    client = await Client.connect(address, timeout=5)
    try:
        with pytest.raises(TtrpcError) as info:
            await client.call(
                "containerd.task.v2.Task",
                "Create",
                task_v2.CreateTaskRequest(id="malformed", bundle=str(bundle)),
                task_v2.CreateTaskResponse,
                metadata=NS,
                timeout=120,
            )
        await client.call(
            "containerd.task.v2.Task",
            "Shutdown",
            task_v2.ShutdownRequest(id="malformed"),
            task_v2.StartResponse,
            metadata=NS,
        )
        return info.value
    finally:
        await client.close()


class _Bundle:
    """A bundle as containerd lays it out (config.json, the log FIFO held open for reading), with the
    environment and flags containerd would give the shim; everything lives under one temp dir."""

    def __init__(self, base: Path, spec_text: str, task_id: str) -> None:
        self.base = base
        self.path = base / "bundle"
        self.path.mkdir()
        (self.path / "config.json").write_text(spec_text)
        os.mkfifo(self.path / "log")
        self.log_fd = os.open(self.path / "log", os.O_RDWR | os.O_NONBLOCK)
        self.env = dict(os.environ, HCSSHIM_SHIM_SOCKET_DIR=str(base / "s"), TTRPC_ADDRESS=str(base / "none"))
        self.task_id = task_id
        self.flags = [
            *("-namespace", "default", "-address", str(base / "c.sock"), "-id", task_id),
            *("-publish-binary", "/bin/true"),
        ]

    def shim(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*SHIM, *self.flags, *args],
            input=b"",
            capture_output=True,
            cwd=self.path,
            env=self.env,
            timeout=60,
        )

    def assert_nothing_left(self) -> None:
        sockets = self.base / "s"
        assert wait_until(lambda: not sockets.exists() or not list(sockets.iterdir()), 10), "socket left"
        assert not qemu_pids(self.task_id)
        assert not mounts_under(str(self.path))
        assert not os.path.exists(state_dir_for(f"{self.task_id}@vm"))

    def close(self) -> None:
        os.close(self.log_fd)


def test_unparsable_config_json_fails_start_naming_the_file() -> None:
    with tempfile.TemporaryDirectory(prefix="hsb", dir="/tmp") as d:
        b = _Bundle(Path(d), '{"ociVersion": "1.0.2", "process": ', "unparsable")
        try:
            start = b.shim("start")
            assert start.returncode != 0
            assert b"config.json" in start.stderr, start.stderr
            assert start.stdout == b""
            b.assert_nothing_left()
        finally:
            b.close()


def test_malformed_oci_spec_fails_start_naming_the_field() -> None:
    with tempfile.TemporaryDirectory(prefix="hsb", dir="/tmp") as d:
        b = _Bundle(Path(d), '{"ociVersion": "1.0.2", "process": "sh"}', "malformed-start")
        try:
            start = b.shim("start")
            assert start.returncode != 0
            assert b"config.json" in start.stderr and b"process" in start.stderr, start.stderr
            b.assert_nothing_left()
        finally:
            b.close()


def test_malformed_oci_spec_fails_create_with_invalid_argument_and_leaves_nothing() -> None:
    # Create reads config.json again (containerd may rewrite the bundle between start and Create), so
    # it must refuse a malformed spec itself, before any VM exists. Driven without containerd: ctr
    # cannot send such a spec.
    with tempfile.TemporaryDirectory(prefix="hsb", dir="/tmp") as d:
        b = _Bundle(Path(d), '{"ociVersion": "1.0.2"}', "malformed")
        try:
            start = b.shim("start")
            assert start.returncode == 0, start.stderr
            (b.path / "config.json").write_text('{"ociVersion": "1.0.2", "process": {}, "root": 7}')
            error = asyncio.run(_create_with_malformed_spec(start.stdout.decode(), b.path))
            assert error.code == Code.INVALID_ARGUMENT, error
            assert "config.json" in error.message and "root" in error.message, error.message
            delete = b.shim("-bundle", str(b.path), "delete")
            assert delete.returncode == 0, delete.stderr
            b.assert_nothing_left()
        finally:
            b.close()
