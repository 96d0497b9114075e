"""What a measurement depends on: the CPUs this process may use, the CPU model, and the
torch / Python / device versions printed with every benchmark table and demo report."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

__all__ = ["available_cpus", "cpu_model", "environment"]


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one).

    Example:
        >>> available_cpus() >= 1
        True
    """
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux), else the machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def environment() -> dict[str, str]:
    """torch and Python versions, CPU model, cores, torch threads and device.

    Example:
        >>> sorted(environment())
        ['cores', 'cpu', 'device', 'python', 'threads', 'torch']
    """
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": str(available_cpus()),
        "threads": str(torch.get_num_threads()),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
