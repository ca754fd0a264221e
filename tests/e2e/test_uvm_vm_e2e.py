"""UtilityVM end to end: a real UVM from the default LCOW document, the guest agent over the
virtio-serial mux, busybox containers, SCSI and Plan9 hot add, and a VM killed under the bridge."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hcsshim.gcs.bridge import BridgeClosedError
from hcsshim.hcs.qemu.mounts import mounts_under
from hcsshim.hcs.qemu.system import QemuComputeSystem
from tests.support.uvm import (
    BootedUvm,
    boot_files,
    boot_uvm,
    have_root_and_qemu,
    make_busybox_vhd,
    make_vhd_with_file,
    start_busybox,
    stop_busybox,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.root,
    pytest.mark.skipif(not have_root_and_qemu(), reason="needs root and qemu-system-x86_64"),
    pytest.mark.skipif(boot_files() is None, reason="needs the UVM image (hcsshim uvm build)"),
    pytest.mark.timeout(600),
]


def test_boot_negotiate_and_run_busybox(booted_uvm: BootedUvm) -> None:
    assert booted_uvm.vm.bridge.negotiated is not None
    code, out, err = booted_uvm.run_busybox("hello", ["sh", "-c", "echo hello from the uvm; exit 7"])
    assert (code, out, err) == (7, b"hello from the uvm\n", b"")


def test_init_holds_the_cgroup_static_keys_on(booted_uvm: BootedUvm) -> None:
    """A container's first cgroup would live-patch kernel text (memcg_kmem, memcg_sockets,
    cpusets_enabled, cfs_bandwidth_used) and its deletion patch most back; init turns those keys on
    at boot and holds them with a cgroup of its own, so no container start or delete patches."""
    code, out, err = booted_uvm.run(
        booted_uvm.vm.exec_in_uvm(
            ["sh", "-c", "cd /sys/fs/cgroup/hcsshim-keys && cat cgroup.controllers cpu.max"]
        )
    )
    assert code == 0, (out, err)
    controllers, quota = out.decode().splitlines()
    assert {"memory", "cpuset", "cpu"} <= set(controllers.split()), controllers
    assert quota == "100000 100000", quota


def _device_programs(cgroup: str) -> str:
    return (
        "PYTHONPATH=/opt/hcsshim python3 -S -c "
        "'from hcsshim.guest import static_keys as k; "
        f'ids, flags = k.device_programs("{cgroup}"); print(len(ids), flags)\''
    )


def test_agent_holds_the_cgroup_bpf_device_key_while_containers_filter_devices(
    booted_uvm: BootedUvm,
) -> None:
    """runc's device filter on a container's cgroup would turn the kernel's cgroup BPF device key on
    with the first container and off with the last; the agent holds it with a program on the root,
    and the container's own filter still decides below it."""
    from hcsshim.guest.static_keys import BPF_F_ALLOW_MULTI

    vm = booted_uvm.vm

    assert booted_uvm.sh(_device_programs("/sys/fs/cgroup")).split() == ["1", str(BPF_F_ALLOW_MULTI)]
    cid = "devices"
    pid = booted_uvm.run(start_busybox(vm, booted_uvm.layer.guest_path, cid, ["sleep", "1000"]))
    try:
        cgroup = "/sys/fs/cgroup" + booted_uvm.sh(f"cut -d: -f3 /proc/{pid}/cgroup").strip()
        # runc attached its own filter (one program) to the container's cgroup.
        assert booted_uvm.sh(_device_programs(cgroup)).split()[0] == "1"
        # /dev/kmsg (1:11) is not among the container's devices: a process in its cgroup cannot
        # open it, while one in the root cgroup, under only the allow-everything program, can.
        opened = booted_uvm.sh(
            ": </dev/kmsg && echo root=ok; "
            f"sh -c 'echo $$ >{cgroup}/cgroup.procs && exec sh -c \": </dev/kmsg\"' 2>&1; echo container=$?"
        )
        assert opened.splitlines()[0] == "root=ok", opened
        assert "Operation not permitted" in opened and opened.splitlines()[-1] == "container=1", opened
    finally:
        booted_uvm.run(stop_busybox(vm, booted_uvm.layer.guest_path, cid, pid))
    # The last container is gone and the root still holds the key.
    assert booted_uvm.sh(_device_programs("/sys/fs/cgroup")).split() == ["1", str(BPF_F_ALLOW_MULTI)]


# Every live patch of kernel text on x86 goes through text_poke_queue (jump labels in batches,
# ftrace) or text_poke_bp (a single site, static calls): kprobes on both count them. The probes' own
# arming patches too, so the counts are read as differences after they settle.
_PATCH_PROBES = {"hcsshim_poke_queue": "text_poke_queue", "hcsshim_poke_bp": "text_poke_bp"}
_PROBE_NAMES = " ".join(_PATCH_PROBES)
_ARM_PATCH_PROBES = (
    "mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing || exit 2\n"
    "cd /sys/kernel/tracing || exit 3\n"
    + "".join(f"echo 'p:{name} {fn}' >>kprobe_events || exit 4\n" for name, fn in _PATCH_PROBES.items())
    + f"for p in {_PROBE_NAMES}; do echo 1 >events/kprobes/$p/enable || exit 5; done\n"
    "sleep 1\n"
)
_DISARM_PATCH_PROBES = (
    "cd /sys/kernel/tracing || exit 3\n"
    f"for p in {_PROBE_NAMES}; do\n"
    '    echo 0 >events/kprobes/$p/enable; echo "-:$p" >>kprobe_events\n'
    "done\n"
)


