"""Two gloo processes under torchrun (the real launcher, through ``nclab train``) == one process.

Each global batch is split into contiguous shards (3/3, 3/3, 3/2 here), the loss is scaled so that
DDP's gradient average is the batch mean, and the metrics passes read contiguous shards of the data
without padding, all-reduced: in float64 the rows agree with a single process to round-off.
"""

import json
import subprocess
import sys

import pytest
import torch.distributed as dist

from nclab.experiments import train

OPTS = dict(dataset="digits", counts=[7, 6, 4], test_per_class=3, arch="mlp", mlp_depth=2, width=6, depth=2,
            batch_norm=False, batch_size=8, epochs=3, optimizer="sgd", lr=0.05, dtype="float64", threads=1,
            lambda_w=1e-3, lambda_h=1e-3)


def flags(opts):
    out = []
    for k, v in opts.items():
        name = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(name if v else "--no-" + k.replace("_", "-"))
        else:
            out += [name, ",".join(map(str, v)) if isinstance(v, list) else str(v)]
    return out


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed gloo")
def test_two_process_torchrun_equals_one_process(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "nclab",
           "train", *flags(OPTS), "--out", str(tmp_path / "two"), "--json", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [json.loads(x) for x in res.stdout.strip().splitlines() if x.startswith("{")]
    assert len(lines) == 1 and lines[0]["status"] == "complete"  # only process 0 reports
    env = json.loads((tmp_path / "two" / "environment.json").read_text())
    assert env["world_size"] == 2
    one = train(**OPTS, out=tmp_path / "one")
    two = train(**OPTS, out=tmp_path / "two", resume=True).history  # the finished run, read back
    assert len(two) == len(one.history) == 4
    for a, b in zip(one.history, two):
        assert a.keys() == b.keys()
        for k in a:
            if a[k] is None:
                assert b[k] is None, k
            else:
                assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-12), (a["epoch"], k)
