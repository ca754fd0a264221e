"""The built UVM image under QEMU TCG: initrd and rootfs.vhd boot to Python and to the agent; the
floor initrd signals READY; rootfs.vhd and tar2ext4 output are ext4 that QEMU and the kernel read."""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hcsshim.image import builder, init_script
from hcsshim.layers import tar2ext4, vhd

pytestmark = pytest.mark.e2e

QEMU = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
BOOT_TIMEOUT = 90.0


@dataclass
class Boot:
    lines: list[str]
    seconds: float
    found: bool
    returncode: int | None


def _mux_args() -> list[str]:
    return [
        *("-device", "virtio-serial-pci,id=vser0"),
        *("-chardev", "null,id=mux"),
        *("-device", "virtserialport,bus=vser0.0,chardev=mux,name=hcsshim.mux"),
        *("-device", "virtio-rng-pci"),
    ]


def qemu_argv(kernel: str, initrd: str, append: str, extra: list[str]) -> list[str]:
    """The command line the image is measured with (see the image issue notes)."""
    return [
        QEMU,
        *("-accel", "tcg", "-machine", "pc", "-cpu", "max", "-m", "1024", "-smp", "2"),
        *("-nodefaults", "-no-user-config", "-nographic", "-no-reboot"),
        *("-kernel", kernel, "-initrd", initrd),
        *("-append", f"console=ttyS0 panic=-1 {append}".strip()),
        *("-serial", "stdio"),
        *extra,
    ]


def boot_until(argv: list[str], marker: str, *, wait_exit: bool) -> Boot:
    """Run QEMU until `marker` shows on the serial console (then until it exits, with wait_exit)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    lines: list[str] = []
    found_at: float | None = None
    buf = b""
    try:
        while time.monotonic() - t0 < BOOT_TIMEOUT:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *complete, buf = buf.split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace").rstrip("\r")
                lines.append(line)
                if found_at is None and marker in line:
                    found_at = time.monotonic() - t0
            if found_at is not None and not wait_exit:
                break
        if wait_exit and found_at is not None:
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    assert proc.poll() is not None  # no QEMU left behind
    return Boot(lines, found_at or -1.0, found_at is not None, proc.returncode)


@pytest.fixture(scope="module")
def boot_files() -> Iterator[str]:
    d = builder.default_boot_files_path()
    missing = [i.name for i in builder.check(d, host_tools=False) if not i.ok and i.name != "agent"]
    if missing:
        pytest.skip(f"UVM image incomplete in {d} ({', '.join(missing)}): run `make image`")
    yield d


def _tail(b: Boot) -> str:
    return "\n".join(b.lines[-40:])


def test_initrd_boots_to_python_with_the_agent_imported(boot_files: str) -> None:
    b = boot_until(
        qemu_argv(f"{boot_files}/vmlinux", f"{boot_files}/initrd.img", "hcsshim.probe=python", _mux_args()),
        init_script.PYTHON_READY_MARKER,
        wait_exit=True,
    )
    assert b.found, _tail(b)
    assert b.returncode == 0  # the guest powered off
    assert any(init_script.USERSPACE_MARKER in line for line in b.lines)
    assert not any("insmod" in line and "failed" in line for line in b.lines), _tail(b)


def test_initrd_starts_the_agent_with_upstream_argv(boot_files: str) -> None:
    append = "-- -e 1 /bin/vsockexec -e 109 /bin/gcs -v4 -log-format json -loglevel debug"
    b = boot_until(
        qemu_argv(f"{boot_files}/kernel", f"{boot_files}/initrd.img", append, _mux_args()),
        '"msg": "agent started"',
        wait_exit=False,
    )
    assert b.found, _tail(b)
    started = next(line for line in b.lines if '"msg": "agent started"' in line)
    record = json.loads(started[started.index("{") :])
    assert record["transport"] == "virtio:/dev/virtio-ports/hcsshim.mux"


def test_rootfs_vhd_boots_through_stage1(boot_files: str) -> None:
    rootfs = f"{boot_files}/rootfs.vhd"
    blockdev = {
        "driver": "vpc",
        "node-name": "root",
        "read-only": True,
        "file": {"driver": "file", "filename": rootfs, "read-only": True},
    }
    extra = [
        *_mux_args(),
        *("-device", "virtio-scsi-pci,id=scsi0,addr=0x10"),
        *("-blockdev", json.dumps(blockdev)),
        *("-device", "scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=0,drive=root"),
    ]
    b = boot_until(
        qemu_argv(
            f"{boot_files}/vmlinux",
            f"{boot_files}/vhd-initrd.img",
            "root=/dev/sda ro rootwait init=/init hcsshim.probe=python",
            extra,
        ),
        init_script.PYTHON_READY_MARKER,
        wait_exit=True,
    )
    assert b.found, _tail(b)
    assert any("switching to /dev/sda" in line for line in b.lines)


def test_floor_initrd_signals_ready(boot_files: str) -> None:
    b = boot_until(
        qemu_argv(f"{boot_files}/vmlinux", f"{boot_files}/floor-initrd.img", "", []),
        init_script.READY_MARKER,
        wait_exit=True,
    )
    assert b.found, _tail(b)
    assert b.returncode == 0


def test_rootfs_vhd_is_ext4_that_qemu_reads_as_vpc(boot_files: str) -> None:
    rootfs = f"{boot_files}/rootfs.vhd"
    footer = vhd.read_footer_from_path(rootfs)
    with open(rootfs, "rb") as f:
        f.seek(1024 + 56)
        assert f.read(2) == b"\x53\xef"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-f", "vpc", "--output", "json", rootfs], capture_output=True, check=True
        ).stdout
    )
    assert info["format"] == "vpc"
    assert info["virtual-size"] == footer.current_size


def _loop_devices_for(path: str) -> str:
    return subprocess.run(["losetup", "-j", path], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")
def test_tar2ext4_output_mounts_with_overlay_whiteouts(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("etc/hostname", b"layer\n"), ("etc/.wh.passwd", b""), ("var/.wh..wh..opq", b"")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    layer = tmp_path / "layer.vhd"
    tar2ext4.convert(io.BytesIO(buf.getvalue()), str(layer), tar2ext4.Options(append_vhd_footer=True))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "ext4", "-o", "loop,ro", str(layer), str(mnt)], check=True)
    try:
        wh = os.lstat(mnt / "etc" / "passwd")
        assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == os.makedev(0, 0)
        assert (mnt / "etc" / "hostname").read_bytes() == b"layer\n"
        assert os.getxattr(mnt / "var", "trusted.overlay.opaque") == b"y"
        assert not (mnt / "lost+found").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert not os.path.ismount(mnt)
    assert _loop_devices_for(str(layer)) == ""
