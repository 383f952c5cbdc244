"""Machine resources: a memory budget that refuses a computation that cannot fit *before* allocating it (with the
memory it needs), and BLAS threads for solvers of many small products (:class:`single_thread_blas`).

The budget is 80 % of the memory available now (``MemAvailable`` of /proc/meminfo, a cgroup limit where
one is set, else the physical memory reported by ``os.sysconf``). ``NCLAB_MEMORY_LIMIT`` (bytes, or
with a suffix K, M, G, T: ``NCLAB_MEMORY_LIMIT=2G``) replaces the measured value, e.g. for tests.
"""

from __future__ import annotations

import os

#: fraction of the available memory one computation may take
FRACTION = 0.8
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _parse_bytes(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in "KMGT" else ""
    try:
        value = float(t[: len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"NCLAB_MEMORY_LIMIT must be a number of bytes (e.g. 2G), got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"NCLAB_MEMORY_LIMIT must be a positive number of bytes, got {text!r}")
    return int(value)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text)
    except (OSError, ValueError):
        return None


def available_memory() -> int:
    """Bytes of memory this process can still allocate (best effort, see the module docstring)."""
    env = os.environ.get("NCLAB_MEMORY_LIMIT")
    if env:
        return _parse_bytes(env)
    known = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    known.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        known.append(max(limit - used, 0))
    if not known:
        try:
            known.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            known.append(8 * 2**30)
    return int(min(known))


def format_bytes(n: float) -> str:
    """``1.5 GiB`` style (binary units), for messages."""
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"  # pragma: no cover


def check_memory(nbytes: float, what: str, advice: str = "") -> None:
    """Raise one ValueError if ``nbytes`` exceed the budget: what needs how much, and what is there."""
    budget = FRACTION * available_memory()
    if nbytes > budget:
        raise ValueError(
            f"{what} would need about {format_bytes(nbytes)} of memory, more than the {format_bytes(budget)} "
            f"this machine can give ({FRACTION:.0%} of the available memory)" + (f"; {advice}" if advice else "")
        )


# BLAS threads: the CE solvers multiply small matrices thousands of times; on a loaded machine OpenBLAS's
# threads spin against each other (K = 100 took 25 s instead of 0.7 s on 2 shared cores), so the
# solvers run single-threaded and restores the previous setting (what threadpoolctl does, without it)
_BLAS_SYMBOLS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
                 ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
                 ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
                 ("openblas_set_num_threads", "openblas_get_num_threads"))


def _blas_controls() -> list:
    out = []
    try:
        import ctypes

        with open("/proc/self/maps") as fh:
            paths = sorted({ln.split()[-1] for ln in fh if "openblas" in ln.lower() and ln.split()[-1].startswith("/")})
        for path in paths:
            lib = ctypes.CDLL(path)
            for setter, getter in _BLAS_SYMBOLS:
                if hasattr(lib, setter) and hasattr(lib, getter):
                    out.append((getattr(lib, setter), getattr(lib, getter)))
                    break
    except (OSError, ValueError, AttributeError):
        return []
    return out


class single_thread_blas:
    """Context manager: OpenBLAS (numpy's and scipy's) on one thread inside, the previous counts restored."""

    def __enter__(self):
        self.saved = []
        for setter, getter in _blas_controls():
            try:
                self.saved.append((setter, int(getter())))
                setter(1)
            except (OSError, ValueError, TypeError):
                pass
        return self

    def __exit__(self, *exc):
        for setter, n in self.saved:
            try:
                setter(n)
            except (OSError, ValueError, TypeError):
                pass
        return False
