"""How many worker processes `corral edge` starts when --workers is not set: the CPUs it may
run on. That is its affinity mask (taskset, cpusets), capped by the CPU quota of its cgroup
(a container's CPU limit, `CPUQuota=` of a systemd unit), rounded up: a container limited to
1.5 CPUs on a 64-core node gets 2 workers, not 64."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cores(*, proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity on this platform
        cores = os.cpu_count() or 1
    quota = cpu_quota(proc_cgroup=proc_cgroup, root=root)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def cpu_quota(*, proc_cgroup: Path, root: Path) -> float | None:
    """The CPUs this process's cgroup may use (quota / period), None when unlimited or
    unknown: cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        relative = path.lstrip("/")
        if hierarchy == "0" and controllers == "":
            v2 = _read(root / relative / "cpu.max")
            if v2 is not None:
                limit, _, period = v2.partition(" ")
                return _ratio(limit, period)
        elif "cpu" in controllers.split(","):
            base = root / "cpu" / relative
            v1_quota, v1_period = (
                _read(base / "cpu.cfs_quota_us"),
                _read(base / "cpu.cfs_period_us"),
            )
            if v1_quota is not None and v1_period is not None:
                return _ratio(v1_quota, v1_period)
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ratio(limit: str, period: str) -> float | None:
    try:
        quota, every = int(limit), int(period)
    except ValueError:  # "max": no limit
        return None
    return quota / every if quota > 0 and every > 0 else None
