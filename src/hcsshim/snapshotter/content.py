"""Reading blobs from containerd's content store over its gRPC socket (what a proxy differ needs:
containerd hands it only the layer's descriptor)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped]

from hcsshim.api.containerd.services.content.v1 import content_pb2 as pb
from hcsshim.snapshotter.errors import Kind, SnapshotError

SERVICE = "/containerd.services.content.v1.Content/"
NAMESPACE_HEADER = "containerd-namespace"
DEFAULT_CONTAINERD_ADDRESS = "/run/containerd/containerd.sock"


class ContentSource(Protocol):
    def read(self, digest: str, namespace: str, sink: Callable[[bytes], None]) -> int:
        """Stream the blob into ``sink`` (blocking; a worker thread calls it); returns its size."""
        ...

    def close(self) -> None: ...


_KINDS = {
    grpc.StatusCode.NOT_FOUND: Kind.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: Kind.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION: Kind.FAILED_PRECONDITION,
}


class ContentClient:
    """containerd.services.content.v1.Content/Read on ``address`` (a unix socket path)."""

    def __init__(self, address: str, timeout: float = 600.0) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            f"unix:{address}", options=[("grpc.max_receive_message_length", 16 << 20)]
        )
        self._read: Any = self._channel.unary_stream(
            SERVICE + "Read",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.ReadContentResponse.FromString,
        )

    def read(self, digest: str, namespace: str, sink: Callable[[bytes], None]) -> int:
        req = pb.ReadContentRequest(digest=digest)
        offset = 0
        try:
            for resp in self._read(req, timeout=self.timeout, metadata=((NAMESPACE_HEADER, namespace),)):
                if resp.offset != offset:
                    raise SnapshotError(
                        Kind.INTERNAL, f"content {digest}: chunk at offset {resp.offset}, expected {offset}"
                    )
                sink(resp.data)
                offset += len(resp.data)
        except grpc.RpcError as e:
            kind = _KINDS.get(e.code(), Kind.INTERNAL)
            raise SnapshotError(
                kind, f"reading {digest} from containerd's content store ({self.address}): {e.details()}"
            ) from None
        return offset

    def close(self) -> None:
        self._channel.close()
