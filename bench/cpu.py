"""CPU accounting from /proc: every process's ticks, a process tree's seconds, the machine's busy seconds."""

from __future__ import annotations

import os


def proc_snapshot() -> dict[int, tuple[int, int, int]]:
    """Read every process's parent, own CPU ticks (utime+stime) and its reaped children's (cutime+cstime)."""
    out: dict[int, tuple[int, int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            continue  # it exited while we looked
        fields = text[text.rindex(")") + 2 :].split()
        out[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    return out


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, every state but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def tree_seconds(root: int | None, snap: dict[int, tuple[int, int, int]]) -> float:
    """CPU seconds of a process and all its descendants, including children they have reaped."""
    if root is None or root not in snap:
        return 0.0
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in snap.items():
        children.setdefault(ppid, []).append(pid)
    ticks, todo = 0, [root]
    while todo:
        pid = todo.pop()
        ticks += snap[pid][1] + snap[pid][2]
        todo += children.get(pid, [])
    return ticks / os.sysconf("SC_CLK_TCK")
