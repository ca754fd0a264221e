"""A small grpcio client for containerd's CRI plugin (runtime.v1.RuntimeService).

The messages come from ``cri_v1.proto`` beside this file (a subset of the CRI API with upstream field
numbers), compiled with grpcio-tools into a cache directory the first time they are needed, so no
generated code is checked in for a test helper.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
import time
from types import ModuleType
from typing import Any

import grpc  # type: ignore[import-untyped]

PROTO = os.path.join(os.path.dirname(__file__), "cri_v1.proto")
SERVICE = "/runtime.v1.RuntimeService/"


@functools.cache
def api() -> ModuleType:
    """The compiled ``cri_v1_pb2`` module."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    # Compiled into a temporary directory that is gone once the module is loaded: nothing is left
    # behind and the generated code is never committed (the CRI protos are test-only).
    with tempfile.TemporaryDirectory(prefix="hcsshim-cri-") as out:
        code = protoc.main(["protoc", f"-I{os.path.dirname(PROTO)}", f"--python_out={out}", PROTO])
        if code != 0:
            raise RuntimeError(f"protoc failed on {PROTO} ({code})")
        spec = importlib.util.spec_from_file_location("cri_v1_pb2", os.path.join(out, "cri_v1_pb2.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


class CriClient:
    def __init__(self, address: str, timeout: float = 300.0) -> None:
        self.channel = grpc.insecure_channel(f"unix://{address}")
        self.timeout = timeout
        self.pb = api()

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request: Any, response_name: str) -> Any:
        response_type = getattr(self.pb, response_name)
        stub = self.channel.unary_unary(
            SERVICE + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        return stub(request, timeout=self.timeout)

    def sandbox_config(
        self,
        name: str,
        log_directory: str,
        host_network: bool = True,
        annotations: dict[str, str] | None = None,
    ) -> Any:
        pb = self.pb
        ns = pb.NamespaceOption(network=pb.NODE if host_network else pb.POD)
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default", attempt=0),
            hostname=name,
            log_directory=log_directory,
            annotations=annotations or {},
            linux=pb.LinuxPodSandboxConfig(
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=ns)
            ),
        )

    def run_pod_sandbox(self, config: Any, runtime_handler: str) -> str:
        req = self.pb.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return str(self.call("RunPodSandbox", req, "RunPodSandboxResponse").pod_sandbox_id)

    def create_container(
        self, pod_id: str, sandbox_config: Any, name: str, image: str, command: list[str], log_path: str
    ) -> str:
        pb = self.pb
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image=image),
            command=command,
            log_path=log_path,
        )
        req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox_config)
        return str(self.call("CreateContainer", req, "CreateContainerResponse").container_id)

    def start_container(self, container_id: str) -> None:
        self.call(
            "StartContainer",
            self.pb.StartContainerRequest(container_id=container_id),
            "StartContainerResponse",
        )

    def stop_container(self, container_id: str, timeout: int = 10) -> None:
        req = self.pb.StopContainerRequest(container_id=container_id, timeout=timeout)
        self.call("StopContainer", req, "StopContainerResponse")

    def remove_container(self, container_id: str) -> None:
        self.call(
            "RemoveContainer",
            self.pb.RemoveContainerRequest(container_id=container_id),
            "RemoveContainerResponse",
        )

    def container_status(self, container_id: str) -> Any:
        req = self.pb.ContainerStatusRequest(container_id=container_id)
        return self.call("ContainerStatus", req, "ContainerStatusResponse").status

    def wait_exited(self, container_id: str, timeout: float = 120.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            status = self.container_status(container_id)
            if status.state == self.pb.CONTAINER_EXITED or time.monotonic() > deadline:
                return status
            time.sleep(0.2)

    def stop_pod_sandbox(self, pod_id: str) -> None:
        self.call(
            "StopPodSandbox", self.pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), "StopPodSandboxResponse"
        )

    def remove_pod_sandbox(self, pod_id: str) -> None:
        req = self.pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
        self.call("RemovePodSandbox", req, "RemovePodSandboxResponse")
