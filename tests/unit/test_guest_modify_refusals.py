"""The guest agent does what a request asks or answers E_NOTIMPL naming what it cannot do."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hcsshim import errdefs
from hcsshim.gcs.protocol import GcsError, Hresult
from hcsshim.guest.runtime import Host
from hcsshim.hvsock.abi import NULL_CONTAINER_ID


def _refused(host: Host, cid: str, request: dict[str, Any], named: str) -> None:
    with pytest.raises(GcsError, match=named) as info:
        asyncio.run(host.modify_settings(cid, request))
    assert info.value.result == Hresult.E_NOTIMPL
    assert errdefs.kind_of(info.value) is errdefs.Kind.NOT_IMPLEMENTED


@pytest.mark.parametrize(
    "rtype", ["PodCgroupMemoryLimit", "VPCIDevice", "SecurityPolicy", "HvSocket", "NetworkNamespace"]
)
def test_fake_host_refuses_a_uvm_modify_it_does_not_implement(tmp_path: Path, rtype: str) -> None:
    host = Host(str(tmp_path / "root"), "runc")
    _refused(host, NULL_CONTAINER_ID, {"ResourceType": rtype, "RequestType": "Update"}, f"{rtype}/Update")


def test_fake_host_refuses_windows_constraints_instead_of_dropping_them(tmp_path: Path) -> None:
    host = Host(str(tmp_path / "root"), "runc")
    request = {
        "ResourceType": "ContainerConstraints",
        "RequestType": "Update",
        "Settings": {"Windows": {"Cpu": {"Maximum": 5000}}, "Linux": {}},
    }
    _refused(host, "c1", request, r"ContainerConstraints \['Windows'\]")


def test_fake_host_refuses_a_property_type_it_cannot_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = Host(str(tmp_path / "root"), "runc")
    monkeypatch.setattr(host, "container", lambda cid: object())
    with pytest.raises(GcsError, match="property type 'GuestConnection' is not supported") as info:
        asyncio.run(host.get_properties("c1", {"PropertyTypes": ["GuestConnection"]}))
    assert info.value.result == Hresult.E_NOTIMPL
