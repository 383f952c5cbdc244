"""What a run ran on: recorded next to every result so it can be reproduced."""

from __future__ import annotations

import os
import platform
import sys


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
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
