"""The default number of edge workers (edge/cores.py): the affinity mask capped by a cgroup
CPU quota, read from files laid out as cgroup v2 and v1 lay them out."""

from __future__ import annotations

import os
from pathlib import Path

from edge.cores import cpu_quota, usable_cores


def layout(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A /proc/self/cgroup file and a cgroup tree under tmp_path."""
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_cgroup)
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return proc, root


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    """cpu.max of the process's own cgroup: quota/period, 'max' is no limit."""
    proc, root = layout(tmp_path, "0::/system.slice/edge.service\n", {
        "system.slice/edge.service/cpu.max": "150000 100000\n",
        "cpu.max": "max 100000\n",
    })  # fmt: skip
    assert cpu_quota(proc_cgroup=proc, root=root) == 1.5
    assert usable_cores(proc_cgroup=proc, root=root) == min(2, len(os.sched_getaffinity(0)))
    proc.write_text("0::/\n")
    assert cpu_quota(proc_cgroup=proc, root=root) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    """cpu.cfs_quota_us / cpu.cfs_period_us under the cpu hierarchy; -1 is no limit."""
    proc, root = layout(tmp_path, "4:memory:/x\n2:cpu,cpuacct:/pod7\n0::/\n", {
        "cpu/pod7/cpu.cfs_quota_us": "50000\n",
        "cpu/pod7/cpu.cfs_period_us": "100000\n",
    })  # fmt: skip
    assert cpu_quota(proc_cgroup=proc, root=root) == 0.5
    assert usable_cores(proc_cgroup=proc, root=root) == 1
    (root / "cpu/pod7/cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(proc_cgroup=proc, root=root) is None


def test_no_cgroup_is_the_affinity_mask(tmp_path: Path) -> None:
    """Without cgroup files the count is the CPUs this process may run on."""
    missing = tmp_path / "none"
    assert usable_cores(proc_cgroup=missing, root=missing) == len(os.sched_getaffinity(0))
