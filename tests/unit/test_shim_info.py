"""``<shim> -info`` for every shim binary: a serialized containerd.types.RuntimeInfo on stdout, the
options from stdin echoed, the runc features document, and a clear error for bad stdin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from hcsshim.api.containerd.runtimeoptions.v1 import api_pb2 as runtimeoptions_pb2
from hcsshim.api.containerd.types import introspection_pb2
from hcsshim.api.runhcs.options import runhcs_pb2
from hcsshim.shim import info
from hcsshim.shim.kind import PROCESS_V2, RUNHCS_V1

BIN = Path(sys.executable).parent
SHIMS = {"containerd-shim-runhcs-v1": RUNHCS_V1.runtime, "containerd-shim-process-v2": PROCESS_V2.runtime}


def _run(binary: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(BIN / binary), "-info"], input=stdin, capture_output=True, timeout=60)


def _decode(out: bytes) -> introspection_pb2.RuntimeInfo:
    result = introspection_pb2.RuntimeInfo()
    result.ParseFromString(out)
    return result


@pytest.mark.parametrize("binary", sorted(SHIMS))
def test_info_decodes_as_runtime_info_and_echoes_runhcs_options(binary: str) -> None:
    opts = runhcs_pb2.Options(debug=True, log_level="warning", vm_memory_size_in_mb=768)
    value = any_pb2.Any(type_url="containerd.runhcs.v1.Options", value=opts.SerializeToString())
    proc = _run(binary, value.SerializeToString())
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    result = _decode(proc.stdout)
    assert result.name == SHIMS[binary]
    assert result.version.version == info.package_version()
    assert result.options.type_url == "containerd.runhcs.v1.Options"
    echoed = runhcs_pb2.Options()
    echoed.ParseFromString(result.options.value)
    assert echoed == opts
    assert result.annotations[info.ANNOTATION_RUNTIME] == SHIMS[binary]
    if result.HasField("features"):
        assert result.features.type_url == info.FEATURES_TYPE_URL
        doc = json.loads(result.features.value)
        assert doc["ociVersionMin"].startswith("1.")
    else:
        assert result.annotations[info.ANNOTATION_FEATURES_SOURCE]


@pytest.mark.parametrize("binary", sorted(SHIMS))
def test_info_with_empty_stdin_has_no_options(binary: str) -> None:
    proc = _run(binary, b"")
    assert proc.returncode == 0, proc.stderr
    result = _decode(proc.stdout)
    assert result.name == SHIMS[binary]
    assert not result.HasField("options")


def test_info_echoes_cri_runtimeoptions_unchanged() -> None:
    # What CRI hands a custom runtime_type: containerd.runtimeoptions.v1.Options.
    opts = runtimeoptions_pb2.Options(type_url="x", config_path="/etc/hcsshim.toml")
    value = any_pb2.Any(type_url="containerd.runtimeoptions.v1.Options", value=opts.SerializeToString())
    result = _decode(info.runtime_info(RUNHCS_V1, value.SerializeToString(), boot_files="/nonexistent"))
    assert result.options == value


def test_info_names_bad_stdin() -> None:
    proc = _run("containerd-shim-runhcs-v1", b"\xff\xff\xff")
    assert proc.returncode == 1
    assert b"google.protobuf.Any" in proc.stderr
    assert proc.stdout == b""


def test_info_rejects_malformed_runhcs_options() -> None:
    value = any_pb2.Any(type_url="containerd.runhcs.v1.Options", value=b"\x0a\xff")
    with pytest.raises(info.InfoError, match=r"containerd\.runhcs\.v1\.Options"):
        info.runtime_info(RUNHCS_V1, value.SerializeToString(), boot_files="/nonexistent")


def test_uvm_features_omitted_when_the_image_runc_differs_with_fake_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"packages": {"runc": "0.0.1-fake"}}))
    result = _decode(info.runtime_info(RUNHCS_V1, b"", boot_files=str(tmp_path)))
    assert not result.HasField("features")
    assert "0.0.1-fake" in result.annotations[info.ANNOTATION_FEATURES_SOURCE]
