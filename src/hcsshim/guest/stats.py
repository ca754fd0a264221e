"""Container statistics from cgroups, shaped like containerd's cgroups v1 Metrics JSON (LCOWMetrics)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

CGROUP_ROOT = "/sys/fs/cgroup"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _int(path: str) -> int | None:
    text = _read(path)
    if text is None or text == "max":
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def _kv(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def is_cgroup2(root: str = CGROUP_ROOT) -> bool:
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def metrics(cgroups_path: str, root: str = CGROUP_ROOT) -> dict[str, Any]:
    rel = cgroups_path.strip("/")
    if is_cgroup2(root):
        return _metrics_v2(os.path.join(root, rel))
    return _metrics_v1(root, rel)


def _metrics_v2(d: str) -> dict[str, Any]:
    mem_stat = _kv(os.path.join(d, "memory.stat"))
    cpu_stat = _kv(os.path.join(d, "cpu.stat"))
    usage = _int(os.path.join(d, "memory.current")) or 0
    limit = _int(os.path.join(d, "memory.max"))
    memory: dict[str, Any] = {
        "usage": {"usage": usage, "limit": limit if limit is not None else 2**63 - 1},
        "rss": mem_stat.get("anon", 0),
        "cache": mem_stat.get("file", 0),
        "total_rss": mem_stat.get("anon", 0),
        "total_cache": mem_stat.get("file", 0),
    }
    peak = _int(os.path.join(d, "memory.peak"))
    if peak is not None:
        memory["usage"]["max"] = peak
    return {
        "pids": {
            "current": _int(os.path.join(d, "pids.current")) or 0,
            "limit": _int(os.path.join(d, "pids.max")) or 0,
        },
        "cpu": {
            "usage": {
                "total": cpu_stat.get("usage_usec", 0) * 1000,
                "user": cpu_stat.get("user_usec", 0) * 1000,
                "kernel": cpu_stat.get("system_usec", 0) * 1000,
            }
        },
        "memory": memory,
    }


def _metrics_v1(root: str, rel: str) -> dict[str, Any]:
    mem = os.path.join(root, "memory", rel)
    cpuacct = os.path.join(root, "cpuacct", rel)
    pids = os.path.join(root, "pids", rel)
    mem_stat = _kv(os.path.join(mem, "memory.stat"))
    ticks = os.sysconf("SC_CLK_TCK") or 100
    cpu_stat = _kv(os.path.join(cpuacct, "cpuacct.stat"))
    return {
        "pids": {
            "current": _int(os.path.join(pids, "pids.current")) or 0,
            "limit": _int(os.path.join(pids, "pids.max")) or 0,
        },
        "cpu": {
            "usage": {
                "total": _int(os.path.join(cpuacct, "cpuacct.usage")) or 0,
                "user": cpu_stat.get("user", 0) * 1_000_000_000 // ticks,
                "kernel": cpu_stat.get("system", 0) * 1_000_000_000 // ticks,
            }
        },
        "memory": {
            "usage": {
                "usage": _int(os.path.join(mem, "memory.usage_in_bytes")) or 0,
                "limit": _int(os.path.join(mem, "memory.limit_in_bytes")) or 0,
                "max": _int(os.path.join(mem, "memory.max_usage_in_bytes")) or 0,
            },
            "rss": mem_stat.get("rss", 0),
            "cache": mem_stat.get("cache", 0),
            "total_rss": mem_stat.get("total_rss", 0),
            "total_cache": mem_stat.get("total_cache", 0),
        },
    }


def remove_cgroup_dirs(cgroups_path: str, stop_at: str, root: str = CGROUP_ROOT) -> None:
    """Remove now-empty parent cgroups runc leaves behind (pods/<sid>), up to ``stop_at``."""
    rel = os.path.dirname(cgroups_path.strip("/"))
    stop = stop_at.strip("/")
    bases = [root] if is_cgroup2(root) else [os.path.join(root, c) for c in _v1_hierarchies(root)]
    while rel and rel != stop and rel.startswith(stop):
        for base in bases:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(base, rel))
        rel = os.path.dirname(rel)


def _v1_hierarchies(root: str) -> list[str]:
    try:
        return [e for e in os.listdir(root) if not os.path.islink(os.path.join(root, e))]
    except OSError:
        return []
