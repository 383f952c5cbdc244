"""What a run ran on: recorded next to every result so it can be reproduced."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import sys
import threading
import time


def _mask_cores() -> int:
    """CPU cores of this process's affinity mask (e.g. under taskset or a container quota), without NCLAB_CORES."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask (e.g. under taskset or a container quota), at most
    ``NCLAB_CORES`` when set (a worker's share of the machine, given by the process that started it)."""
    cores = _mask_cores()
    cap = os.environ.get("NCLAB_CORES", "")
    if cap:
        try:
            n = int(cap)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"NCLAB_CORES must be a positive integer, got {cap!r}")
        cores = min(cores, n)
    return cores


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_WATCH_SECONDS = 0.2  # how often a worker checks that its parent process is still alive


def die_with_parent(parent_pid: int, *, pdeathsig: bool = True) -> None:
    """End this process (at once, like ``kill -9``) when the process ``parent_pid`` that started it ends, even
    by ``kill -9``: workers (a sweep's, simulate_batch's) must not outlive it and keep writing to its run folders.

    On Linux the kernel sends SIGKILL on the parent's death (PR_SET_PDEATHSIG); the parent may have died
    before that was set, hence the check of the parent pid after it; a daemon thread polls the parent pid too
    (the reparented process sees another parent), which also covers other POSIX systems. Interrupted runs
    resume from their last checkpoint, as after any crash.
    """
    if os.name != "posix":
        return
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent is already gone
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_WATCH_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="nclab-parent-watch", daemon=True).start()


def idle_cores(sample: float = 0.0) -> int:
    """Usable cores not busy with other work right now: cores - 1-minute load average, at least 1.

    ``sample`` > 0 (Linux): measured instead over the next ``sample`` seconds from /proc/stat while this process
    sleeps, so its own recent work does not count (a script that has computed for a minute adds ~1 to the load
    average, and would hide one of two cores from the workers it is about to start and wait for).

    Measured on a 2-core machine with two other jobs running: the cpu-mlp-balanced preset took 5.1 s with one
    thread and 22 s with two (threads fighting for busy cores); oversubscribing is far worse than idling a core.
    """
    # the other processes' load is taken from every CPU of the mask, then NCLAB_CORES caps what is left (a cap of
    # 2 on an 8-core machine with 2 cores busy elsewhere leaves this process its 2)
    cap = usable_cores()
    if sample > 0:
        busy = _busy_cores(sample)
        if busy is not None:
            return _idle(busy[1] - busy[0], cap)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return _idle(_mask_cores() - load, cap)


def _idle(free: float, cap: int) -> int:
    """Cores left free (a load estimate subtracted from the cores counted), rounded, between 1 and ``cap``."""
    return max(1, min(cap, int(free + 0.5)))


#: (monotonic seconds, total jiffies, idle jiffies, this process's CPU seconds, the idle cores found, the CPUs
#: counted, the affinity mask) at the last /proc/stat reading
_LAST_STAT: tuple | None = None
_REFRESH_SECONDS = 0.5  # fitted_threads measures the other processes' load over at least this interval


def _allowed_cpus() -> frozenset | None:
    """The CPUs of this process's affinity mask; None where the OS does not say."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _read_stat() -> tuple[int, int, int] | None:
    """(total, idle + iowait jiffies, cores) summed over the CPUs this process may run on (its affinity mask: on a
    shared node, other jobs' work on other cores does not count), from /proc/stat; None where unreadable."""
    allowed = _allowed_cpus()
    total = idle = cores = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu"):
                    break
                name, *fields = line.split()
                if name == "cpu" or (allowed is not None and int(name[3:]) not in allowed):
                    continue
                v = [int(t) for t in fields]
                total += sum(v[:8])  # guest time is inside user
                idle += v[3] + v[4]
                cores += 1
    except (OSError, ValueError, IndexError):
        return None
    return (total, idle, cores) if cores else None


def others_idle_cores() -> int:
    """Usable cores not busy with OTHER processes, without waiting: their load measured from /proc/stat since the
    previous call (this process's own CPU time subtracted), refreshed at most every 0.5 s; the first call, or
    where /proc/stat is unreadable, :func:`idle_cores` (the load average).

    Unlike the load average this does not count this process's own recent work, so a training script that
    computes metrics between its steps still sees the cores it is itself keeping busy as its own."""
    global _LAST_STAT
    now, own = time.monotonic(), time.process_time()
    last = _LAST_STAT
    if last is not None and now - last[0] < _REFRESH_SECONDS:
        return last[4]
    cpus = _allowed_cpus()
    stat = _read_stat()
    if stat is None:
        return idle_cores()
    cores = usable_cores()
    # first call, counters reset, or other CPUs than last time (even as many: sums of other CPUs are no delta)
    if last is None or stat[0] <= last[1] or stat[2] != last[5] or cpus != last[6]:
        idle = idle_cores()
    else:
        busy = (1 - (stat[1] - last[2]) / (stat[0] - last[1])) * stat[2]
        mine = (own - last[3]) / max(now - last[0], 1e-9)
        # idle CPUs of the mask, then capped: NCLAB_CORES limits this process, not the cores others may use
        idle = _idle(stat[2] - max(0.0, busy - mine), cores)
    _LAST_STAT = (now, stat[0], stat[1], own, idle, stat[2], cpus)
    return idle


# .depth > 0 inside pinned_threads(): fitted_threads changes nothing. Per Python thread, as torch's thread count
# is (OpenMP's setting is per OS thread): a trainer in one thread does not pin another thread's direct calls
_PINNED = threading.local()


@contextlib.contextmanager
def pinned_threads():
    """Inside: :func:`fitted_threads` leaves torch's threads alone. Trainers hold their own thread choice (made once
    per run, or ``--threads N``) across their metrics snapshots, so a run's rows do not depend on how busy the
    machine was at each snapshot (a thread count can change the last bits of a reduction)."""
    _PINNED.depth = getattr(_PINNED, "depth", 0) + 1
    try:
        yield
    finally:
        _PINNED.depth -= 1


@contextlib.contextmanager
def fitted_threads():
    """Torch's CPU threads cut to :func:`others_idle_cores` for the duration (never raised; restored after; unchanged
    inside :func:`pinned_threads`, i.e. inside a trainer).

    On a loaded CPU, threads beyond the idle cores wait at every parallel op for a core the scheduler gives to
    someone else: ``python benchmarks/metrics.py --loaded`` times nc_metrics on 50,000 x 512
    features while another process keeps a core busy, with fitted threads and with all of torch's."""
    import torch

    n = torch.get_num_threads()
    k = min(n, others_idle_cores()) if n > 1 and not getattr(_PINNED, "depth", 0) else n
    if k == n:
        yield
        return
    torch.set_num_threads(k)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _busy_cores(seconds: float) -> tuple[float, int] | None:
    """(cores busy with any process, cores counted) over the next ``seconds``, from /proc/stat (the CPUs of this
    process's affinity mask); None where it is unreadable."""
    a = _read_stat()
    time.sleep(seconds)
    b = _read_stat()
    if a is None or b is None or b[0] <= a[0] or a[2] != b[2]:
        return None
    return (1 - (b[1] - a[1]) / (b[0] - a[0])) * b[2], b[2]


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
