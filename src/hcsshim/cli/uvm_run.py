"""`hcsshim uvm run`: boot a UVM from the default LCOW document and run one command in a busybox
container (or an interactive shell on a TTY), for users and debugging.

`cli/uvm.py` registers it with `uvm_run.register(uvm_subparsers)`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import termios
import tty
from typing import Any

from hcsshim import settings

BUSYBOX = "/bin/busybox"


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="boot a UVM and run a command in a busybox container (or a shell)")
    p.add_argument("--cmd", help="shell command to run (default: an interactive shell)")
    p.add_argument(
        "--annotation", action="append", default=[], metavar="K=V", help="UVM annotation (repeatable)"
    )
    p.add_argument("--boot-files", help="boot files directory (default: the image cache)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the guest agent")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=main)


def _annotations(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--annotation {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def make_busybox_layer(work: str) -> str:
    """A read-only ext4 layer VHD holding busybox-static and its applet links."""
    root = os.path.join(work, "rootfs")
    for d in ("bin", "dev", "proc", "sys", "tmp", "etc", "root"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy(BUSYBOX, os.path.join(root, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = os.path.join(root, "bin", applet)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    from hcsshim.layers.vhd import append_footer_to_path

    vhd = os.path.join(work, "layer.vhd")
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", root, vhd, "16M"],
        check=True,
        capture_output=True,
    )
    append_footer_to_path(vhd)
    return vhd


def container_spec(args: list[str], root: str, terminal: bool) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "TERM=" + settings.inherited_environ().get("TERM", "xterm"), "HOME=/root"],
            "cwd": "/",
        },
        "root": {"path": root, "readonly": True},
        "hostname": "uvm",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "ro"],
            },
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=1777"]},
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]},
    }


async def _pump_out(ch: Any, fd: int) -> None:
    while data := await ch.read():
        os.write(fd, data)


async def _pump_stdin(ch: Any) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    fd = sys.stdin.fileno()
    loop.add_reader(fd, lambda: queue.put_nowait(os.read(fd, 4096)))
    try:
        while data := await queue.get():
            await ch.write(data)
        ch.close_write()
    finally:
        loop.remove_reader(fd)


async def run(ns: argparse.Namespace) -> int:
    from hcsshim.hvsock.abi import LCOW_ROOT, RequestType, ResourceType
    from hcsshim.uvm.document import default_lcow_document
    from hcsshim.uvm.utility_vm import UtilityVM

    interactive = ns.cmd is None
    terminal = interactive and sys.stdin.isatty()
    args = ["sh", "-c", ns.cmd] if ns.cmd else ["sh"]
    annotations = _annotations(ns.annotation)
    doc = default_lcow_document("hcsshim-uvm-run", annotations, boot_files=ns.boot_files)
    cid = "run"
    bundle = f"{LCOW_ROOT}/{cid}"
    with tempfile.TemporaryDirectory(prefix="hcsshim-uvm-run-") as work:
        layer_vhd = make_busybox_layer(work)
        vm = await UtilityVM.create(f"uvm-run-{os.getpid()}", doc)
        try:
            await vm.start(timeout=ns.timeout)
            layer = await vm.add_scsi(layer_vhd, read_only=True)
            layers = {
                "ContainerID": cid,
                "ContainerRootPath": f"{bundle}/rootfs",
                "Layers": [{"Path": layer.guest_path}],
                # overlayfs refuses a single lower layer without an upper: scratch on the guest's /run.
                "ScratchPath": f"/run/scratch/{cid}",
            }
            await vm.guest_modify(ResourceType.COMBINED_LAYERS, RequestType.ADD, layers)
            spec = container_spec(args, f"{bundle}/rootfs", terminal)
            document = {
                "SchemaVersion": {"Major": 2, "Minor": 1},
                "OciBundlePath": bundle,
                "OciSpecification": spec,
            }
            await vm.bridge.create_container(cid, document)
            await vm.bridge.start_container(cid)
            params = {
                "CreateStdInPipe": interactive,
                "CreateStdOutPipe": True,
                "CreateStdErrPipe": not terminal,
            }
            proc = await vm.bridge.execute_process(cid, params)
            saved = termios.tcgetattr(sys.stdin.fileno()) if terminal else None
            try:
                if terminal:
                    size = os.get_terminal_size()
                    await vm.bridge.resize_console(cid, proc.pid, size.lines, size.columns)
                    tty.setraw(sys.stdin.fileno())
                pumps = [asyncio.ensure_future(_pump_out(proc.stdout, sys.stdout.fileno()))]
                if proc.stderr is not None:
                    pumps.append(asyncio.ensure_future(_pump_out(proc.stderr, sys.stderr.fileno())))
                stdin_task = (
                    asyncio.ensure_future(_pump_stdin(proc.stdin)) if proc.stdin is not None else None
                )
                code = await vm.bridge.wait_process(cid, proc.pid)
                await asyncio.wait(pumps, timeout=5)
                if stdin_task is not None:
                    stdin_task.cancel()
            finally:
                if saved is not None:
                    termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
            with contextlib.suppress(Exception):
                await vm.bridge.delete_container_state(cid)
            return int(code)
        finally:
            await vm.terminate()


def main(ns: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, stream=sys.stderr)
    try:
        return asyncio.run(run(ns))
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        print(f"hcsshim uvm run: {e}", file=sys.stderr)
        return 1
