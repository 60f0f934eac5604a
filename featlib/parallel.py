"""How many single-threaded worker processes this machine can run at once, and a pool of them.

Small tensor operations (an SAE step at tiny widths: 1,024 × 256 × 2,048) use two threads poorly: on a
2-core machine two single-threaded processes train two SAEs in the time one process with both threads
trains about 1.6 of them. :func:`worker_count` is the most such processes that fit: no more than torch's
thread count (``torch.set_num_threads`` or ``OMP_NUM_THREADS`` lower it, and a pinned single-threaded run
stays one process), the CPUs this process may run on (its affinity set and a container's CPU quota, which
``os.cpu_count()`` ignores on Binder and Docker) and the memory available (a container's limit included).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_quota() -> float:
    """CPUs a container's quota allows (cgroup v2 ``cpu.max``, or v1 ``cfs_quota_us / cfs_period_us``); inf if none."""
    v2 = _read("/sys/fs/cgroup/cpu.max")
    if v2 and not v2.startswith("max"):
        quota, period = v2.split()[:2]
        return int(quota) / int(period)
    quota_v1, period_v1 = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    if quota_v1 and period_v1 and int(quota_v1) > 0:
        return int(quota_v1) / int(period_v1)
    return math.inf


def available_memory() -> float:
    """Bytes that can still be allocated: /proc/meminfo's MemAvailable, capped by a container's memory
    limit less what it uses (cgroup v2 or v1); inf where neither can be read (not Linux)."""
    free = math.inf
    meminfo = _read("/proc/meminfo")
    if meminfo:
        for line in meminfo.splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    for limit, used in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        lim, cur = _read(limit), _read(used)
        if lim and cur and lim.isdigit() and int(lim) < 2**60:
            free = min(free, int(lim) - int(cur))
    return free


def cpu_vendor() -> str:
    """The CPU's vendor as /proc/cpuinfo names it (``GenuineIntel``, ``AuthenticAMD``; ``unknown`` elsewhere): the
    pinned arithmetic gives the same bytes on CPUs of one vendor (MKL takes other code paths on others)."""
    text = _read("/proc/cpuinfo") or ""
    return next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("vendor_id")), "unknown"
    )


def _env_cpus() -> int | None:
    """``$FEATUNIV_CPUS`` as a positive number (None where unset or empty)."""
    value = os.environ.get("FEATUNIV_CPUS", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"FEATUNIV_CPUS={value!r} is not a positive whole number. Fix: set it to the number of cores "
            "to keep busy (e.g. FEATUNIV_CPUS=2), or unset it to follow torch's thread count."
        )
    return int(value)


def usable_cpus() -> int:
    """The CPUs this process may keep busy: torch's thread count (or ``$FEATUNIV_CPUS`` where set: the pinned
    arithmetic of ``make figures`` gives each process one thread and may still keep every core busy with
    single-threaded workers and kernels), its affinity set, a container's quota."""
    cpus = min(
        _env_cpus() or torch.get_num_threads(),
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        cpu_quota(),
    )
    return max(1, int(cpus))


def worker_count(n_jobs: int, bytes_per_worker: float) -> int:
    """How many single-threaded workers to run ``n_jobs`` jobs on (at least 1: then run them in-process)."""
    by_memory = available_memory() / bytes_per_worker
    return max(1, int(min(n_jobs, usable_cpus(), by_memory)))


def _single_threaded() -> None:
    torch.set_num_threads(1)


def pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` fresh single-threaded processes (spawned, not forked: a fork of a process that has run
    torch's thread pool can hang; the environment, the cache location and the CPU pins included, is inherited)."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_single_threaded)
