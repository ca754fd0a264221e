"""containerd 2.1 decodes our shims' ``-info``: its Introspection service runs ``<shim> -info`` (the call
CRI makes for every handler at start-up from 2.3 on) and ``ctr plugins inspect-runtime`` shows what it
decoded."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.containerd import Containerd, available, running_containerd

pytestmark = [pytest.mark.e2e, pytest.mark.root]

RUNTIMES = ("io.containerd.runhcs.v1", "io.containerd.lcow.v2", "io.containerd.process.v2")


@pytest.fixture(scope="module")
def containerd2() -> Iterator[Containerd]:
    reason = available("2.1")
    if reason is not None:
        pytest.fail(f"containerd 2.1: {reason} (run scripts/setup.sh)")
    with running_containerd(version="2.1") as c:
        yield c


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_containerd2_decodes_info_of_each_shim(containerd2: Containerd, runtime: str) -> None:
    proc = containerd2.ctr(
        "plugins", "inspect-runtime", "--runtime", runtime, "--runtime-config-path", "/etc/hcsshim/x.toml"
    )
    doc = json.loads(proc.stdout)
    assert doc["Name"] == runtime
    assert doc["Version"]["Version"]
    # The options containerd wrote on stdin came back through our RuntimeInfo.options.
    assert doc["Options"] == {"config_path": "/etc/hcsshim/x.toml"}
    assert doc["Features"]["ociVersionMin"].startswith("1.")
    assert doc["Annotations"]["io.github.hcsshim.runtime"] == runtime
    # lcow-v2 is the Sandbox API + Task v3 shim; the others answer start with version 2.
    expected_api = "3" if runtime == "io.containerd.lcow.v2" else "2"
    assert doc["Annotations"]["io.github.hcsshim.task-api-version"] == expected_api
