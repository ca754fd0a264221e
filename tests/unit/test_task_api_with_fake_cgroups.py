"""Stats and ShimCgroup pieces against fake cgroup trees (the e2e tests drive them through containerd)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hcsshim.api.cgroups.v1 import metrics_pb2 as cgroups_v1
from hcsshim.api.cgroups.v2 import metrics_pb2 as cgroups_v2
from hcsshim.gcs import protocol as p
from hcsshim.guest import stats
from hcsshim.shim import cgroup
from hcsshim.shim.stats import container_metrics


def _fake_v2_cgroup(root: Path, rel: str) -> None:
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    d = root / rel
    d.mkdir(parents=True)
    (d / "memory.current").write_text("8192\n")
    (d / "memory.max").write_text("max\n")
    (d / "memory.stat").write_text("anon 4096\nfile 1024\ninactive_file 512\n")
    (d / "cpu.stat").write_text("usage_usec 77\nuser_usec 50\nsystem_usec 27\n")
    (d / "pids.current").write_text("3\n")
    (d / "memory.events").write_text("oom 0\noom_kill 1\n")


def test_fake_v2_cgroup_becomes_containerds_v2_metrics(tmp_path: Path) -> None:
    _fake_v2_cgroup(tmp_path, "pods/p/c")
    props = {
        "LCOWMetrics": stats.metrics("/pods/p/c", str(tmp_path)),
        p.CGROUP_V2_METRICS_KEY: stats.metrics_v2("/pods/p/c", str(tmp_path)),
    }
    packed = container_metrics(props)
    assert packed.type_url == "io.containerd.cgroups.v2.Metrics"
    m = cgroups_v2.Metrics.FromString(packed.value)
    assert (m.memory.usage, m.memory.inactive_file, m.cpu.usage_usec, m.pids.current) == (8192, 512, 77, 3)
    assert m.memory.usage_limit == 2**64 - 1
    assert m.memory_events.oom_kill == 1


def test_fake_v1_host_gets_containerds_v1_metrics(tmp_path: Path) -> None:
    assert stats.metrics_v2("/c", str(tmp_path)) is None  # no cgroup.controllers: a v1 system
    packed = container_metrics({"LCOWMetrics": {"memory": {"usage": {"usage": 5}}}})
    assert packed.type_url == "io.containerd.cgroups.v1.Metrics"
    assert cgroups_v1.Metrics.FromString(packed.value).memory.usage.usage == 5


def test_shim_cgroup_joins_every_fake_v1_hierarchy_that_has_it(tmp_path: Path) -> None:
    for hierarchy in ("memory", "pids"):
        (tmp_path / hierarchy / "shims").mkdir(parents=True)
    (tmp_path / "cpu").mkdir()
    joined = cgroup.join("/shims", 4242, str(tmp_path))
    assert sorted(joined) == [str(tmp_path / "memory" / "shims"), str(tmp_path / "pids" / "shims")]
    assert (tmp_path / "memory" / "shims" / "cgroup.procs").read_text() == "4242"


def test_shim_cgroup_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(cgroup.ShimCgroupError, match="no such cgroup"):
        cgroup.join("/missing", 1, str(tmp_path))
    with pytest.raises(cgroup.ShimCgroupError, match="absolute"):
        cgroup.join("relative", 1, str(tmp_path))
