"""A fake qemu-system-x86_64 for unit tests: speaks enough QMP over the -mon chardev for the
qemu backend's lifecycle, and binds the mux socket like QEMU's server=on chardev. :func:`install`
points the qemu backend at it."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest


def install(
    tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    prelude: str = "",
    boot_files: Sequence[str] = ("kernel", "initrd.img"),
) -> Path:
    """Make the qemu backend start this fake (through a shell wrapper ``tmp/qemu`` that runs ``prelude``
    first) under TCG, with its state under ``tmp/st`` (returned), and write placeholder ``boot_files``
    into ``tmp``."""
    from hcsshim import settings  # not at the top: the fake itself starts lean
    from hcsshim.hcs.qemu import system as qemu_system

    wrapper = tmp / "qemu"
    wrapper.write_text(f'#!/bin/sh\n{prelude}exec {sys.executable} {Path(__file__).resolve()} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv(settings.QEMU_ENV, str(wrapper))
    monkeypatch.setenv(settings.ACCEL_ENV, "tcg")
    settings.reset()  # read again at the next use, with these
    state = tmp / "st"
    # Not HCSSHIM_RUN_DIR: its `qemu/` would lengthen the socket paths, which must stay under 108 bytes.
    monkeypatch.setattr(qemu_system, "state_root", lambda: str(state))
    for name in boot_files:
        (tmp / name).write_bytes(b"x")
    return state


def _opts(spec: str) -> dict[str, str]:
    out = {}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        out[key] = value
    return out


def main(argv: list[str]) -> int:
    if argv == ["--version"]:
        print("QEMU emulator version 10.0.2 (fake)")
        return 0
    qmp_path = mux_path = console = ""
    for i, arg in enumerate(argv):
        if arg == "-chardev":
            opts = _opts(argv[i + 1])
            if opts.get("id") == "qmp":
                qmp_path = opts["path"]
            elif opts.get("id") == "mux":
                mux_path = opts["path"]
            elif opts.get("id") == "console":
                console = opts["path"]
    if os.environ.get("FAKE_QEMU_FAIL"):
        print("fake qemu: failing at startup", file=sys.stderr)
        return 1
    with open(console, "w") as f:
        f.write("fake console\n")
    mux = socket.socket(socket.AF_UNIX)
    mux.bind(mux_path)
    mux.listen(1)
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(qmp_path)

    def send(obj: object) -> None:
        conn.sendall((json.dumps(obj) + "\r\n").encode())

    def messages() -> Iterator[dict[str, Any]]:
        # QMP clients need not end a command with a newline: decode the stream as it comes.
        decoder = json.JSONDecoder()
        buf = ""
        while chunk := conn.recv(65536):
            buf += chunk.decode()
            while buf.strip():
                try:
                    obj, end = decoder.raw_decode(buf.lstrip())
                except ValueError:
                    break
                buf = buf.lstrip()[end:]
                yield obj

    def event(name: str, data: dict[str, object]) -> None:
        now = time.time()
        send({"event": name, "data": data, "timestamp": {"seconds": int(now), "microseconds": 0}})

    send(
        {
            "QMP": {
                "version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""},
                "capabilities": [],
            }
        }
    )
    for msg in messages():
        cmd, rid = msg["execute"], msg.get("id")
        if cmd == "device_add" and msg["arguments"].get("lun") == 63:
            send({"error": {"class": "GenericError", "desc": "fake: lun 63 refused"}, "id": rid})
            continue
        send({"return": {}, "id": rid})
        if cmd == "device_del":
            event("DEVICE_DELETED", {"device": msg["arguments"]["id"]})
        elif cmd == "quit":
            event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
            return 0
        elif cmd == "system_powerdown":
            event("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
