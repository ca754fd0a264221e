"""UVM templating below the VM: the clone wire format (property tests), the document fields, the
QEMU argv of a template and of a clone, the configuration key, and the store's pruning."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hcsshim.hcs.errors import ErrInvalidData, ErrNotSupported, HcsError
from hcsshim.hcs.qemu import template
from hcsshim.hcs.qemu.accel import QemuVersion
from hcsshim.hcs.qemu.cmdline import Paths, blockdev_args, build_argv
from hcsshim.hcs.qemu.config import (
    TEMPLATE_MEMORY_FILE,
    TEMPLATE_STATE_FILE,
    Disk,
    VmConfig,
    fixed_vhd_data_size,
    parse_document,
)
from hcsshim.hvsock import clone
from hcsshim.layers.vhd import append_footer_to_path
from hcsshim.uvm.template import COMPLETE_FILE, TemplateStore, create_uvm
from hcsshim.uvm.utility_vm import UtilityVM

identities = st.builds(
    clone.Identity,
    seed=st.binary(min_size=clone.SEED_BYTES, max_size=clone.SEED_BYTES),
    realtime_ns=st.integers(min_value=1, max_value=2**63 - 1),
    hostname=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}", fullmatch=True),
    machine_id=st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
)


@given(identities)
def test_identity_round_trips(identity: clone.Identity) -> None:
    data = clone.encode_identity(identity)
    assert data.endswith(b"\n")
    assert clone.decode_identity(data) == identity


@given(st.binary(max_size=512))
def test_garbage_identity_is_refused_with_the_protocol_error_only(data: bytes) -> None:
    try:
        identity = clone.decode_identity(data)
    except clone.CloneProtocolError:
        return
    assert clone.decode_identity(clone.encode_identity(identity)) == identity


@given(
    st.dictionaries(
        st.sampled_from(["seed", "realtime_ns", "hostname", "machine_id", "x"]),
        st.integers() | st.text(max_size=80),
    )
)
def test_wrong_identity_objects_are_refused_with_the_protocol_error_only(body: dict[str, Any]) -> None:
    try:
        identity = clone.decode_identity(json.dumps(body).encode())
    except clone.CloneProtocolError:
        return
    assert clone.decode_identity(clone.encode_identity(identity)) == identity


def test_identity_errors_name_the_field() -> None:
    good = clone.Identity(b"\0" * clone.SEED_BYTES, 1, "uvm", "0" * 32)
    body = json.loads(clone.encode_identity(good))
    with pytest.raises(clone.CloneProtocolError, match="machine_id"):
        clone.decode_identity(json.dumps({**body, "machine_id": "nothex"}).encode())
    with pytest.raises(clone.CloneProtocolError, match="seed must be 64 bytes"):
        clone.decode_identity(json.dumps({**body, "seed": "00"}).encode())
    with pytest.raises(clone.CloneProtocolError, match="hostname"):
        clone.decode_identity(json.dumps({**body, "hostname": "-bad name"}).encode())


@given(st.text(alphabet="0123456789abcdef", min_size=8, max_size=64))
def test_prepare_request_round_trips(nonce: str) -> None:
    assert clone.parse_prepare(clone.prepare_request(nonce)) == nonce


def test_prepare_request_rejects_other_request_types_and_bad_nonces() -> None:
    with pytest.raises(clone.CloneProtocolError, match="RequestType 'Remove'"):
        clone.parse_prepare({"ResourceType": clone.TEMPLATE_RESOURCE_TYPE, "RequestType": "Remove"})
    with pytest.raises(clone.CloneProtocolError, match="Nonce"):
        clone.parse_prepare({"RequestType": "Prepare", "Settings": {"Nonce": "XYZ"}})
    with pytest.raises(clone.CloneProtocolError):
        clone.prepare_request("short")


def test_ack_round_trips_and_garbage_is_refused() -> None:
    assert clone.decode_ack(clone.encode_ack()) == ""
    assert clone.decode_ack(clone.encode_ack("no entropy")) == "no entropy"
    with pytest.raises(clone.CloneProtocolError):
        clone.decode_ack(b"{}")
    with pytest.raises(clone.CloneProtocolError):
        clone.decode_ack(b"\xff")


# ---- documents and QEMU's argv -------------------------------------------------------------------


def _doc(tmp_path: Path, vm_extra: dict[str, Any] | None = None, memory_mb: int = 256) -> dict[str, Any]:
    kernel = tmp_path / "kernel"
    initrd = tmp_path / "initrd.img"
    for f in (kernel, initrd):
        if not f.exists():
            f.write_bytes(b"x")
    return {
        "Owner": "o",
        "VirtualMachine": {
            "Chipset": {"LinuxKernelDirect": {"KernelFilePath": str(kernel), "InitRdPath": str(initrd)}},
            "ComputeTopology": {"Memory": {"SizeInMB": memory_mb}, "Processor": {"Count": 2}},
            **(vm_extra or {}),
        },
    }


def _saved_template(tmp_path: Path) -> Path:
    d = tmp_path / "tpl"
    d.mkdir(exist_ok=True)
    (d / TEMPLATE_MEMORY_FILE).write_bytes(b"")
    (d / TEMPLATE_STATE_FILE).write_bytes(b"")
    return d


def _argv(cfg: VmConfig) -> list[str]:
    return build_argv("qemu-system-x86_64", "n", cfg, Paths("/q", "/m", "/c", "/p"), "tcg")


def test_template_source_maps_its_ram_shared_from_its_memory_file(tmp_path: Path) -> None:
    d = str(tmp_path / "new")
    cfg = parse_document(_doc(tmp_path, {"SaveableAsTemplate": {"SaveStateFilePath": d}}), "s")
    argv = _argv(cfg)
    assert f"memory-backend-file,id=pc.ram,size=256M,mem-path={d}/memory,share=on" in argv
    assert "pc,memory-backend=pc.ram" in argv
    assert "-incoming" not in argv


def test_clone_maps_the_template_read_only_copy_on_write_and_waits_for_its_state(tmp_path: Path) -> None:
    d = _saved_template(tmp_path)
    cfg = parse_document(_doc(tmp_path, {"RestoreState": {"SaveStateFilePath": str(d)}}), "s")
    argv = _argv(cfg)
    assert (
        f"memory-backend-file,id=pc.ram,size=256M,mem-path={d}/memory,share=off,readonly=on,rom=off" in argv
    )
    assert argv[argv.index("-incoming") + 1] == "defer"
    assert "-S" in argv  # restored paused, like a created VM


def test_plain_vm_has_anonymous_ram(tmp_path: Path) -> None:
    argv = _argv(parse_document(_doc(tmp_path), "s"))
    assert not any("memory-backend" in a for a in argv)
    assert "-incoming" not in argv


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"RestoreState": {"SaveStateFilePath": "/nonexistent/tpl"}}, "RestoreState.SaveStateFilePath"),
        ({"RestoreState": {"TemplateSystemId": "x"}}, "RestoreState.SaveStateFilePath"),
        ({"SaveableAsTemplate": {"SaveStateFilePath": "relative"}}, "SaveableAsTemplate.SaveStateFilePath"),
        ({"SaveableAsTemplate": {"SaveStateFilePath": 3}}, "SaveableAsTemplate.SaveStateFilePath"),
    ],
)
def test_bad_template_fields_name_the_field(tmp_path: Path, extra: dict[str, Any], field: str) -> None:
    with pytest.raises(ErrInvalidData, match=field):
        parse_document(_doc(tmp_path, extra), "s")


def test_a_clone_cannot_be_a_template_source_too(tmp_path: Path) -> None:
    d = _saved_template(tmp_path)
    extra = {
        "RestoreState": {"SaveStateFilePath": str(d)},
        "SaveableAsTemplate": {"SaveStateFilePath": str(d)},
    }
    with pytest.raises(ErrInvalidData, match="cannot also be saved"):
        parse_document(_doc(tmp_path, extra), "s")


def test_save_options_are_checked(tmp_path: Path) -> None:
    plain = parse_document(_doc(tmp_path), "s")
    with pytest.raises(ErrNotSupported, match="SaveType 'ToFile'"):
        template.check_save_options({"SaveType": "ToFile"}, plain, "s")
    with pytest.raises(ErrNotSupported, match="not created SaveableAsTemplate"):
        template.check_save_options({"SaveType": "AsTemplate"}, plain, "s")
    d = str(tmp_path / "t")
    source = parse_document(_doc(tmp_path, {"SaveableAsTemplate": {"SaveStateFilePath": d}}), "s")
    template.check_save_options({"SaveType": "AsTemplate", "SaveStateFilePath": d}, source, "s")
    with pytest.raises(ErrInvalidData, match="SaveStateFilePath"):
        template.check_save_options({"SaveType": "AsTemplate", "SaveStateFilePath": "/else"}, source, "s")


def test_templates_need_qemu_8_2() -> None:
    assert template.supported(QemuVersion((10, 0, 2), "QEMU emulator version 10.0.2"))[0]
    ok, why = template.supported(QemuVersion((7, 2, 22), "QEMU emulator version 7.2.22"))
    assert not ok and "8.2" in why


def test_a_fixed_vhd_is_read_raw_without_its_footer_so_it_can_be_migrated(tmp_path: Path) -> None:
    vhd = tmp_path / "d.vhd"
    vhd.write_bytes(b"\0" * (1 << 20))
    append_footer_to_path(str(vhd))
    assert fixed_vhd_data_size(str(vhd)) == 1 << 20
    args = blockdev_args(0, 1, Disk(str(vhd), True, fixed_vhd_data_size(str(vhd))))
    assert (args["driver"], args["offset"], args["size"]) == ("raw", 0, 1 << 20)
    plain = tmp_path / "plain.img"
    plain.write_bytes(b"\0" * 4096)
    assert fixed_vhd_data_size(str(plain)) is None
    assert blockdev_args(0, 1, Disk(str(plain), True))["driver"] == "vpc"


# ---- the configuration key ----------------------------------------------------------------------


V10 = QemuVersion((10, 0, 2), "QEMU emulator version 10.0.2")


def _key(cfg: VmConfig) -> str:
    return template.fingerprint(cfg, "qemu-system-x86_64", "tcg,thread=multi", V10)


def test_key_ignores_per_instance_names_and_paths(tmp_path: Path) -> None:
    cfg = parse_document(_doc(tmp_path), "a")
    other = dataclasses.replace(cfg, owner="someone-else")
    source = dataclasses.replace(cfg, template_dir="/x")
    assert _key(cfg) == _key(other) == _key(source)


def test_key_changes_with_memory_cpus_kernel_file_and_qemu(tmp_path: Path) -> None:
    cfg = parse_document(_doc(tmp_path), "a")
    base = _key(cfg)
    assert _key(dataclasses.replace(cfg, memory_mb=512)) != base
    assert _key(dataclasses.replace(cfg, cpus=1)) != base
    assert (
        template.fingerprint(cfg, "qemu-system-x86_64", "tcg,thread=multi", QemuVersion((10, 1), "10.1"))
        != base
    )
    st_ = os.stat(cfg.kernel)
    os.utime(cfg.kernel, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))
    assert _key(cfg) != base


def test_store_prunes_templates_whose_files_changed_and_keeps_the_others(tmp_path: Path) -> None:
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"k")
    st_ = kernel.stat()
    store = TemplateStore(str(tmp_path / "store"))
    for name, files in (
        ("fresh", [[str(kernel), st_.st_size, st_.st_mtime_ns]]),
        ("stale", [[str(kernel), 99, 1]]),
    ):
        d = tmp_path / "store" / name
        d.mkdir(parents=True)
        (d / COMPLETE_FILE).write_text(json.dumps({"key": name, "files": files}))
    (tmp_path / "store" / "half-built.build-1").mkdir()
    assert store.prune_stale() == ["stale"]
    assert sorted(e["key"] for e in store.list()) == ["fresh"]
    assert store.complete("fresh") and not store.complete("stale")


def test_a_failed_build_is_remembered_for_a_while_then_tried_again_with_a_fake_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from hcsshim.uvm import template as uvm_template
    from hcsshim.uvm.errors import UvmError

    builds: list[str] = []

    async def failing_build(self: TemplateStore, key: str, doc: dict[str, Any]) -> None:
        builds.append(key)
        raise UvmError("t", "save_as_template", "the agent did not report ready")

    monkeypatch.setattr(TemplateStore, "_build", failing_build)
    store = TemplateStore(str(tmp_path))
    for _ in range(2):
        with pytest.raises(uvm_template.TemplateUnavailable, match="did not report ready"):
            asyncio.run(store.ensure("k1", {}))
    assert builds == ["k1"]  # the second UVM did not pay for the same failing build
    marker = tmp_path / f"k1{uvm_template.FAILED_SUFFIX}"
    old = time.time() - uvm_template.FAILED_RETRY_AFTER - 1
    os.utime(marker, (old, old))
    with pytest.raises(uvm_template.TemplateUnavailable):
        asyncio.run(store.ensure("k1", {}))
    assert builds == ["k1", "k1"]


def test_store_keeps_only_the_most_recently_used_templates(tmp_path: Path) -> None:
    store = TemplateStore(str(tmp_path))
    for n in range(4):
        d = tmp_path / f"t{n}"
        d.mkdir()
        (d / COMPLETE_FILE).write_text(json.dumps({"key": f"t{n}", "files": []}))
        os.utime(d / COMPLETE_FILE, (1000 + n, 1000 + n))
    assert sorted(store.prune_stale(keep=2)) == ["t0", "t1"]
    assert sorted(e["key"] for e in store.list()) == ["t2", "t3"]


def test_agent_prepares_as_a_template_only_without_containers_with_a_fake_host() -> None:
    import asyncio
    import socket

    from hcsshim import hvsock
    from hcsshim.gcs.bridge import BridgeClient
    from hcsshim.guest.server import BridgeServer

    class FakeHost:
        session: Any = None
        notify: Any = None
        notify_oom: Any = None
        network: Any = None

        def __init__(self) -> None:
            self.containers: dict[str, object] = {}

    async def main() -> None:
        a, b = socket.socketpair()
        ra, wa = await asyncio.open_connection(sock=a)
        rb, wb = await asyncio.open_connection(sock=b)
        host_side = hvsock.MuxSession(hvsock.StreamTransport(ra, wa), hvsock.Role.HOST).start()
        guest_side = hvsock.MuxSession(hvsock.StreamTransport(rb, wb), hvsock.Role.GUEST).start()
        fake = FakeHost()
        server = BridgeServer(fake, guest_side)  # type: ignore[arg-type]
        task = asyncio.create_task(server.serve_forever(redial_delay=0.01))
        client = await BridgeClient.connect(host_side, timeout=5)
        try:
            fake.containers["c1"] = object()
            with pytest.raises(Exception, match=r"1 container\(s\) exist"):
                await client.modify_settings(clone.prepare_request("ab" * 8))
            assert server.template_nonce is None
            with pytest.raises(Exception, match="RequestType 'Remove'"):
                await client.modify_settings(
                    {"ResourceType": clone.TEMPLATE_RESOURCE_TYPE, "RequestType": "Remove"}
                )
            fake.containers.clear()
            await client.modify_settings(clone.prepare_request("ab" * 8))
            assert server.template_nonce == "ab" * 8
        finally:
            await client.close()
            task.cancel()
            await guest_side.aclose()
            await host_side.aclose()

    asyncio.run(main())


def test_template_cli_lists_and_prunes_a_fake_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hcsshim.cli.main import main as cli_main

    monkeypatch.setenv("HCSSHIM_RUN_DIR", str(tmp_path / "run"))  # prune also sweeps the warm pool

    root = tmp_path / "templates"
    for name in ("aaaa", "bbbb"):
        d = root / name
        d.mkdir(parents=True)
        (d / "memory").write_bytes(b"\0" * 8192)
        (d / COMPLETE_FILE).write_text(json.dumps({"key": name, "files": []}))
    assert cli_main(["uvm", "template", "--root", str(root), "list"]) == 0
    out = capsys.readouterr().out
    assert "aaaa" in out and "bbbb" in out and "MiB on disk" in out
    os.utime(root / "aaaa" / COMPLETE_FILE, (1, 1))
    assert cli_main(["uvm", "template", "--root", str(root), "prune", "--keep", "1"]) == 0
    assert capsys.readouterr().out.strip() == "removed aaaa"
    assert cli_main(["uvm", "template", "--root", str(root), "prune", "--all"]) == 0
    assert capsys.readouterr().out.strip() == "removed bbbb"
    assert cli_main(["uvm", "template", "--root", str(root), "list"]) == 0
    assert "no uvm templates" in capsys.readouterr().out


def test_a_failed_restore_boots_cold_instead_of_failing_the_pod_with_fake_store_and_vm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created: list[str] = []
    cold_vm = cast(UtilityVM, object())

    class PrunedStore(TemplateStore):
        async def clone(self, uvm_id: str, document: Any, *, pool: Any = None) -> UtilityVM:
            raise HcsError("CreateComputeSystem", f"{uvm_id}@vm", "template memory file is gone (pruned)")

    async def cold(uvm_id: str, document: Any = None) -> UtilityVM:
        created.append(uvm_id)
        return cold_vm

    monkeypatch.setattr(UtilityVM, "create", staticmethod(cold))
    store = PrunedStore("/nonexistent")
    vm = asyncio.run(create_uvm("pod-x", {"VirtualMachine": {}}, templates=True, store=store))
    assert vm is cold_vm and created == ["pod-x"]
