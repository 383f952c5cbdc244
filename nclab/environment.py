"""What a run ran on: recorded next to every result so it can be reproduced."""

from __future__ import annotations

import os
import platform
import sys


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container quota)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def idle_cores() -> int:
    """Usable cores not busy with other work right now: cores - 1-minute load average, at least 1.

    Measured on a 2-core machine with two other jobs running: the cpu-mlp-balanced preset took 5.1 s with one
    thread and 22 s with two (threads fighting for busy cores); oversubscribing is far worse than idling a core.
    """
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


def choose_threads(requested: int, work: float, small: float = 1e7) -> int:
    """Torch CPU threads for a run: ``requested`` if > 0 (``--threads N``), else (``--threads 0``, the default)
    one thread when the work per step (about flops / 2) is at most ``small`` -- per-op overhead dominates there
    and a second thread only adds synchronization -- and otherwise the idle cores (:func:`idle_cores`)."""
    if requested:
        return int(requested)
    return 1 if work <= small else idle_cores()


def environment() -> dict:
    """Package versions, interpreter, OS and accelerator, as a JSON-ready dict."""
    import numpy
    import scipy
    import torch

    from nclab import __version__

    info = {
        "nclab": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
