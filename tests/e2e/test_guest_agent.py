"""The guest agent on this host with real runc, driven through the mux and the BridgeClient."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hcsshim.gcs import protocol as p
from hcsshim.gcs.bridge import BridgeError
from tests.support.guest import (
    RUNC,
    GuestAgent,
    container_document,
    make_busybox_rootfs,
    oci_spec,
    read_all,
    remove_cgroup_parent,
    start_guest_agent,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not os.path.exists(RUNC), reason="needs runc"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static"),
    pytest.mark.timeout(180),
]

Scenario = Callable[[GuestAgent, Path], Awaitable[None]]


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [ln.split()[4] for ln in f if ln.split()[4].startswith(str(path))]


def run_scenario(tmp_path: Path, scenario: Scenario, extra_args: tuple[str, ...] = ()) -> None:
    """Start an agent, run ``scenario``, stop the agent and prove nothing was left behind."""
    work = tmp_path / "gcs"
    work.mkdir()
    cgroup_parent = ""
    stray_cgroups: list[str] = []

    async def main() -> GuestAgent:
        nonlocal cgroup_parent
        agent = await start_guest_agent(str(work), extra_args=extra_args)
        cgroup_parent = agent.cgroup_parent
        try:
            await scenario(agent, work)
        finally:
            code = await agent.stop()
            assert code == 0, (work / "agent.log").read_text()
        return agent

    try:
        agent = asyncio.run(main())
    finally:
        if cgroup_parent:
            # Only the parent the test chose may remain, and it must hold no container cgroups.
            stray_cgroups = remove_cgroup_parent(cgroup_parent)
    assert stray_cgroups == []
    listed = subprocess.run(
        [RUNC, "--root", os.path.join(agent.root, "runc"), "list", "-q"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert listed.stdout.strip() == "", f"stray runc containers: {listed.stdout}"
    assert _mounts_under(work) == []
    assert agent.process.returncode == 0
    shutil.rmtree(work)
    assert not work.exists()


def _bundle(work: Path, name: str) -> str:
    bundle = work / name
    make_busybox_rootfs(str(bundle / "rootfs"))
    return str(bundle)


STDIO_OUT = {"CreateStdOutPipe": True, "CreateStdErrPipe": True}


def test_busybox_container_stdout_exit_code_and_notification(tmp_path: Path) -> None:
    async def scenario(agent: GuestAgent, work: Path) -> None:
        c = agent.client
        spec = oci_spec(["sh", "-c", "echo hello from busybox; echo oops >&2; exit 3"])
        await c.create_container("c1", container_document(_bundle(work, "c1"), spec))
        await c.start_container("c1")
        proc = await c.execute_process("c1", STDIO_OUT)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = await asyncio.gather(read_all(proc.stdout), read_all(proc.stderr))
        assert out == b"hello from busybox\n"
        assert err == b"oops\n"
        assert await c.wait_process("c1", proc.pid) == 3
        note = await agent.next_notification("c1")
        assert note["Type"] == "UnexpectedExit" and note["Result"] == 0
        await c.delete_container_state("c1")
        assert not (work / "c1" / "config.json").exists()

    run_scenario(tmp_path, scenario)


def test_exec_stdin_round_trip_signal_and_wait(tmp_path: Path) -> None:
    async def scenario(agent: GuestAgent, work: Path) -> None:
        c = agent.client
        init = ["sh", "-c", 'trap "exit 7" TERM; while true; do sleep 0.1; done']
        await c.create_container("c2", container_document(_bundle(work, "c2"), oci_spec(init)))
        init_proc = await c.execute_process("c2", {})
        cat = await c.execute_process(
            "c2",
            {
                "OciProcess": {"args": ["cat"], "env": ["PATH=/bin"], "cwd": "/"},
                "CreateStdInPipe": True,
                **STDIO_OUT,
            },
        )
        assert cat.stdin is not None and cat.stdout is not None
        payload = os.urandom(300_000)
        await cat.stdin.write(payload)
        cat.stdin.close_write()
        assert await read_all(cat.stdout) == payload
        assert await c.wait_process("c2", cat.pid) == 0

        await c.signal_process("c2", init_proc.pid, signal.SIGTERM)
        assert await c.wait_process("c2", init_proc.pid) == 7
        note = await agent.next_notification("c2")
        assert note["Type"] == "GracefulExit"
        await c.delete_container_state("c2")

    run_scenario(tmp_path, scenario)


def test_tty_resize_seen_by_stty(tmp_path: Path) -> None:
    async def scenario(agent: GuestAgent, work: Path) -> None:
        c = agent.client
        await c.create_container("c3", container_document(_bundle(work, "c3"), oci_spec(["sleep", "1000"])))
        await c.execute_process("c3", {})
        proc = await c.execute_process(
            "c3",
            {
                "OciProcess": {
                    "args": ["sh", "-c", "read x; stty size"],
                    "env": ["PATH=/bin"],
                    "cwd": "/",
                    "terminal": True,
                },
                "CreateStdInPipe": True,
                "CreateStdOutPipe": True,
                "EmulateConsole": True,
            },
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is None
        await c.resize_console("c3", proc.pid, 37, 101)
        await proc.stdin.write(b"go\n")
        out = await read_all(proc.stdout)
        assert b"37 101" in out, out
        assert await c.wait_process("c3", proc.pid) == 0
        with pytest.raises(BridgeError):
            await c.resize_console("c3", 999999, 1, 1)
        await c.shutdown_forced("c3")
        assert (await agent.next_notification("c3"))["Type"] == "ForcedExit"
        await c.delete_container_state("c3")

    run_scenario(tmp_path, scenario)


def test_process_list_and_memory_stats(tmp_path: Path) -> None:
    async def scenario(agent: GuestAgent, work: Path) -> None:
        c = agent.client
        await c.create_container("c4", container_document(_bundle(work, "c4"), oci_spec(["sleep", "1000"])))
        init = await c.execute_process("c4", {})
        second = await c.execute_process("c4", {"OciProcess": {"args": ["/bin/sleep", "999"], "cwd": "/"}})
        props = await c.get_properties("c4", ["ProcessList", "Statistics"])
        pids = {entry["ProcessId"] for entry in props["ProcessList"]}
        assert {init.pid, second.pid} <= pids
        metrics = props["LCOWMetrics"]
        assert metrics["memory"]["usage"]["usage"] > 0
        assert "cpu" in metrics
        await c.update_container("c4", {"memory": {"limit": 200 * 1024 * 1024}})
        limits = (await c.get_properties("c4", ["Statistics"]))["LCOWMetrics"]["memory"]["usage"]["limit"]
        assert limits == 200 * 1024 * 1024
        await c.signal_process("c4", second.pid, signal.SIGKILL)
        assert await c.wait_process("c4", second.pid) == 128 + signal.SIGKILL
        await c.shutdown_graceful("c4")
        await c.shutdown_forced("c4")
        await agent.next_notification("c4")
        await c.delete_container_state("c4")

    run_scenario(tmp_path, scenario)


def test_pod_containers_share_network_namespace(tmp_path: Path) -> None:
    async def scenario(agent: GuestAgent, work: Path) -> None:
        c = agent.client
        sandbox_ann = {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "pod1"}
        sandbox_spec = oci_spec(["sleep", "1000"], annotations=sandbox_ann, hostname="podhost")
        await c.create_container("pod1", container_document(_bundle(work, "pod1"), sandbox_spec))
        await c.execute_process("pod1", {})
        probe = "; ".join(
            [
                "readlink /proc/self/ns/net",
                "hostname",
                "cat /etc/hostname",
                "grep -c podhost /etc/hosts",
                "ls -d /dev/shm",
            ]
        )
        sb_exec = await c.execute_process(
            "pod1",
            {"OciProcess": {"args": ["/bin/sh", "-c", probe], "env": ["PATH=/bin"], "cwd": "/"}, **STDIO_OUT},
        )
        assert sb_exec.stdout is not None
        sandbox_view = (await read_all(sb_exec.stdout)).decode().split()
        await c.wait_process("pod1", sb_exec.pid)

        work_ann = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod1"}
        await c.create_container(
            "app1",
            container_document(_bundle(work, "app1"), oci_spec(["sh", "-c", probe], annotations=work_ann)),
        )
        app = await c.execute_process("app1", STDIO_OUT)
        assert app.stdout is not None
        app_view = (await read_all(app.stdout)).decode().split()
        assert await c.wait_process("app1", app.pid) == 0
        assert sandbox_view[0].startswith("net:[")
        assert app_view == sandbox_view
        assert app_view[1:3] == ["podhost", "podhost"]
        with pytest.raises(BridgeError, match="still has containers"):
            await c.delete_container_state("pod1")
        await c.delete_container_state("app1")
        await c.shutdown_forced("pod1")
        await c.delete_container_state("pod1")

    run_scenario(tmp_path, scenario)


def test_overlay_of_two_layers_and_scratch_keeps_layers_untouched(tmp_path: Path) -> None:
    async def scenario(agent: GuestAgent, work: Path) -> None:
        c = agent.client
        base = make_busybox_rootfs(str(work / "layer-base"))
        top = work / "layer-top"
        (top / "data").mkdir(parents=True)
        (top / "data" / "a.txt").write_text("from layer\n")
        before = {str(p_): p_.stat().st_mtime_ns for p_ in work.glob("layer-*/**/*")}
        bundle = work / "ov"
        rootfs = bundle / "rootfs"
        scratch = work / "scratch"
        layers = {
            "ResourceType": "CombinedLayers",
            "RequestType": "Add",
            "Settings": {
                "ContainerID": "ov",
                "ContainerRootPath": str(rootfs),
                "Layers": [{"Path": str(top)}, {"Path": base}],
                "ScratchPath": str(scratch),
            },
        }
        await c.modify_settings(layers)
        script = (
            "cat /data/a.txt; echo changed > /data/a.txt; echo new > /created; cat /data/a.txt; rm /bin/ls"
        )
        await c.create_container("ov", container_document(str(bundle), oci_spec(["sh", "-c", script])))
        proc = await c.execute_process("ov", STDIO_OUT)
        assert proc.stdout is not None
        assert await read_all(proc.stdout) == b"from layer\nchanged\n"
        assert await c.wait_process("ov", proc.pid) == 0
        await c.delete_container_state("ov")
        await c.modify_settings({**layers, "RequestType": "Remove"})
        assert _mounts_under(work) == []
        assert (top / "data" / "a.txt").read_text() == "from layer\n"
        assert os.path.lexists(os.path.join(base, "bin", "ls"))
        assert not (Path(base) / "created").exists()
        after = {str(p_): p_.stat().st_mtime_ns for p_ in work.glob("layer-*/**/*")}
        assert after == before
        assert (scratch / "upper" / "created").read_text() == "new\n"

    run_scenario(tmp_path, scenario)


def test_garbage_unknown_messages_and_rejected_spec_leave_agent_serving(tmp_path: Path) -> None:
    async def scenario(agent: GuestAgent, work: Path) -> None:
        c = agent.client
        resp = await c.request_raw(p.request_type(p.Rpc.CREATE), b"{not json", operation="garbage body")
        assert resp["Result"] == p.Hresult.VMCOMPUTE_INVALID_JSON and resp["ErrorMessage"]
        resp = await c.request_raw(p.request_type(p.Rpc.CREATE), b"\xff\xfe[]", operation="binary body")
        assert resp["Result"] == p.Hresult.VMCOMPUTE_INVALID_JSON
        resp = await c.request_raw(p.MsgType.REQUEST | 0x00109901, p.request_base(), operation="unknown type")
        assert resp["Result"] == p.Hresult.VMCOMPUTE_UNKNOWN_MESSAGE
        bad = oci_spec(["true"])
        bad["linux"]["namespaces"].append({"type": "bogus"})
        with pytest.raises(BridgeError, match="runc create failed") as info:
            await c.create_container("bad", container_document(_bundle(work, "bad"), bad))
        assert info.value.records and info.value.result == p.Hresult.E_FAIL
        with pytest.raises(BridgeError, match="not found"):
            await c.execute_process("nope", {})
        assert "task" in await c.dump_stacks()
        with pytest.raises(BridgeError, match="unsupported modify request Bogus/Add") as unsupported:
            await c.modify_settings({"ResourceType": "Bogus", "RequestType": "Add", "Settings": {}})
        assert unsupported.value.result == p.Hresult.E_NOTIMPL

        # A container survives the bridge losing framing: the agent answers the bad header, drops
        # the bridge and dials again.
        await c.create_container(
            "keep", container_document(_bundle(work, "keep"), oci_spec(["sleep", "1000"]))
        )
        await c.execute_process("keep", {})
        await c.channel.write(p.HEADER.pack(p.request_type(p.Rpc.DUMP_STACKS), 0xFFFFFF, 77))
        for _ in range(100):
            if c.closed:
                break
            await asyncio.sleep(0.05)
        assert c.closed
        c2 = await agent.reconnect()
        props = await c2.get_properties("keep", ["ProcessList"])
        assert len(props["ProcessList"]) == 1
        await c2.shutdown_forced("keep")
        assert (await agent.next_notification("keep"))["Type"] == "ForcedExit"
        await c2.delete_container_state("keep")

    run_scenario(tmp_path, scenario)


@pytest.mark.skipif(
    not shutil.which("losetup") or not shutil.which("mkfs.ext4"), reason="needs losetup, mkfs.ext4"
)
def test_scsi_disk_by_controller_and_lun_mount_unmount_and_eject(tmp_path: Path) -> None:
    """A loop device stands in for the SCSI disk; a fake sysfs tree places it at controller 1, LUN 2
    exactly where the qemu backend's virtio-scsi controller would (docs/CONTRACTS.md)."""
    content = tmp_path / "content"
    content.mkdir()
    (content / "hello.txt").write_text("from the disk\n")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(image)], check=True)
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=True)
    dev = loop.stdout.strip()
    sysfs = tmp_path / "fake-sysfs"
    lun_dir = sysfs / "sys/bus/pci/devices/0000:00:11.0/virtio4/host1/target1:0:0/1:0:0:2"
    block_dir = lun_dir / "block" / os.path.basename(dev)
    block_dir.mkdir(parents=True)
    # The agent waits for a non-zero size before it mounts (a hot-added disk can exist before it opens).
    real_size = Path("/sys/block", os.path.basename(dev), "size").read_text()
    (block_dir / "size").write_text(real_size)

    async def scenario(agent: GuestAgent, work: Path) -> None:
        c = agent.client
        mount_path = work / "mounts" / "scsi" / "1_2_0"
        disk = {"MountPath": str(mount_path), "Controller": 1, "Lun": 2, "ReadOnly": True}
        await c.modify_settings({"ResourceType": "MappedVirtualDisk", "RequestType": "Add", "Settings": disk})
        assert (mount_path / "hello.txt").read_text() == "from the disk\n"
        with pytest.raises(OSError):
            (mount_path / "new").write_text("x")  # mounted read-only
        await c.modify_settings(
            {"ResourceType": "MappedVirtualDisk", "RequestType": "Remove", "Settings": disk}
        )
        assert _mounts_under(work) == []
        await c.modify_settings(
            {"ResourceType": "SCSIDevice", "RequestType": "Remove", "Settings": {"Controller": 1, "Lun": 2}}
        )
        assert (lun_dir / "delete").read_text() == "1"

    try:
        run_scenario(tmp_path, scenario, extra_args=("--sysfs-root", str(sysfs)))
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_memory_limited_container_oom_kill_is_notified_before_its_exit(tmp_path: Path) -> None:
    async def scenario(agent: GuestAgent, work: Path) -> None:
        c = agent.client
        assert c.oom_notifications  # the agent advertised them and the client asked for them
        spec = oci_spec(["sh", "-c", "echo started; tail /dev/zero"])
        spec["linux"].setdefault("resources", {})["memory"] = {"limit": 16 << 20}
        await c.create_container("c-oom", container_document(_bundle(work, "c-oom"), spec))
        proc = await c.execute_process("c-oom", STDIO_OUT)
        assert proc.stdout is not None
        assert await read_all(proc.stdout, timeout=60) == b"started\n"
        assert await c.wait_process("c-oom", proc.pid) == 128 + signal.SIGKILL
        oom = await agent.next_notification("c-oom")
        assert oom["Type"] == "OomKilled", oom
        assert p.parse_any_in_string(oom["ResultInfo"], "ResultInfo")["OomKills"] >= 1
        assert (await agent.next_notification("c-oom"))["Type"] == "UnexpectedExit"
        await c.delete_container_state("c-oom")

    run_scenario(tmp_path, scenario)


def test_oom_kill_of_one_process_is_notified_while_the_container_runs(tmp_path: Path) -> None:
    async def scenario(agent: GuestAgent, work: Path) -> None:
        c = agent.client
        spec = oci_spec(["sh", "-c", "tail /dev/zero; echo survived; sleep 1000"])
        spec["linux"].setdefault("resources", {})["memory"] = {"limit": 16 << 20}
        await c.create_container("c-oom2", container_document(_bundle(work, "c-oom2"), spec))
        proc = await c.execute_process("c-oom2", STDIO_OUT)
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.read(), 60) == b"survived\n"  # the shell lives on
        oom = await agent.next_notification("c-oom2")  # reported by the live watcher, not at exit
        assert oom["Type"] == "OomKilled", oom
        await c.shutdown_forced("c-oom2")
        assert await c.wait_process("c-oom2", proc.pid) == 128 + signal.SIGKILL
        assert (await agent.next_notification("c-oom2"))["Type"] == "ForcedExit"
        await c.delete_container_state("c-oom2")

    run_scenario(tmp_path, scenario)
