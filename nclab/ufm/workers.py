""":func:`nclab.ufm.batched.simulate_batch` across worker processes: each trains a share of the runs as one batch.

A batched step of small runs is bound by one core's per-op overhead and cache, so the other cores are idle unless
the runs are split between processes (``python benchmarks/simulate.py --no-single`` against ``--workers 1``
measures the gain; threads in one process do not help: the GIL serializes the small ops).

Workers are plain subprocesses (``python -m nclab._worker JOB RESULT PARENT_PID``), not multiprocessing:
nothing of the caller's ``__main__`` is re-imported, so a script without an ``if __name__ == "__main__"`` guard,
a notebook and the CLI all work. Each worker opens, locks and writes its runs' folders exactly as a one-process
call would (same files, rows and checkpoints; each run's iterates do not depend on which runs share its
batch beyond round-off). Workers get their own session (a terminal's Ctrl-C reaches only the caller), die
with the caller (even ``kill -9``: they resume from their checkpoints), and get ``NCLAB_CORES`` = their share
of the idle cores, so their thread choice does not oversubscribe the machine.

Ctrl-C in the caller is forwarded once to every worker: each stops at its next snapshot, checkpointed, as a
single run does; then KeyboardInterrupt is raised. A second Ctrl-C interrupts the workers at once (each still
checkpoints its last good snapshot); a third kills them.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Sequence

#: below this estimated one-process time (seconds), workers=0 keeps one process: starting a worker (an
#: interpreter importing torch) costs about a second or two
WORKER_MIN_SECONDS = 10.0
#: runs per worker, at least (fewer: the batch's per-op overhead is no longer shared)
MIN_SHARE = 4


def estimated_seconds(configs: Sequence, steps: Sequence[int] | None = None) -> float:
    """A rough one-process time of SGD/Adam runs: per run-step ~3 ns per parameter plus ~5 us of op overhead
    (fitted to benchmarks/simulate.py's paper runs and benchmarks/phase_empirical.py's grid on this machine);
    ``steps``: the steps per run (default: each config's)."""
    from nclab.ufm.model import parameter_count

    total = 0.0
    for k, c in enumerate(configs):
        params = parameter_count(len(c.counts), sum(c.counts), c.widths)
        total += (c.steps if steps is None else steps[k]) * (3e-9 * params + 5e-6)
    return total


def steps_done(outs: Sequence | None, resume: bool) -> list[int] | None:
    """Per run folder, the steps a resumed run has already taken (its summary.json; all of them when it finished),
    or None when nothing is resumed: what :func:`plan`'s estimate leaves out. An unreadable summary counts 0."""
    import json
    import pathlib

    from nclab.ufm.trainer import FINISHED

    if outs is None or not resume:
        return None
    done = []
    for out in outs:
        try:
            s = json.loads((pathlib.Path(out) / "summary.json").read_text())
            done.append(10**18 if s.get("status") in FINISHED else int(s.get("step") or 0))
        except (OSError, ValueError, TypeError, AttributeError):
            done.append(0)
    return done


def plan(configs: Sequence, workers: int, callback=None, done: Sequence[int] | None = None) -> list[list[int]]:
    """Indices of the runs each worker trains (one list: everything in this process).

    ``workers`` > 0: at most that many; 0 (auto): the idle cores (:func:`nclab.environment.idle_cores`, measured
    over 0.2 s) when the runs would take >= :data:`WORKER_MIN_SECONDS` in one process (``done``: steps already
    taken per run, from :func:`steps_done`), else one. L-BFGS runs, other devices than the CPU and a ``callback``
    (its rows arrive in this process) keep one process. Each batch-compatible group is split into near-equal
    consecutive shares of at least :data:`MIN_SHARE` runs, dealt to the workers by estimated time."""
    from nclab.environment import idle_cores
    from nclab.ufm.batched import batch_key

    idx = [i for i, c in enumerate(configs) if c.optimizer != "lbfgs"]
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: automatic), got {workers}")
    if workers == 0:
        left = [max(0, configs[i].steps - (done[i] if done else 0)) for i in idx]  # a resumed run's remaining steps
        if callback is not None or any(configs[i].device != "cpu" for i in idx) \
                or estimated_seconds([configs[i] for i in idx], left) < WORKER_MIN_SECONDS:
            return [list(range(len(configs)))]
        workers = idle_cores(sample=0.2)  # this process waits for its workers: its own load does not count
    elif callback is not None and workers > 1:
        raise ValueError("a callback needs workers=1 (its rows arrive in this process)")
    elif any(configs[i].device != "cpu" for i in idx) and workers > 1:
        raise ValueError("workers > 1 trains on the CPU only; on a GPU one process batches every run")
    groups: dict = {}
    for i in idx:
        groups.setdefault(batch_key(configs[i]), []).append(i)
    # units of work: a batch shares its per-op overhead only with at least MIN_SHARE runs per worker, but runs of
    # different shapes (a preset's depths, the demo's presets) are separate batches anyway
    workers = min(workers, sum(max(1, len(m) // MIN_SHARE) for m in groups.values()))
    if workers <= 1:
        return [list(range(len(configs)))]
    shares = []
    for members in groups.values():
        n = min(workers, max(1, len(members) // MIN_SHARE))
        shares += [members[k * len(members) // n : (k + 1) * len(members) // n] for k in range(n)]
    # dealt by estimated time, largest first, each to the worker with the least so far
    work = {tuple(sh): estimated_seconds([configs[i] for i in sh]) for sh in shares}
    plans: list[list[int]] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for share in sorted(shares, key=lambda sh: work[tuple(sh)], reverse=True):
        w = min(range(workers), key=lambda k: (load[k], len(plans[k])))
        plans[w].extend(share)
        load[w] += work[tuple(share)]
    plans = [sorted(p) for p in plans if p]
    lbfgs = [i for i, c in enumerate(configs) if c.optimizer == "lbfgs"]
    if lbfgs:
        min(plans, key=len).extend(lbfgs)
    return plans


def run_workers(configs: list, outs: list | None, plans: list[list[int]], options: dict) -> list:
    """Train each plan's runs in its own worker process (simulate_batch with ``options``); results in input
    order. A worker's exception is raised here (after every worker ended), KeyboardInterrupt as described
    in the module docstring."""
    from nclab.environment import idle_cores

    share = max(1, idle_cores(sample=0.1) // len(plans))
    # the thread pools too (torch's default, OpenBLAS's, MKL's): a worker's set-up, snapshots and checkpoints run
    # outside its trainer's thread choice, and more threads than its share stall each parallel op while the other
    # workers hold the remaining cores (`python benchmarks/simulate.py --no-single` times the workers)
    env = dict(os.environ, NCLAB_CORES=str(share), OMP_NUM_THREADS=str(share), OPENBLAS_NUM_THREADS=str(share),
               MKL_NUM_THREADS=str(share))
    results: list = [None] * len(configs)
    with tempfile.TemporaryDirectory(prefix="nclab-workers-") as tmp:
        procs = []
        try:
            for w, members in enumerate(plans):
                job, res = os.path.join(tmp, f"job-{w}.pkl"), os.path.join(tmp, f"result-{w}.pkl")
                preds = options.get("predictions")
                payload = dict(options, configs=[configs[i] for i in members],
                               outs=None if outs is None else [outs[i] for i in members],
                               predictions=None if preds is None else [preds[i] for i in members], position=w)
                with open(job, "wb") as f:
                    pickle.dump(payload, f)
                procs.append((subprocess.Popen([sys.executable, "-m", "nclab._worker", job, res,
                                                str(os.getpid())], env=env, start_new_session=True), res))
            interrupted = _wait(procs)
        except BaseException:
            for p, _ in procs:  # set-up failed half-way (or a third Ctrl-C): no worker outlives this call
                if p.poll() is None:
                    p.kill()
                    p.wait()
            raise
        errors = []
        for (p, res), members in zip(procs, plans):
            out = _load(res)
            runs = ", ".join(str(i) if outs is None else str(outs[i]) for i in members)
            if out is None:
                errors.append(RuntimeError(f"a worker process ended with code {p.returncode} and no result (runs "
                                           f"{runs}); run folders resume from their last checkpoint"))
            elif "error" in out:
                errors.append(out["error"])
            elif out.get("interrupted"):  # a worker stopped by a signal this process did not get
                errors.append(RuntimeError(f"a worker process was interrupted (runs {runs}); run folders resume "
                                           "from their last checkpoint"))
            elif "results" in out:
                for i, r in zip(members, out["results"]):
                    r.extra["workers"] = len(plans)
                    results[i] = r
    if interrupted:
        raise KeyboardInterrupt
    if errors:
        raise errors[0]
    return results


def _wait(procs) -> bool:
    """Wait for every worker; Ctrl-C: forward SIGINT (first and second), kill on the third. True if
    interrupted."""
    presses = 0
    for p, _ in procs:
        while True:
            try:
                p.wait()
                break
            except KeyboardInterrupt:
                presses += 1
                if presses >= 3:
                    raise
                for q, _ in procs:
                    if q.poll() is None:
                        q.send_signal(signal.SIGINT)
    return presses > 0


def _load(path: str):
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        return None


def _write(path: str, obj: dict) -> None:
    """Pickle obj to path atomically. An exception is checked to unpickle too (some take other constructor
    arguments than they store) and else sent as its text; results that do not pickle are sent as an error."""
    from nclab.results import atomic_write_bytes

    try:
        data = pickle.dumps(obj)
        if "error" in obj:
            pickle.loads(data)
    except Exception as why:
        exc = obj.get("error")
        err = (RuntimeError(f"{type(exc).__name__}: {exc}") if exc is not None else
               RuntimeError(f"a worker's results could not be sent back ({type(why).__name__}: {why}); the run "
                            "folders, if any, hold them"))
        data = pickle.dumps({"error": err})
    atomic_write_bytes(path, data)


def main(argv: list[str], pressed: list) -> int:
    """A worker (:mod:`nclab._worker`): ``JOB RESULT PARENT_PID`` (JOB: pickled simulate_batch options and runs;
    RESULT: where the results, an error or an interruption are written); ``pressed`` non-empty: a Ctrl-C came
    during the imports."""
    job, res, parent = argv
    from nclab.environment import die_with_parent

    die_with_parent(int(parent))
    with open(job, "rb") as f:
        payload = pickle.load(f)
    os.unlink(job)  # nothing left behind if the caller is killed (its temporary folder then stays)
    from nclab.ufm import batched

    batched._BAR_POSITION = payload.pop("position")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if pressed:
            raise KeyboardInterrupt
        results = batched.simulate_batch(payload.pop("configs"), payload.pop("outs"), workers=1, **payload)
    except KeyboardInterrupt:
        _write(res, {"interrupted": True})
        return 130
    except Exception as exc:
        exc.add_note(f"in worker process {os.getpid()}:\n{traceback.format_exc()}")
        _write(res, {"error": exc})
        return 1
    _write(res, {"results": results})
    return 0

