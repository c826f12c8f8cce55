"""How many cores this process may use: what GRPC__WORKERS=auto starts one worker per."""

from __future__ import annotations

import math
import os
import pathlib

CGROUP_CPU_MAX = pathlib.Path("/sys/fs/cgroup/cpu.max")


def quota_cores(cpu_max: str) -> int | None:
    """Cores allowed by a cgroup v2 ``cpu.max`` line (``"200000 100000"`` -> 2), or None when unlimited."""
    fields = cpu_max.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def available_cores(cpu_max_path: pathlib.Path = CGROUP_CPU_MAX) -> int:
    """Return the cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (--cpus).

    os.cpu_count() alone would count every core of the host, and a container limited to 2 of 64 would then
    start 64 workers that share 2 cores' worth of time.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota = quota_cores(cpu_max_path.read_text())
    except OSError:
        quota = None
    return max(1, min(cores, quota) if quota else cores)
