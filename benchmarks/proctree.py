"""Memory and CPU of a process and all its descendants, from ``/proc`` (Linux).

The service decodes in worker processes (``service/decode_pool.py``: a forkserver and its
workers, plus multiprocessing's resource tracker), so its memory is the sum over the
tree, not the server process's own RSS. No psutil: the serving install has none.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """``pid`` and every live descendant (``/proc/<pid>/task/*/children``, breadth first)."""
    out: list[int] = []
    todo, seen = [pid], set()
    while todo and len(out) < 4096:  # bounded: a fork bomb must not hang the sampler
        current = todo.pop(0)
        if current in seen:
            continue
        seen.add(current)
        out.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                text = Path(f"/proc/{current}/task/{task}/children").read_text()
            except OSError:
                continue
            todo.extend(int(c) for c in text.split())
    return out


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cpu_s(pid: int, reaped: bool = False) -> float:
    """utime + stime of ``pid`` in seconds (+ its reaped children's with ``reaped``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # after the ")" of comm: field 3 (state) is index 0, so utime (14) is index 11
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def _label(pid: int) -> str:
    """What the process is: its command line, shortened (the decode workers, the
    forkserver and the resource tracker are all ``python``)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    for marker in ("forkserver", "resource_tracker", "spawn_main", "-m service"):
        if marker in text:
            return marker
    return text[-60:]


def schedstat_s(pid: int) -> tuple[float, float]:
    """``(on_cpu_s, runqueue_wait_s)`` summed over ``pid``'s live threads
    (``/proc/<pid>/task/*/schedstat``): the wait is time the threads were ready to run
    while another process had the CPU, i.e. what the neighbours cost it."""
    on_cpu = wait = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0, 0.0
    for task in tasks:
        try:
            fields = Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()
            on_cpu, wait = on_cpu + int(fields[0]), wait + int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
    return on_cpu / 1e9, wait / 1e9


def sample_tree(pid: int, t0: float) -> dict[str, Any]:
    """One memory/CPU sample of ``pid``'s tree; RSS and PSS in MiB, CPU in seconds."""
    pids = descendants(pid)
    rss = {p: _status_kib(p, "VmRSS") for p in pids}
    sched = [schedstat_s(p) for p in [os.getpid(), *pids]]
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return {
        "t_s": round(time.monotonic() - t0, 2),
        "rss_mib": round(sum(rss.values()) / 1024, 2),
        "rss_server_mib": round(rss.get(pid, 0) / 1024, 2),
        "pss_mib": round(sum(_pss_kib(p) for p in pids) / 1024, 2),
        "processes": [
            {"pid": p, "what": _label(p), "rss_mib": round(rss[p] / 1024, 1)} for p in pids
        ],
        "server_threads": _status_kib(pid, "Threads"),
        "server_fds": fds,
        "cpu_s": round(_cpu_s(pid, reaped=True) + sum(_cpu_s(p) for p in pids[1:]), 2),
        "driver_cpu_s": round(sum(os.times()[:2]), 2),
        # this process (the load driver) and the tree: on-CPU and runqueue-wait seconds
        "sched_s": [round(sum(x), 3) for x in zip(*sched, strict=True)],
    }
