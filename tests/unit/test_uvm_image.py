"""The UVM image builder's pure parts: package and module resolution, cache keys, init argv mapping,
cpio output, ELF and import scanning, bzImage parsing, and `hcsshim uvm check`."""

from __future__ import annotations

import io
import lzma
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from hcsshim import settings
from hcsshim.cli import main as cli_main
from hcsshim.hvsock import abi
from hcsshim.image import builder, cpio, dependencies, init_script

V = "kernel/drivers/virtio"
MODULES_DEP = f"""\
{V}/virtio.ko: {V}/virtio_ring.ko
{V}/virtio_ring.ko:
{V}/virtio_pci.ko: {V}/virtio_pci_modern_dev.ko {V}/virtio.ko {V}/virtio_ring.ko
{V}/virtio_pci_modern_dev.ko:
kernel/drivers/char/virtio_console.ko: {V}/virtio.ko {V}/virtio_ring.ko
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko {V}/virtio.ko {V}/virtio_ring.ko
kernel/fs/fscache/fscache.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: {V}/virtio.ko {V}/virtio_ring.ko
kernel/fs/overlayfs/overlay.ko:
"""
MODULES_BUILTIN = "kernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n"


def _index() -> dependencies.ModuleIndex:
    return dependencies.ModuleIndex.parse(MODULES_DEP, MODULES_BUILTIN)


def test_module_resolution_orders_dependencies_first_once() -> None:
    plan = dependencies.resolve_modules(["virtio_pci", "virtio_console", "9p", "ext4", "nosuch"], _index())
    names = [dependencies.module_name(p) for p in plan.load_order]
    assert names == [
        "virtio_pci_modern_dev",
        "virtio_ring",
        "virtio",
        "virtio_pci",
        "virtio_console",
        "9pnet",
        "fscache",
        "9p",
    ]
    assert plan.builtin == ("ext4",)
    assert plan.missing == ("nosuch",)


def test_module_names_normalize_dashes() -> None:
    assert dependencies.module_name("kernel/drivers/char/hw_random/virtio-rng.ko") == "virtio_rng"
    plan = dependencies.resolve_modules(["virtio-rng"], _index())
    assert plan.load_order[-1].endswith("virtio-rng.ko")


