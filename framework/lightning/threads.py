"""Torch's intra-op threads for a CPU run: the cores not already busy, unless told otherwise.

Torch starts one intra-op thread per core. On a machine whose cores are busy with other work
those threads wait on each other at every small op: one toy edit took 62 s with the default
against 0.75 s with one thread on a loaded 2-core runner, while on an idle one the default was
1.33x faster than one thread (benchmarks/cpu_threads.py measures both side by side). So the
default follows the load: all cores when the machine is idle, one when it is saturated.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from framework.core.errors import ConfigError

# Torch's own choice at start-up: one thread per physical core (or OMP_NUM_THREADS). The default never
# exceeds it: the load average counts logical CPUs, and hyper-threads add little to intra-op work.
_TORCH_THREADS = torch.get_num_threads()


def free_cores(cores: Optional[int] = None, load: Optional[float] = None) -> int:
    """Cores minus the 1-minute load average (the processes already running), at least 1."""
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):  # no load average on this platform: assume idle
            load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


def default_threads(cores: Optional[int] = None, load: Optional[float] = None) -> int:
    """Threads for a CPU run when none is set: OMP_NUM_THREADS if set, else the free cores (on this machine at
    most torch's start-up choice; `cores` given: that many cores, for what-ifs)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    free = free_cores(cores, load)
    return free if cores is not None else min(free, _TORCH_THREADS)


def apply_cpu_threads(threads: Optional[int], on_gpu: bool) -> Optional[int]:
    """Set torch's intra-op threads for this run and return them (None: left alone, a GPU run with no setting)."""
    if threads is not None and threads < 1:
        raise ConfigError(f"cpu_threads must be >= 1 or null (automatic), got {threads}.")
    if threads is None:
        if on_gpu:
            return None
        threads = default_threads()
    torch.set_num_threads(threads)
    return threads
