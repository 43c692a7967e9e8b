"""What bench reads about its servers in /proc (Linux).

CPU: utime+stime of every process of a server, plus cutime+cstime (children
that exited and were reaped count too: Postfix's daemons come and go under
master). Peak memory: VmHWM, reset before each run through /proc/PID/clear_refs.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
KTHREADD = "2"  # every kernel thread is its child


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the third on (after "(comm)", which may hold spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """root and its live descendants (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime+cutime+cstime (fields 14-17): a reaped child's time moves
    into its parent's cutime, so the sum over a tree never loses it."""
    ticks = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK


def others_cpu_seconds() -> float:
    """CPU time of every user-space process this benchmark did not start
    (another job on the box: noise). Kernel threads are left out: they carry
    our own loopback traffic. A process that exits is reaped by its parent,
    whose cutime takes its time over."""
    ours = set(process_tree(os.getpid()))
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        fields = _stat(int(entry.name))
        if fields is None or entry.name == KTHREADD or fields[1] == KTHREADD:
            continue
        ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK


def reset_peaks(pids: list[int]) -> None:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def steal_seconds() -> float:
    """CPU time the hypervisor gave other guests while this one wanted it
    (/proc/stat's steal, summed over CPUs): noise that no process of this
    machine shows, such as another virtual machine on the same host."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / CLK_TCK
