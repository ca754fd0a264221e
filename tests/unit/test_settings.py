"""hcsshim.settings: the environment parsed once into one typed object, and nobody else reading it."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import hcsshim
from hcsshim import settings
from hcsshim.settings import Settings

SRC = Path(hcsshim.__file__).parent

# The guest agent runs in the UVM with the environment /init gives it and the image does not carry
# hcsshim.settings (host settings), so these modules keep their own reads.
GUEST_READS = {
    "guest/runc.py": "HCSSHIM_ROOT_IS_RAMFS, exported by the image's /init",
    "guest/__main__.py": "HCSSHIM_MODULES_DONE, exported by the image's /init",
    "guest/syscalls.py": "hands the agent's environment to a spawned child",
    "guest/reaper.py": "hands the agent's environment to a spawned child",
}


def test_a_sample_environment_parses_into_every_field() -> None:
    environ = {
        "HCSSHIM_HCS_BACKEND": "windows",
        "HCSSHIM_QEMU": "/opt/qemu/bin/qemu-system-x86_64",
        "HCSSHIM_ACCEL": "tcg,thread=multi",
        "HCSSHIM_DEBUG_QEMU": "1",
        "HCSSHIM_HVSOCKET": " Virtio-Serial ",
        "HCSSHIM_RUN_DIR": "/tmp/run",
        "HCSSHIM_BOOT_FILES": "/boot/uvm",
        "HCSSHIM_TIMEOUT_GCSCONNECTION": "7.5",
        "HCSSHIM_SHIM_SOCKET_DIR": "/tmp/s",
        "HCSSHIM_LOCAL_STATE": "/tmp/local",
        "HCSSHIM_SHIM_HOST_FACTORY": "tests.support.local_host:create",
        "HCSSHIM_UVM_POOL_SIZE": "2",
        "HCSSHIM_UVM_POOL_MEMORY_MB": "1024",
        "HCSSHIM_LCOW_V2_UVM_GROUP": "shared",
        "TTRPC_ADDRESS": "/run/containerd/containerd.sock.ttrpc",
        "HCSSHIM_SLOW_CALLBACK_MS": "100",
        "HCSSHIM_GUEST_SLOW_CALLBACK_MS": "500",
        "UNRELATED": "x",
    }
    s = Settings.from_environ(environ)
    assert s == Settings(
        hcs_backend="windows",
        qemu="/opt/qemu/bin/qemu-system-x86_64",
        accel="tcg,thread=multi",
        debug_qemu=True,
        hvsocket="virtio-serial",
        run_dir="/tmp/run",
        boot_files="/boot/uvm",
        gcs_connection_timeout=7.5,
        shim_socket_dir="/tmp/s",
        local_state="/tmp/local",
        shim_host_factory="tests.support.local_host:create",
        uvm_pool_size=2,
        uvm_pool_memory_mb=1024,
        lcow_v2_uvm_group="shared",
        ttrpc_address="/run/containerd/containerd.sock.ttrpc",
        slow_callback_ms=100,
        guest_slow_callback_ms=500,
    )
    assert s.qemu_state_dir == "/tmp/run/qemu"
    # Every field is covered by the sample: a new field must be added here too.
    assert all(getattr(s, f.name) != f.default for f in dataclasses.fields(Settings))


def test_an_empty_environment_gives_the_defaults_and_empty_counts_as_unset() -> None:
    assert Settings.from_environ({}) == Settings()
    assert Settings.from_environ({"HCSSHIM_QEMU": "", "HCSSHIM_TIMEOUT_GCSCONNECTION": ""}) == Settings()
    assert Settings().qemu == "qemu-system-x86_64"
    assert Settings().boot_files == "/var/cache/hcsshim/uvm"
    assert Settings().gcs_connection_timeout == 120.0
    assert Settings().qemu_state_dir == "/run/hcsshim/qemu"


@pytest.mark.parametrize("raw", ["soon", "0", "-3", "nan", "inf"])
def test_a_bad_timeout_names_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=f"HCSSHIM_TIMEOUT_GCSCONNECTION={raw!r}"):
        Settings.from_environ({"HCSSHIM_TIMEOUT_GCSCONNECTION": raw})


def test_settings_load_once_at_first_use_not_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCSSHIM_QEMU", "/first")
    first = settings.current()
    assert first.qemu == "/first"
    monkeypatch.setenv("HCSSHIM_QEMU", "/second")
    assert settings.current() is first  # loaded once
    settings.reset()
    assert settings.current().qemu == "/second"
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.qemu = "/x"  # type: ignore[misc]


def test_the_backend_reads_the_settings_at_use_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from hcsshim.hcs import default_backend
    from hcsshim.hcs.qemu import system
    from hcsshim.uvm.document import boot_files_path

    monkeypatch.setenv("HCSSHIM_QEMU", "/opt/q")
    monkeypatch.setenv("HCSSHIM_RUN_DIR", "/tmp/rd")
    monkeypatch.setenv("HCSSHIM_BOOT_FILES", "/tmp/boot")
    monkeypatch.setenv("HCSSHIM_HCS_BACKEND", "windows")
    assert system.qemu_binary() == "/opt/q"
    assert system.state_dir_for("vm1") == "/tmp/rd/qemu/vm1"
    assert boot_files_path() == "/tmp/boot"
    assert default_backend() == "windows"


_READ_NAMES = frozenset({"environ", "environb", "getenv", "getenvb"})


def _environment_reads(tree: ast.AST) -> list[int]:
    """Lines that touch os.environ / os.getenv (or import them from os)."""
    lines: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _READ_NAMES:
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            lines.extend(node.lineno for a in node.names if a.name in _READ_NAMES)
    return lines


def test_no_module_but_settings_reads_the_environment() -> None:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel == "settings.py" or rel in GUEST_READS:
            continue
        lines = _environment_reads(ast.parse(path.read_text(), filename=rel))
        if lines:
            found[rel] = lines
    assert not found, f"environment read outside hcsshim/settings.py (use settings.current()): {found}"
    for rel in GUEST_READS:  # the allowance goes when the read does
        assert _environment_reads(ast.parse((SRC / rel).read_text())), f"{rel} no longer reads it"


def test_the_scan_catches_each_form_of_read() -> None:
    for text in (
        "import os\nos.environ.get('X')\n",
        "import os\nos.getenv('X')\n",
        "from os import environ\n",
    ):
        assert _environment_reads(ast.parse(text)), text
    assert not _environment_reads(ast.parse("import os\nos.path.join('a')\n"))
