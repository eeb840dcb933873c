"""How many CPU threads the course's computations use, chosen for the machine.

PyTorch starts one thread per physical core it sees. On a laptop that is right; in a
container or on a shared teaching server it is not: the host's cores are visible while the
container may use only a share of them (a CPU quota), and a few busy threads per student on
a loaded machine slow everyone down many times over (threads wait on each other's cores).

:func:`available_cpus` counts what this process may really use: the CPUs it is allowed to
run on (its affinity) and, in a container, its CPU quota (cgroup v2 ``cpu.max`` or v1
``cpu.cfs_quota_us``). :func:`configure` sets PyTorch's thread count to that number, or to
the environment variable ``LEAKUTILS_THREADS`` when it is set (a teacher running many
kernels on one server sets it to 1). ``import leakutils`` calls :func:`configure` once.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

__all__ = ["ENV", "available_cpus", "configure"]

#: Environment variable that fixes the thread count (a positive integer).
ENV = "LEAKUTILS_THREADS"


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs granted by the cgroup quota (v2, then v1), or None when there is none."""
    try:
        v2 = (root / "cpu.max").read_text().split()
        if v2 and v2[0] != "max":
            return int(v2[0]) / int(v2[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cpus() -> int:
    """The number of CPUs this process can use: its affinity, capped by a container's quota.

    Returns
    -------
    int
        At least 1.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS and Windows have no affinity call
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def configure(threads: int | None = None) -> int:
    """Set PyTorch's intra-op thread count; return the number set.

    Parameters
    ----------
    threads : int, optional
        A positive count. Default: ``LEAKUTILS_THREADS`` when set, else
        :func:`available_cpus`, never more than PyTorch's own default (the physical cores).

    Raises
    ------
    ValueError
        ``threads`` (or ``LEAKUTILS_THREADS``) is not a positive integer; the message names it.
    """
    source = "threads"
    if threads is None and os.environ.get(ENV, "").strip():
        threads, source = os.environ[ENV].strip(), ENV
    if threads is None:
        threads = min(available_cpus(), torch.get_num_threads())
    try:
        n = int(threads)
    except (TypeError, ValueError):
        n = 0
    if isinstance(threads, bool) or n < 1 or str(n) != str(threads).strip():
        raise ValueError(f"{source} must be a positive integer number of threads, got {threads!r} "
                         f"(unset {ENV} to let leakutils choose from the machine's CPUs)")
    torch.set_num_threads(n)
    return n
