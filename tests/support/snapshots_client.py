"""A small gRPC client of containerd.services.snapshots.v1.Snapshots (what containerd's snapshot proxy
sends), for tests and benchmarks of the lcow snapshotter."""

from __future__ import annotations

from typing import Any

import grpc  # type: ignore[import-untyped]
from google.protobuf import empty_pb2

from hcsshim.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb

SERVICE = "/containerd.services.snapshots.v1.Snapshots/"


class SnapshotsClient:
    def __init__(self, address: str, snapshotter: str = "lcow") -> None:
        self.channel = grpc.aio.insecure_channel(f"unix:{address}")
        self.name = snapshotter

    def _unary(self, method: str, resp: Any) -> Any:
        return self.channel.unary_unary(
            SERVICE + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=resp.FromString,
        )

    async def prepare(self, key: str, parent: str = "", labels: dict[str, str] | None = None) -> list[Any]:
        req = pb.PrepareSnapshotRequest(snapshotter=self.name, key=key, parent=parent, labels=labels or {})
        resp = await self._unary("Prepare", pb.PrepareSnapshotResponse)(req, timeout=60)
        return list(resp.mounts)

    async def view(self, key: str, parent: str = "") -> list[Any]:
        req = pb.ViewSnapshotRequest(snapshotter=self.name, key=key, parent=parent)
        resp = await self._unary("View", pb.ViewSnapshotResponse)(req, timeout=60)
        return list(resp.mounts)

    async def mounts(self, key: str) -> list[Any]:
        resp = await self._unary("Mounts", pb.MountsResponse)(
            pb.MountsRequest(snapshotter=self.name, key=key), timeout=60
        )
        return list(resp.mounts)

    async def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None:
        req = pb.CommitSnapshotRequest(snapshotter=self.name, name=name, key=key, labels=labels or {})
        await self._unary("Commit", empty_pb2.Empty)(req, timeout=120)

    async def remove(self, key: str) -> None:
        await self._unary("Remove", empty_pb2.Empty)(
            pb.RemoveSnapshotRequest(snapshotter=self.name, key=key), timeout=60
        )

    async def stat(self, key: str) -> pb.Info:
        resp = await self._unary("Stat", pb.StatSnapshotResponse)(
            pb.StatSnapshotRequest(snapshotter=self.name, key=key), timeout=60
        )
        info: pb.Info = resp.info
        return info

    async def update(self, name: str, labels: dict[str, str], paths: list[str]) -> pb.Info:
        req = pb.UpdateSnapshotRequest(snapshotter=self.name, info=pb.Info(name=name, labels=labels))
        req.update_mask.paths.extend(paths)
        resp = await self._unary("Update", pb.UpdateSnapshotResponse)(req, timeout=60)
        info: pb.Info = resp.info
        return info

    async def list(self, filters: list[str] | None = None) -> list[pb.Info]:
        call = self.channel.unary_stream(
            SERVICE + "List",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.ListSnapshotsResponse.FromString,
        )
        out: list[pb.Info] = []
        async for resp in call(
            pb.ListSnapshotsRequest(snapshotter=self.name, filters=filters or []), timeout=60
        ):
            out.extend(resp.info)
        return out

    async def usage(self, key: str) -> tuple[int, int]:
        resp = await self._unary("Usage", pb.UsageResponse)(
            pb.UsageRequest(snapshotter=self.name, key=key), timeout=60
        )
        return int(resp.size), int(resp.inodes)

    async def cleanup(self) -> None:
        await self._unary("Cleanup", empty_pb2.Empty)(pb.CleanupRequest(snapshotter=self.name), timeout=60)

    async def close(self) -> None:
        await self.channel.close()
