"""Above 32 classes prediction.json carries the Grams' structure, not dense matrices: the report rebuilds the
predicted heatmaps from it, equal to the dense prediction."""

import numpy as np

from nclab import predict, simulate
from nclab.report import runs as runlib


def test_reference_grams_from_a_structured_prediction(tmp_path):
    counts = [6] * 20 + [3] * 20  # K = 40 > 32: structure only in prediction.json
    r = simulate(counts=counts, depth=1, widths=48, steps=2, snapshot_every=1, out=tmp_path)
    run = runlib.load_run(tmp_path)
    assert run.prediction.get("dense") is False
    grams, name = runlib.reference_grams(run)
    dense = predict(counts, depth=1, widths=48)
    for k in ("WWt", "HtH", "WH"):
        np.testing.assert_allclose(grams[k], getattr(dense, k), rtol=1e-12, atol=1e-14)
    assert r.status == "complete" and name.startswith("predicted")
