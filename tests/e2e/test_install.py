"""``hcsshim install`` against a private containerd of each version: the handler it adds to that
containerd's config runs a pod (in a UVM) after a restart, ``--dry-run`` only shows the diff, and a second
run changes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.containerd import VERSIONS, Containerd, start_containerd, stop_containerd
from tests.support.cri import CriClient
from tests.support.oci_image import build_pause_image
from tests.support.shim_checks import qemu_pids, wait_until
from tests.support.uvm import boot_files

pytestmark = [pytest.mark.e2e, pytest.mark.root]

HCSSHIM = str(Path(sys.executable).parent / "hcsshim")
HANDLER = "vm-installed"
GIVEN = ["--overhead-memory", "256Mi", "--overhead-cpu", "100m"]


def install(c: Containerd, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [HCSSHIM, "install", "--config", str(c.config_path), "--address", c.grpc_address]
    return subprocess.run([*argv, "--handler", HANDLER, *args], capture_output=True, text=True, timeout=300)


def _restart(c: Containerd) -> None:
    assert c.process is not None
    c.process.terminate()
    c.process.wait(timeout=30)
    with open(c.log_path, "ab") as log:
        c.process = subprocess.Popen(
            [c.containerd_binary, "--config", str(c.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=c.env,
            cwd=c.base,
            start_new_session=True,
        )
    assert wait_until(lambda: c.ctr("version", check=False).returncode == 0, 30), c.log_tail()


@pytest.mark.parametrize("version", VERSIONS)
def test_installed_handler_runs_a_pod_and_install_is_idempotent(version: str, tmp_path: Path) -> None:
    if boot_files() is None:
        pytest.fail("no UVM image (run `hcsshim uvm build`)")
    c = start_containerd(version=version)
    try:
        original = c.config_path.read_text()
        dry = install(c, "--dry-run", *GIVEN)
        assert dry.returncode == 0, dry.stderr
        assert c.config_path.read_text() == original, "--dry-run wrote the config"
        table = "io.containerd.grpc.v1.cri" if c.config_version == 2 else "io.containerd.cri.v1.runtime"
        assert f'+[plugins."{table}".containerd.runtimes.{HANDLER}]' in dry.stdout, dry.stdout

        first = install(c)  # measures the overhead: boots one UVM
        assert first.returncode == 0, first.stderr
        assert "installed" in first.stderr
        memory = re.search(r'memory: "(\d+)Mi"', first.stdout)
        cpu = re.search(r'cpu: "(\d+)m"', first.stdout)
        assert memory and cpu, first.stdout
        assert int(memory.group(1)) >= 16 and int(cpu.group(1)) >= 10
        assert f"handler: {HANDLER}" in first.stdout
        installed = c.config_path.read_text()
        assert installed.startswith(original)
        assert not [p for p in qemu_pids("hcsshim-install") if p], "the measuring UVM outlived install"

        again = install(c, *GIVEN)
        assert again.returncode == 0, again.stderr
        assert "nothing changed" in again.stderr
        assert c.config_path.read_text() == installed
        assert install(c, "--dry-run", *GIVEN).stdout.startswith("# hcsshim install")  # no diff

        _restart(c)
        assert c.cri_ok
        with tempfile.TemporaryDirectory() as d:
            c.ctr("images", "import", build_pause_image(os.path.join(d, "p.tar")), namespace="k8s.io")
        cri = CriClient(c.grpc_address)
        try:
            config = cri.sandbox_config("installed-pod", str(tmp_path), host_network=True)
            pod_id = cri.run_pod_sandbox(config, HANDLER)
            try:
                assert len(qemu_pids(pod_id)) == 1
            finally:
                cri.stop_pod_sandbox(pod_id)
                cri.remove_pod_sandbox(pod_id)
            assert wait_until(lambda: not qemu_pids(pod_id), 30)
        finally:
            cri.close()
    finally:
        stop_containerd(c)


def test_install_refuses_a_config_of_the_other_version(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('version = 2\n[grpc]\n  address = "/x"\n')
    argv = [HCSSHIM, "install", "--config", str(config), "--containerd-version", "2.1.9", *GIVEN]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "version = 2" in proc.stderr and "version 3" in proc.stderr
    assert config.read_text() == 'version = 2\n[grpc]\n  address = "/x"\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]
