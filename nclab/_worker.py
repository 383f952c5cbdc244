"""Entry point of :func:`nclab.ufm.batched.simulate_batch`'s worker processes: ``python -m nclab._worker JOB RESULT
PARENT_PID`` (see :mod:`nclab.ufm.workers`). It lives outside ``nclab.ufm``, whose import loads torch, so that a
Ctrl-C forwarded while the worker is still importing is caught (and reported as an interruption) instead of
printing a traceback."""

import signal
import sys

if __name__ == "__main__":
    pressed: list = []
    signal.signal(signal.SIGINT, lambda *_: pressed.append(1))
    from nclab.ufm.workers import main

    sys.exit(main(sys.argv[1:], pressed))
