"""`hcsshim doc` end to end through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hcsshim.cli.doc import parse_options_text
from hcsshim.cli.main import main

GOLDEN = Path(__file__).parent.parent / "golden"


def _boot(tmp_path: Path) -> Path:
    boot = tmp_path / "boot"
    boot.mkdir()
    for name in ("kernel", "initrd.img", "rootfs.vhd"):
        (boot / name).write_bytes(b"x")
    return boot


def test_lcow_uvm_compact_matches_builder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    boot = _boot(tmp_path)
    options = tmp_path / "opts.txt"
    options.write_text('# runhcs options\nvm_memory_size_in_mb = 2048\nlog_level: "debug"\n')
    spec = GOLDEN / "ctr-run" / "config.json"
    rc = main(
        [
            "doc",
            "lcow-uvm",
            "--spec",
            str(spec),
            "--options",
            str(options),
            "--boot-files",
            str(boot),
            "--compact",
        ]
    )
    out = capsys.readouterr().out.strip()
    assert rc == 0
    doc = json.loads(out)
    assert doc["VirtualMachine"]["ComputeTopology"]["Memory"]["SizeInMB"] == 2048
    assert doc["VirtualMachine"]["Chipset"]["LinuxKernelDirect"]["KernelFilePath"] == f"{boot}/kernel"
    assert "-loglevel debug" in doc["VirtualMachine"]["Chipset"]["LinuxKernelDirect"]["KernelCmdLine"]
    assert "\n" not in out


def test_lcow_uvm_v2_indented_with_annotation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    boot = _boot(tmp_path)
    spec = GOLDEN / "ctr-run" / "config.json"
    rc = main(
        [
            *("doc", "lcow-uvm", "--pipeline", "v2", "--spec", str(spec), "--boot-files", str(boot)),
            *("--annotation", "io.microsoft.virtualmachine.computetopology.processor.count=1"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("{\n  ")
    assert json.loads(out)["VirtualMachine"]["ComputeTopology"]["Processor"] == {"Count": 1}


def test_bad_annotation_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = GOLDEN / "ctr-run" / "config.json"
    key = "io.microsoft.virtualmachine.computetopology.memory.sizeinmb"
    rc = main(
        ["doc", "lcow-uvm", "--spec", str(spec), "--boot-files", str(_boot(tmp_path)), "-a", f"{key}=16GB"]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert key in err and "'16GB'" in err


def test_lcow_container_and_wcow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = GOLDEN / "k8s-pod-sandbox" / "config.json"
    assert main(["doc", "lcow-container", "--spec", str(spec), "--id", "c9", "--compact"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["OciBundlePath"] == "/run/gcs/c/c9"
    assert main(["doc", "wcow-container", "--spec", str(spec), "--hyperv", "--compact"]) == 0
    assert json.loads(capsys.readouterr().out)["SchemaVersion"] == {"Major": 2, "Minor": 1}


def test_unknown_annotation_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = GOLDEN / "ctr-run" / "config.json"
    rc = main(
        [
            "doc",
            "lcow-container",
            "--spec",
            str(spec),
            "--warn-unknown",
            "-a",
            "io.microsoft.virtualmachine.typo=1",
        ]
    )
    assert rc == 0
    assert "unknown annotation io.microsoft.virtualmachine.typo" in capsys.readouterr().err


def test_options_parsing() -> None:
    assert parse_options_text('{"vm_processor_count": 4}') == {"vm_processor_count": 4}
    assert parse_options_text(
        "share_scratch = true\nsandbox_platform: linux/amd64\ndefault_container_annotations = a=b\n"
    ) == {
        "share_scratch": True,
        "sandbox_platform": "linux/amd64",
        "default_container_annotations": {"a": "b"},
    }


def test_unknown_option_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = tmp_path / "o.json"
    options.write_text('{"vm_memory": 1}')
    spec = GOLDEN / "ctr-run" / "config.json"
    assert main(["doc", "lcow-uvm", "--spec", str(spec), "--options", str(options)]) == 1
    assert "vm_memory" in capsys.readouterr().err
