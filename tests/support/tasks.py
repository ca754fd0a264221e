"""A small grpcio client for containerd's Tasks service (containerd.services.tasks.v1), for what ``ctr``
cannot do: a ResizePty between Create and Start, and the pids Create and Start answer.

The messages come from ``tasks_v1.proto`` beside this file, compiled when first needed (as for CRI).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
from types import ModuleType
from typing import Any

import grpc  # type: ignore[import-untyped]

PROTO = os.path.join(os.path.dirname(__file__), "tasks_v1.proto")
SERVICE = "/containerd.services.tasks.v1.Tasks/"


@functools.cache
def api() -> ModuleType:
    from grpc_tools import protoc  # type: ignore[import-untyped]

    with tempfile.TemporaryDirectory(prefix="hcsshim-tasks-") as out:
        code = protoc.main(["protoc", f"-I{os.path.dirname(PROTO)}", f"--python_out={out}", PROTO])
        if code != 0:
            raise RuntimeError(f"protoc failed on {PROTO} ({code})")
        spec = importlib.util.spec_from_file_location("tasks_v1_pb2", os.path.join(out, "tasks_v1_pb2.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


class TasksClient:
    def __init__(self, address: str, namespace: str, timeout: float = 300.0) -> None:
        self.channel = grpc.insecure_channel(f"unix://{address}")
        self.namespace = namespace
        self.timeout = timeout
        self.pb = api()

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request: Any, response_name: str) -> Any:
        stub = self.channel.unary_unary(
            SERVICE + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=getattr(self.pb, response_name).FromString,
        )
        metadata = (("containerd-namespace", self.namespace),)
        return stub(request, timeout=self.timeout, metadata=metadata)

    def create(
        self, container_id: str, stdout: str, terminal: bool, options: tuple[str, bytes] | None = None
    ) -> int:
        """``options``: (type URL, serialized message) of the task options Any."""
        req = self.pb.CreateTaskRequest(container_id=container_id, stdout=stdout, terminal=terminal)
        if options is not None:
            req.options.type_url, req.options.value = options
        return int(self.call("Create", req, "CreateTaskResponse").pid)

    def resize_pty(self, container_id: str, width: int, height: int, exec_id: str = "") -> None:
        req = self.pb.ResizePtyRequest(container_id=container_id, exec_id=exec_id, width=width, height=height)
        self.call("ResizePty", req, "Empty")

    def start(self, container_id: str, exec_id: str = "") -> int:
        req = self.pb.StartRequest(container_id=container_id, exec_id=exec_id)
        return int(self.call("Start", req, "StartResponse").pid)

    def kill(self, container_id: str, signal: int, exec_id: str = "") -> None:
        req = self.pb.KillRequest(container_id=container_id, exec_id=exec_id, signal=signal)
        self.call("Kill", req, "Empty")

    def delete(self, container_id: str) -> Any:
        return self.call("Delete", self.pb.DeleteTaskRequest(container_id=container_id), "DeleteResponse")