def test_a_container_start_and_delete_patch_no_kernel_text(booted_uvm: BootedUvm) -> None:
    """What issue 9's keys are held for: with init's cgroup and the agent's device program holding
    them on, running and deleting a container live-patches no kernel text at all (every such patch
    is a chance for the multi-threaded TCG stall)."""

    def patches() -> int:
        # kprobe_profile: "<event> <hits> <misses>" per probe.
        profile = booted_uvm.sh("cat /sys/kernel/tracing/kprobe_profile")
        rows = [line.split() for line in profile.splitlines()]
        return sum(int(row[1]) for row in rows if row and row[0] in _PATCH_PROBES)

    booted_uvm.sh(_ARM_PATCH_PROBES)
    try:
        before = patches()
        code, out, err = booted_uvm.run_busybox("no-patch", ["sh", "-c", "echo ran"])
        assert (code, out) == (0, b"ran\n"), (code, out, err)
        assert patches() - before == 0
        # The probes see a patch when there is one: a tracepoint's key flips on and off.
        before = patches()
        kmalloc = "/sys/kernel/tracing/events/kmem/kmalloc/enable"
        booted_uvm.sh(f"echo 1 >{kmalloc} && echo 0 >{kmalloc}")
        assert patches() - before > 0
    finally:
        booted_uvm.sh(_DISARM_PATCH_PROBES)


def test_scsi_hot_add_read_file_in_container(booted_uvm: BootedUvm, tmp_path: Path) -> None:
    vhd = make_vhd_with_file(str(tmp_path / "data.vhd"), "greeting.txt", b"read from a hot-added VHD\n")
    vm = booted_uvm.vm
    m = booted_uvm.run(vm.add_scsi(vhd, read_only=True))
    assert m.guest_path.startswith("/run/mounts/scsi/0_")
    try:
        mount = {"destination": "/data", "type": "bind", "source": m.guest_path, "options": ["rbind", "ro"]}
        code, out, _ = booted_uvm.run_busybox("scsi", ["cat", "/data/greeting.txt"], [mount])
        assert (code, out) == (0, b"read from a hot-added VHD\n")
    finally:
        booted_uvm.run(vm.remove_scsi(vhd))
    assert vhd not in vm.scsi.by_path


def test_plan9_share_readable_in_guest(booted_uvm: BootedUvm, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "note.txt").write_text("shared over 9p\n")
    vm = booted_uvm.vm
    guest_path = booted_uvm.run(vm.add_plan9(str(share), read_only=True))
    assert guest_path.startswith("/run/mounts/plan9/")
    assert isinstance(vm.system, QemuComputeSystem)
    try:
        mount = {"destination": "/share", "type": "bind", "source": guest_path, "options": ["rbind", "ro"]}
        code, out, _ = booted_uvm.run_busybox("plan9", ["cat", "/share/note.txt"], [mount])
        assert (code, out) == (0, b"shared over 9p\n")
    finally:
        booted_uvm.run(vm.remove_plan9(str(share)))
    assert mounts_under(vm.system.paths.plan9_root) == []


def test_kill9_fails_bridge_and_leaves_nothing(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()

    async def run() -> None:
        vm, _ = await boot_uvm(f"kill9-{os.getpid()}")
        try:
            system = vm.system
            assert isinstance(system, QemuComputeSystem)
            await vm.add_plan9(str(share), read_only=False)
            layer = await vm.add_scsi(make_busybox_vhd(tmp_path), read_only=True)
            sleeper = await start_busybox(vm, layer.guest_path, "sleeper", ["sleep", "1000"])
            pid = system.pid
            assert pid is not None
            # A call that stays pending until the VM dies: wait on a process that never exits.
            pending = asyncio.ensure_future(vm.bridge.wait_process("sleeper", sleeper))
            await asyncio.sleep(0.5)
            assert not pending.done()
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            info = await asyncio.wait_for(vm.wait(), 10)
            assert time.monotonic() - killed < 2.0
            assert info.unexpected and "SIGKILL" in info.reason
            with pytest.raises(BridgeClosedError, match="SIGKILL"):
                await asyncio.wait_for(pending, 5)
            with pytest.raises(BridgeClosedError, match="SIGKILL"):
                await vm.bridge.dump_stacks(timeout=5)
            try:
                os.kill(pid, 0)
                raise AssertionError("qemu still running")
            except ProcessLookupError:
                pass
            assert not os.path.exists(system.paths.mux) and not os.path.exists(system.paths.qmp)
            assert mounts_under(system.state_dir) == []
            assert not os.path.exists(system.state_dir)
            assert share.is_dir()
        finally:
            await vm.terminate()

    asyncio.run(run())


def test_uvm_run_command_prints_output_and_exit_code() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hcsshim.cli.main", "uvm", "run", "--cmd", "echo from uvm run; exit 3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "from uvm run\n"
