"""The agent's side of templating: a clone makes itself distinct before its host may use it.

Every step runs in a thread (they are syscalls on files and devices), and each failure is reported
to the host by name rather than leaving a clone that shares its template's random stream."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import random
import socket
import struct
import time

from hcsshim.hvsock.clone import Identity

from . import log, syscalls

LOG = log.get("clone")

# <linux/random.h>: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207


def _reseed_kernel(seed: bytes, device: str) -> None:
    # Credited entropy, then an explicit reseed: a write alone is mixed in but the crng would keep
    # producing the template's stream until its next scheduled reseed.
    info = struct.pack("ii", len(seed) * 8, len(seed)) + seed
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, RNDADDENTROPY, info)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)


MACHINE_ID_FILE = "/run/hcsshim/machine-id"
MS_BIND = 4096


def _write_machine_id(machine_id: str, path: str, etc_path: str) -> None:
    """The UVM's machine id lives on tmpfs (the image's root is read-only); /etc/machine-id shows
    it too: rewritten where /etc is writable, bind-mounted over where the image has one."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(machine_id + "\n")
    os.replace(tmp, path)
    if not etc_path:
        return
    try:
        with open(etc_path, "w") as f:
            f.write(machine_id + "\n")
    except OSError as e:
        if e.errno != errno.EROFS:
            raise
        if os.path.exists(etc_path):
            syscalls.mount(path, etc_path, "", MS_BIND)


def apply_identity_blocking(
    identity: Identity,
    *,
    random_device: str = "/dev/urandom",
    machine_id_path: str = MACHINE_ID_FILE,
    etc_machine_id: str = "/etc/machine-id",
    set_clock: bool = True,
    set_hostname: bool = True,
) -> None:
    try:
        _reseed_kernel(identity.seed, random_device)
    except OSError as e:
        raise OSError(
            e.errno, f"reseeding the kernel's random pool through {random_device}: {e.strerror}"
        ) from e
    # The agent's own Python-level generator was copied from the template too.
    random.seed(os.urandom(32))
    if set_clock:
        try:
            time.clock_settime_ns(time.CLOCK_REALTIME, identity.realtime_ns)
        except OSError as e:
            raise OSError(e.errno, f"setting CLOCK_REALTIME: {e.strerror}") from e
    if set_hostname:
        try:
            socket.sethostname(identity.hostname)
        except OSError as e:
            raise OSError(e.errno, f"sethostname({identity.hostname!r}): {e.strerror}") from e
    try:
        _write_machine_id(identity.machine_id, machine_id_path, etc_machine_id)
    except OSError as e:
        where = f"{machine_id_path}, {etc_machine_id}"
        raise OSError(e.errno, f"setting the machine id ({where}): {e.strerror}") from e


async def apply_identity(identity: Identity) -> None:
    await asyncio.to_thread(apply_identity_blocking, identity)
    LOG.info(
        "clone identity applied", extra={"hostname": identity.hostname, "machine_id": identity.machine_id}
    )
