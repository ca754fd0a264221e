"""containerd.services.diff.v1.Diff over gRPC (grpc.aio): the lcow differ, served beside the snapshots
service on the daemon's socket. containerd's proxy forwards the caller's namespace as the
``containerd-namespace`` metadata; the differ reads the layer's blob in that namespace."""

from __future__ import annotations

import logging
from typing import Any

import grpc  # type: ignore[import-untyped]

from hcsshim.api.containerd.services.diff.v1 import diff_pb2 as pb
from hcsshim.api.containerd.types import descriptor_pb2
from hcsshim.snapshotter.content import NAMESPACE_HEADER
from hcsshim.snapshotter.core import Mount
from hcsshim.snapshotter.differ import Descriptor, Differ
from hcsshim.snapshotter.errors import SnapshotError
from hcsshim.snapshotter.service import CODES

log = logging.getLogger("hcsshim.snapshotter.diffservice")

SERVICE = "containerd.services.diff.v1.Diff"


def _namespace(context: Any) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == NAMESPACE_HEADER:
            return str(value)
    return ""


def _descriptor(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(
        media_type=d.media_type, digest=d.digest, size=d.size, annotations=d.annotations
    )


class DiffService:
    def __init__(self, differ: Differ) -> None:
        self.differ = differ

    async def _fail(self, context: Any, what: str, e: Exception) -> None:
        if isinstance(e, SnapshotError):
            log.info("%s failed: %s", what, e.message)
            await context.abort(CODES[e.kind], e.message)
        log.exception("%s failed", what)
        await context.abort(grpc.StatusCode.INTERNAL, f"{what}: {e}")

    async def Apply(self, req: pb.ApplyRequest, context: Any) -> pb.ApplyResponse:
        desc = Descriptor(req.diff.media_type, req.diff.digest, req.diff.size, dict(req.diff.annotations))
        mounts = [Mount(m.type, m.source, tuple(m.options)) for m in req.mounts]
        try:
            applied = await self.differ.apply(
                desc, mounts, namespace=_namespace(context), payloads=list(req.payloads)
            )
        except Exception as e:
            await self._fail(context, f"apply {desc.digest}", e)
            raise
        return pb.ApplyResponse(applied=_descriptor(applied))

    async def Diff(self, req: pb.DiffRequest, context: Any) -> pb.DiffResponse:
        try:
            await self.differ.diff()
        except Exception as e:
            await self._fail(context, "diff", e)
            raise

    def handler(self) -> Any:
        unary: dict[str, tuple[Any, Any]] = {
            "Apply": (self.Apply, pb.ApplyRequest),
            "Diff": (self.Diff, pb.DiffRequest),
        }
        methods = {
            name: grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=lambda m: m.SerializeToString()
            )
            for name, (fn, req) in unary.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)
