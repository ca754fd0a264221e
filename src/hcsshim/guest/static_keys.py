"""Hold on, for the UVM's life, the cgroup BPF device key that runc's device filter would flip.

runc confines a container's devices with a BPF_PROG_TYPE_CGROUP_DEVICE program on its cgroup. The
first such program anywhere turns on the kernel's `cgroup_bpf_enabled` key for device access, and
detaching the last turns it off; each is a live patch of kernel text while other vCPUs run, the
thing that can stall a guest under multi-threaded TCG (the UVM's /init holds the memory, cpuset and
CPU keys on with a cgroup for the same reason). An allow-everything program attached to the root
cgroup with BPF_F_ALLOW_MULTI keeps the key on: runc's own programs still attach below it, and
with ALLOW_MULTI every program on the path must allow an access, so the root's changes nothing.

The agent does this at start, before any template is saved, so clones never patch the key either.
Stdlib ctypes only; blocking (a few syscalls): run it off the event loop."""

from __future__ import annotations

import ctypes
import os

from .syscalls import libc

# include/uapi/linux/bpf.h
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 1 << 1

# `r0 = 1; exit`: allow every device access. Each instruction is code, dst|src regs, off, imm.
ALLOW_ALL = bytes([0xB7, 0x00, 0, 0, 1, 0, 0, 0, 0x95, 0x00, 0, 0, 0, 0, 0, 0])
PROGRAM_NAME = b"hcsshim_keys"

_SYSCALL_BPF = {"x86_64": 321, "aarch64": 280}


class _ProgLoad(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


class _ProgAttach(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
    ]


class _ProgQuery(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("prog_cnt", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


def _bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    machine = os.uname().machine
    number = _SYSCALL_BPF.get(machine)
    if number is None:
        raise OSError(f"{what}: no bpf() syscall number known for {machine}")
    ret = int(libc().syscall(ctypes.c_long(number), cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _query(fd: int, cgroup: str) -> tuple[list[int], int]:
    ids = (ctypes.c_uint32 * 64)()
    q = _ProgQuery(target_fd=fd, attach_type=BPF_CGROUP_DEVICE, prog_cnt=len(ids))
    q.prog_ids = ctypes.addressof(ids)
    _bpf(BPF_PROG_QUERY, q, f"query the device programs of {cgroup}")
    return [ids[i] for i in range(q.prog_cnt)], q.attach_flags


def device_programs(cgroup: str) -> tuple[list[int], int]:
    """The ids of the device programs attached to `cgroup` itself, and their attach flags."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _query(fd, cgroup)
    finally:
        os.close(fd)


def hold_device_filter_key(cgroup_root: str = "/sys/fs/cgroup") -> bool:
    """Attach the allow-everything device program to `cgroup_root` unless a device program is
    there already (an agent started twice in one UVM). True when this call attached it."""
    fd = os.open(cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _query(fd, cgroup_root)[0]:
            return False
        insns = ctypes.create_string_buffer(ALLOW_ALL, len(ALLOW_ALL))
        license_ = ctypes.create_string_buffer(b"GPL")
        load = _ProgLoad(
            prog_type=BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt=len(ALLOW_ALL) // 8,
            insns=ctypes.addressof(insns),
            license=ctypes.addressof(license_),
            prog_name=PROGRAM_NAME,
        )
        prog = _bpf(BPF_PROG_LOAD, load, "load the allow-all device program")
        try:
            attach = _ProgAttach(
                target_fd=fd,
                attach_bpf_fd=prog,
                attach_type=BPF_CGROUP_DEVICE,
                attach_flags=BPF_F_ALLOW_MULTI,
            )
            _bpf(BPF_PROG_ATTACH, attach, f"attach the allow-all device program to {cgroup_root}")
        finally:
            # The cgroup holds the program now; the fd is not needed to keep it attached.
            os.close(prog)
        return True
    finally:
        os.close(fd)
