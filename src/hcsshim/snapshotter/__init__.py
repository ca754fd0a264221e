"""hcsshim.snapshotter: the ``lcow`` containerd snapshotter, a proxy plugin serving
containerd.services.snapshots.v1.Snapshots over gRPC. Committed layers are read-only ext4 VHDs, an
active container snapshot is a scratch VHD plus its parents (an ``lcow-layer`` mount)."""