def test_module_cycle_is_an_error() -> None:
    idx = dependencies.ModuleIndex.parse("a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(ValueError, match="cycle"):
        dependencies.resolve_modules(["a"], idx)


def test_split_load_order_puts_filesystems_before_buses() -> None:
    early, rest = dependencies.split_load_order(
        ["virtio_pci", "virtio_console"],
        ["virtio_pci", "virtio_console", "virtio_rng", "overlay", "9p"],
        _index(),
    )
    early_names = [dependencies.module_name(p) for p in early]
    rest_names = [dependencies.module_name(p) for p in rest]
    assert early_names[-2:] == ["virtio_pci", "virtio_console"]
    assert not set(early) & set(rest)
    assert rest_names.index("overlay") < rest_names.index("virtio_rng")
    assert rest_names.index("9p") < rest_names.index("virtio_rng")


def test_filtered_modules_dep_only_lists_image_modules() -> None:
    idx = _index()
    plan = dependencies.resolve_modules(["9p"], idx)
    text = dependencies.filtered_modules_dep(plan, idx)
    assert text.splitlines() == [
        "kernel/net/9p/9pnet.ko:",
        "kernel/fs/fscache/fscache.ko:",
        "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko",
    ]


def test_guest_module_list_covers_the_contract() -> None:
    for needed in ("virtio_pci", "virtio_console", "virtio_scsi", "sd_mod", "9p", "9pnet_virtio", "overlay"):
        assert needed in builder.GUEST_MODULES
    assert set(builder.STAGE1_MODULES) <= set(builder.GUEST_MODULES)
    assert set(builder.EARLY_MODULES) <= set(builder.GUEST_MODULES)


APT_SHOW = """\
Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)
Size: 1500
Description: Linux for 64-bit PCs (meta-package)
 This package depends on the latest Linux kernel

Package: linux-image-amd64
Version: 6.1.100-1
"""


def test_parse_apt_show_takes_the_first_stanza() -> None:
    f = builder.parse_apt_show(APT_SHOW)
    assert f["Version"] == "6.1.192-2"
    assert f["Size"] == "1500"
    assert builder.kernel_package_from_depends(f["Depends"]) == "linux-image-6.1.0-56-amd64"
    both = builder.parse_apt_show_all(APT_SHOW + "\nPackage: runc\nVersion: 1.1.5\n")
    assert both["linux-image-amd64"]["Version"] == "6.1.192-2"
    assert both["runc"]["Version"] == "1.1.5"


@pytest.mark.parametrize(
    ("depends", "expected"),
    [
        ("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)", "linux-image-6.1.0-56-cloud-amd64"),
        (
            "foo, linux-image-6.1.0-1-amd64-unsigned | linux-image-6.1.0-1-amd64",
            "linux-image-6.1.0-1-amd64-unsigned",
        ),
        ("linux-image-amd64", None),
        ("", None),
    ],
)
def test_kernel_package_from_depends(depends: str, expected: str | None) -> None:
    assert builder.kernel_package_from_depends(depends) == expected


def test_package_file_names_follow_apt() -> None:
    p = builder.Package("busybox-static", "1:1.35.0-4+deb12u1+b1", 10)
    assert p.deb_name == "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
    assert ":" not in p.key


def test_cache_keys_change_with_their_inputs() -> None:
    a = [builder.Package("runc", "1.1.5", 1), builder.Package("libc6", "2.36", 1)]
    b = [builder.Package("runc", "1.1.6", 1), builder.Package("libc6", "2.36", 1)]
    assert builder.base_key(a, ["x"]) == builder.base_key(list(reversed(a)), ["x"])
    assert builder.base_key(a, ["x"]) != builder.base_key(b, ["x"])
    assert builder.base_key(a, ["x"]) != builder.base_key(a, ["x", "y"])
    assert builder.final_key("base", "agent1") != builder.final_key("base", "agent2")
    assert builder.final_key("base1", "agent") != builder.final_key("base2", "agent")


def test_agent_hash_tracks_sources_not_bytecode(tmp_path: Path) -> None:
    (tmp_path / "guest").mkdir()
    (tmp_path / "guest" / "a.py").write_text("x = 1\n")
    (tmp_path / "__init__.py").write_text("")
    parts = ("__init__.py", "guest")
    h1 = builder.hash_tree(str(tmp_path), parts)
    (tmp_path / "guest" / "__pycache__").mkdir()
    (tmp_path / "guest" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    assert builder.hash_tree(str(tmp_path), parts) == h1
    (tmp_path / "guest" / "a.py").write_text("x = 2\n")
    assert builder.hash_tree(str(tmp_path), parts) != h1


UPSTREAM_ARGV = [
    "-e",
    "1",
    "/bin/vsockexec",
    "-e",
    "109",
    "/bin/gcs",
    "-v4",
    "-log-format",
    "json",
    "-loglevel",
    "info",
]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (UPSTREAM_ARGV, ["--log-level", "info", "--log-format", "json"]),
        (["-loglevel", "debug"], ["--log-level", "debug", "--log-format", "text"]),
        (["-loglevel=trace"], ["--log-level", "debug", "--log-format", "text"]),
        (["-loglevel", "warn"], ["--log-level", "warning", "--log-format", "text"]),
        (["-loglevel", "fatal", "-log-format", "text"], ["--log-level", "error", "--log-format", "text"]),
        (["-loglevel"], ["--log-level", "info", "--log-format", "text"]),
        ([], ["--log-level", "info", "--log-format", "text"]),
        (["ro", "rootwait", "--log-level", "error"], ["--log-level", "error", "--log-format", "text"]),
    ],
)
def test_upstream_argv_mapping(argv: list[str], expected: list[str]) -> None:
    assert init_script.map_upstream_argv(argv) == expected


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")
@pytest.mark.parametrize(
    "argv",
    [UPSTREAM_ARGV, ["-loglevel=trace"], ["-loglevel"], [], ["-log-format=json", "-loglevel", "panic"]],
)
def test_init_script_maps_argv_like_the_python_helper(tmp_path: Path, argv: list[str]) -> None:
    script = tmp_path / "init"
    script.write_text(init_script.INIT_SCRIPT)
    out = subprocess.run(
        ["busybox", "sh", str(script), *argv],
        env={"HCSSHIM_INIT_TEST": "args", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == init_script.map_upstream_argv(argv)


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")
def test_init_scripts_parse() -> None:
    for text in (init_script.INIT_SCRIPT, init_script.FLOOR_INIT_SCRIPT):
        subprocess.run(["busybox", "sh", "-n", "-c", text], check=True)


def test_cpio_archive_lists_with_cpio(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"\x7fELF" + b"x" * 1000)
    os.chmod(root / "bin" / "tool", 0o755)
    os.symlink("tool", root / "bin" / "alias")
    (root / "init").write_text("#!/bin/sh\n")
    buf = io.BytesIO()
    cpio.write_tree(str(root), buf)
    data = buf.getvalue()
    assert data.startswith(b"070701")
    assert len(data) % 512 == 0
    if shutil.which("cpio") is None:
        pytest.skip("cpio not installed")
    listing = subprocess.run(["cpio", "-itv"], input=data, capture_output=True, check=True).stdout.decode()
    lines = {
        line.split()[-1] if "->" not in line else line.split()[-3]: line for line in listing.splitlines()
    }
    assert set(lines) >= {"bin", "bin/tool", "bin/alias", "init", "dev/console", "dev/null"}
    assert lines["bin/tool"].startswith("-rwxr-xr-x")
    assert " root " in lines["bin/tool"]
    assert lines["dev/console"].startswith("crw-------")
    # Parents come before children so the kernel can create them in order.
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in listing.splitlines()]
    assert names.index("bin") < names.index("bin/tool")


def test_elf_needed_reads_the_host_python() -> None:
    with open(os.path.realpath(sys.executable), "rb") as f:
        needed = dependencies.elf_needed(f.read())
    assert any(n.startswith("libc.so") for n in needed)
    assert dependencies.elf_needed(b"#!/bin/sh\n") == []


def test_imported_names_resolves_relative_and_nested_imports() -> None:
    src = "import os\nfrom . import log\nfrom .runc import Runc\ndef f():\n    import json.decoder\n"
    names = dependencies.imported_names(src, "hcsshim.guest")
    assert {"os", "hcsshim.guest", "hcsshim.guest.log", "hcsshim.guest.runc", "json.decoder"} <= names


def test_scan_package_imports_sees_the_agent() -> None:
    names = dependencies.scan_package_imports(builder.agent_source_root().rsplit("/", 1)[0])
    assert "asyncio" in names


def test_bzimage_payload_and_decompress() -> None:
    elf = b"\x7fELF" + b"\0" * 100
    payload = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    setup_sects = 4
    header = bytearray((setup_sects + 1) * 512)
    header[0x1F1] = setup_sects
    header[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", header, 0x248, 16, len(payload))
    data = bytes(header) + b"\0" * 16 + payload + b"tail"
    kind, got = builder.bzimage_payload(data)
    assert (kind, got) == ("xz", payload)
    assert builder.decompress_kernel(data) == elf
    with pytest.raises(builder.ImageError):
        builder.bzimage_payload(b"\0" * 1024)


def test_check_on_an_empty_directory_lists_everything_missing(tmp_path: Path) -> None:
    items = {i.name: i for i in builder.check(str(tmp_path), host_tools=False)}
    for name in ("kernel", "vmlinux", "initrd.img", "rootfs.vhd", "manifest.json"):
        assert not items[name].ok
    assert str(tmp_path) in items["kernel"].detail


def test_check_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main(["uvm", "check", "--out", str(tmp_path)]) == 1
    assert cli_main.main(["uvm", "build", "--check", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "MISSING" in out.out
    assert "hcsshim uvm build" in out.err


def test_default_boot_files_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(builder.ENV_BOOT_FILES, raising=False)
    assert builder.default_boot_files_path() == "/var/cache/hcsshim/uvm"
    monkeypatch.setenv(builder.ENV_BOOT_FILES, "/x/y")
    settings.reset()  # loaded once per process: read the changed variable again
    assert builder.default_boot_files_path() == "/x/y"


def test_human_sizes() -> None:
    assert builder.human(100) == "100 B"
    assert builder.human(2048) == "2.0 KiB"
    assert builder.human(5 * 1024 * 1024) == "5.0 MiB"


def test_init_loads_late_modules_async_by_default_and_tells_the_agent() -> None:
    from hcsshim.guest import storage

    script = init_script.INIT_SCRIPT
    assert init_script.MODULES_DONE == storage.MODULES_DONE
    assert "modules_mode=$(param hcsshim.modules) || modules_mode=async" in script
    assert '[ "$modules_mode" != sync ]' in script
    assert f"export {storage.MODULES_DONE_ENV}={storage.MODULES_DONE}" in script
    # The mux port's modules load before the agent starts, whatever the mode.
    early = script.index("load_modules /etc/hcsshim/modules.early")
    assert early < script.index("python3 -S -m hcsshim.guest")
    assert {"virtio_pci", "virtio_console"} <= set(builder.EARLY_MODULES)


def test_init_script_default_transport_is_the_abi_mux_device() -> None:
    # /init falls back to this when the kernel command line names no hcsshim.transport.
    assert f"|| transport=virtio:{abi.VIRTIO_MUX_DEVICE}\n" in init_script.INIT_SCRIPT
