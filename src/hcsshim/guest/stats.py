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


# memory.stat keys that are fields of containerd's cgroups v2 MemoryStat under the same name.
_V2_MEMORY_FIELDS = (
    "anon", "file", "kernel_stack", "slab", "sock", "shmem", "file_mapped", "file_dirty",
    "file_writeback", "anon_thp", "inactive_anon", "active_anon", "inactive_file", "active_file",
    "unevictable", "slab_reclaimable", "slab_unreclaimable", "pgfault", "pgmajfault",
    "workingset_refault", "workingset_activate", "workingset_nodereclaim", "pgrefill", "pgscan",
    "pgsteal", "pgactivate", "pgdeactivate", "pglazyfree", "pglazyfreed", "thp_fault_alloc",
    "thp_collapse_alloc",
)  # fmt: skip
_MAX_U64 = 2**64 - 1


def metrics_v2(cgroups_path: str, root: str = CGROUP_ROOT) -> dict[str, Any] | None:
    """containerd's cgroups v2 Metrics (JSON with proto field names), or None on a cgroup v1 system."""
    if not is_cgroup2(root):
        return None
    d = os.path.join(root, cgroups_path.strip("/"))
    mem_stat = _kv(os.path.join(d, "memory.stat"))
    cpu_stat = _kv(os.path.join(d, "cpu.stat"))
    memory: dict[str, int] = {k: mem_stat[k] for k in _V2_MEMORY_FIELDS if mem_stat.get(k, 0) > 0}
    memory["usage"] = _int(os.path.join(d, "memory.current")) or 0
    memory["usage_limit"] = _int(os.path.join(d, "memory.max")) or _MAX_U64
    memory["swap_usage"] = _int(os.path.join(d, "memory.swap.current")) or 0
    memory["swap_limit"] = _int(os.path.join(d, "memory.swap.max")) or _MAX_U64
    cpu_fields = ("usage_usec", "user_usec", "system_usec", "nr_periods", "nr_throttled", "throttled_usec")
    events = _kv(os.path.join(d, "memory.events"))
    return {
        "pids": {
            "current": _int(os.path.join(d, "pids.current")) or 0,
            "limit": _int(os.path.join(d, "pids.max")) or 0,
        },
        "cpu": {k: cpu_stat.get(k, 0) for k in cpu_fields},
        "memory": memory,
        "memory_events": {k: events.get(k, 0) for k in ("low", "high", "max", "oom", "oom_kill")},
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
