"""What the machine did during a bench: CPU time of processes and threads, how busy the CPUs
were, and the lines on the machine a report starts with."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from postfix_harness import postfix_version


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User plus system CPU time of a process so far (proc(5): fields 14 and 15 of stat), or
    of one of its threads."""
    stat = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far (proc(5): the cpu line of /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


def busy_since(before: tuple[int, int]) -> float:
    """How busy the machine was since before, in %: other jobs on it show here."""
    busy, total = cpu_ticks()
    return 100 * (busy - before[0]) / max(total - before[1], 1)


def tree_seconds(pid: int) -> float:
    """CPU time of a process and its descendants (the gateway's listener processes and
    signing helpers), those alive now."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return cpu_seconds(pid) + sum(tree_seconds(int(child)) for child in children)


def main_thread_seconds(pid: int) -> float:
    """CPU time of a process's first thread, the one that runs a daemon's event loop."""
    return cpu_seconds(pid, tid=pid)


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def filesystem(path: Path) -> str:
    """The type of the file system path lives on, from /proc/mounts (fsync cost depends on it)."""
    best = ("", "?")
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _dev, mount, fstype, *_ = line.split()
            inside = str(path).startswith(mount.rstrip("/") + "/") or str(path) == mount
            if inside and len(mount) > len(best[0]):
                best = (mount, fstype)
    return f"{best[1]} (mounted on {best[0]})"


def cpus() -> str:
    """The CPUs this process may use and their model, for the machine note of a bench."""
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
            platform.machine(),
        )
    return f"nproc: {len(os.sched_getaffinity(0))} ({cpu})"


def interpreter() -> str:
    """The Python the daemons run on and the file it runs from: its build matters (the same
    Python built without profile-guided optimisation needs 7-13% more CPU per message)."""
    return f"Python {platform.python_version()} ({os.path.realpath(sys.executable)})"


def machine(args: argparse.Namespace) -> list[str]:
    """The lines on the machine a report starts with: CPUs, kernel, Python, Postfix, disk."""
    return [
        cpus(),
        f"kernel: {platform.release()}, {interpreter()}, Postfix {postfix_version() or '?'}",
        f"work directory: {args.workdir}, {filesystem(Path(args.workdir).resolve())}",
    ]
