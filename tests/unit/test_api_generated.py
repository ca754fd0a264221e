"""The committed protobuf modules must equal a fresh generation, and carry the published numbers."""

from __future__ import annotations

import importlib
from pathlib import Path

from hcsshim.api import generate
from hcsshim.api.containerd.bootstrap.v1 import bootstrap_pb2
from hcsshim.api.containerd.events import task_pb2 as events_pb2
from hcsshim.api.containerd.services.ttrpc.events.v1 import events_pb2 as ttrpc_events_pb2
from hcsshim.api.containerd.task.v2 import shim_pb2 as shim_v2
from hcsshim.api.containerd.task.v3 import shim_pb2 as shim_v3
from hcsshim.api.ttrpc import request_pb2


def test_committed_generated_code_matches_fresh_generation(tmp_path: Path) -> None:
    fresh = generate.generate(tmp_path)
    committed = generate.generated_files(generate.SRC_DIR)
    assert fresh == committed, "generated file set differs: run `make generate`"
    for rel in fresh:
        new = (tmp_path / rel).read_bytes()
        old = (generate.SRC_DIR / rel).read_bytes()
        assert new == old, f"{rel} differs from a fresh generation: run `make generate`"


def test_every_generated_module_imports() -> None:
    for rel in generate.generated_files(generate.SRC_DIR):
        if rel.suffix == ".py":
            importlib.import_module(".".join(rel.with_suffix("").parts))


def test_task_services_have_all_17_rpcs() -> None:
    for module, package in ((shim_v2, "containerd.task.v2"), (shim_v3, "containerd.task.v3")):
        service = module.DESCRIPTOR.services_by_name["Task"]
        assert service.full_name == f"{package}.Task"
        assert len(service.methods) == 17


def test_reference_worked_example_request_bytes() -> None:
    # containerd-shim.md §1.10: Connect on the task service with the namespace metadata.
    payload = shim_v2.ConnectRequest(id="c1").SerializeToString()
    assert payload == bytes.fromhex("0a026331")
    req = request_pb2.Request(
        service="containerd.task.v2.Task",
        method="Connect",
        payload=payload,
        metadata=[request_pb2.KeyValue(key="containerd-namespace-ttrpc", value="default")],
    )
    raw = req.SerializeToString()
    assert raw.startswith(b"\x0a\x17containerd.task.v2.Task\x12\x07Connect\x1a\x04" + payload)
    assert raw.endswith(b"\x2a\x25\x0a\x1acontainerd-namespace-ttrpc\x12\x07default")


def test_full_names_used_as_type_urls() -> None:
    assert events_pb2.TaskExit.DESCRIPTOR.full_name == "containerd.events.TaskExit"
    assert (
        ttrpc_events_pb2.DESCRIPTOR.services_by_name["Events"].full_name
        == "containerd.services.events.ttrpc.v1.Events"
    )
    exit_fields = {f.name: f.number for f in events_pb2.TaskExit.DESCRIPTOR.fields}
    assert exit_fields == {"container_id": 1, "id": 2, "pid": 3, "exit_status": 4, "exited_at": 5}


def test_bootstrap_negative_log_level_is_ten_byte_varint() -> None:
    raw = bootstrap_pb2.BootstrapParams(log_level=bootstrap_pb2.LOG_LEVEL_DEBUG).SerializeToString()
    assert raw == bytes.fromhex("18fcffffffffffffffff01")
    params = bootstrap_pb2.BootstrapParams()
    assert not params.HasField("socket_dir")
