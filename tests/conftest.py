import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # test helpers (descent.py) importable as modules

from hypothesis import settings  # noqa: E402

# CI runs the same examples every time (a fuzz failure is then a real regression, not a new draw); run
# `pytest --hypothesis-profile explore` to draw new examples.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("ci")
