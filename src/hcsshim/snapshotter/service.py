"""containerd.services.snapshots.v1.Snapshots over gRPC (grpc.aio), served from a unix socket.

The handlers run the snapshotter's blocking work (SQLite, file systems, mkfs, mount) in worker
threads, so the event loop only moves messages."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]
from google.protobuf import empty_pb2, timestamp_pb2

from hcsshim.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from hcsshim.api.containerd.types import mount_pb2
from hcsshim.snapshotter.core import Mount, Snapshotter
from hcsshim.snapshotter.errors import Kind as ErrKind
from hcsshim.snapshotter.errors import SnapshotError
from hcsshim.snapshotter.store import Record

log = logging.getLogger("hcsshim.snapshotter.service")

SERVICE = "containerd.services.snapshots.v1.Snapshots"
LIST_BATCH = 100

CODES = {
    ErrKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrKind.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrKind.NOT_IMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

T = TypeVar("T")


def _mounts(mounts: list[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options)) for m in mounts]


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def info(rec: Record) -> pb.Info:
    return pb.Info(
        name=rec.key,
        parent=rec.parent,
        kind=int(rec.kind),  # type: ignore[arg-type]
        created_at=_ts(rec.created_ns),
        updated_at=_ts(rec.updated_ns),
        labels=rec.labels,
    )


class SnapshotsService:
    def __init__(self, snapshotter: Snapshotter) -> None:
        self.sn = snapshotter

    async def _call(self, context: Any, what: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except SnapshotError as e:
            log.info("%s failed: %s", what, e.message)
            await context.abort(CODES[e.kind], e.message)
            raise  # abort raises; this keeps type checkers content
        except Exception as e:
            log.exception("%s failed", what)
            await context.abort(grpc.StatusCode.INTERNAL, f"{what}: {e}")
            raise

    async def Prepare(self, req: pb.PrepareSnapshotRequest, context: Any) -> pb.PrepareSnapshotResponse:
        mounts = await self._call(
            context, f"prepare {req.key}", lambda: self.sn.prepare(req.key, req.parent, dict(req.labels))
        )
        return pb.PrepareSnapshotResponse(mounts=_mounts(mounts))

    async def View(self, req: pb.ViewSnapshotRequest, context: Any) -> pb.ViewSnapshotResponse:
        mounts = await self._call(
            context, f"view {req.key}", lambda: self.sn.view(req.key, req.parent, dict(req.labels))
        )
        return pb.ViewSnapshotResponse(mounts=_mounts(mounts))

    async def Mounts(self, req: pb.MountsRequest, context: Any) -> pb.MountsResponse:
        mounts = await self._call(context, f"mounts {req.key}", lambda: self.sn.mounts(req.key))
        return pb.MountsResponse(mounts=_mounts(mounts))

    async def Commit(self, req: pb.CommitSnapshotRequest, context: Any) -> empty_pb2.Empty:
        await self._call(
            context, f"commit {req.key}", lambda: self.sn.commit(req.name, req.key, dict(req.labels))
        )
        return empty_pb2.Empty()

    async def Remove(self, req: pb.RemoveSnapshotRequest, context: Any) -> empty_pb2.Empty:
        await self._call(context, f"remove {req.key}", lambda: self.sn.remove(req.key))
        return empty_pb2.Empty()

    async def Stat(self, req: pb.StatSnapshotRequest, context: Any) -> pb.StatSnapshotResponse:
        rec = await self._call(context, f"stat {req.key}", lambda: self.sn.stat(req.key))
        return pb.StatSnapshotResponse(info=info(rec))

    async def Update(self, req: pb.UpdateSnapshotRequest, context: Any) -> pb.UpdateSnapshotResponse:
        paths = list(req.update_mask.paths)
        rec = await self._call(
            context,
            f"update {req.info.name}",
            lambda: self.sn.update(req.info.name, dict(req.info.labels), paths),
        )
        return pb.UpdateSnapshotResponse(info=info(rec))

    async def List(
        self, req: pb.ListSnapshotsRequest, context: Any
    ) -> AsyncIterator[pb.ListSnapshotsResponse]:
        records = await self._call(context, "list", lambda: self.sn.list(list(req.filters)))
        for i in range(0, len(records), LIST_BATCH):
            yield pb.ListSnapshotsResponse(info=[info(r) for r in records[i : i + LIST_BATCH]])

    async def Usage(self, req: pb.UsageRequest, context: Any) -> pb.UsageResponse:
        size, inodes = await self._call(context, f"usage {req.key}", lambda: self.sn.usage(req.key))
        return pb.UsageResponse(size=size, inodes=inodes)

    async def Cleanup(self, req: pb.CleanupRequest, context: Any) -> empty_pb2.Empty:
        await self._call(context, "cleanup", self.sn.cleanup)
        return empty_pb2.Empty()

    def handler(self) -> Any:
        unary: dict[str, tuple[Any, Any]] = {
            "Prepare": (self.Prepare, pb.PrepareSnapshotRequest),
            "View": (self.View, pb.ViewSnapshotRequest),
            "Mounts": (self.Mounts, pb.MountsRequest),
            "Commit": (self.Commit, pb.CommitSnapshotRequest),
            "Remove": (self.Remove, pb.RemoveSnapshotRequest),
            "Stat": (self.Stat, pb.StatSnapshotRequest),
            "Update": (self.Update, pb.UpdateSnapshotRequest),
            "Usage": (self.Usage, pb.UsageRequest),
            "Cleanup": (self.Cleanup, pb.CleanupRequest),
        }
        methods: dict[str, Any] = {
            name: grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=lambda m: m.SerializeToString()
            )
            for name, (fn, req) in unary.items()
        }
        methods["List"] = grpc.unary_stream_rpc_method_handler(
            self.List,
            request_deserializer=pb.ListSnapshotsRequest.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )
        return grpc.method_handlers_generic_handler(SERVICE, methods)


async def serve(snapshotter: Snapshotter, address: str, extra_handlers: Sequence[Any] = ()) -> Any:
    """Start a grpc.aio server on the unix socket `address` (a stale socket file is replaced), with
    the snapshots service and any ``extra_handlers`` (the lcow differ's)."""
    os.makedirs(os.path.dirname(os.path.abspath(address)), mode=0o711, exist_ok=True)
    if os.path.exists(address):
        os.unlink(address)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((SnapshotsService(snapshotter).handler(), *extra_handlers))
    if server.add_insecure_port(f"unix:{address}") == 0:
        raise OSError(f"cannot listen on unix:{address}")
    await server.start()
    os.chmod(address, 0o660)
    return server
