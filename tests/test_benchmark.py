"""The side-by-side benchmark runs end to end on a small simulation and reports both methods."""

import json

import numpy as np
from helpers import load_script


def _load():
    return load_script("scripts/benchmark.py")


def test_benchmark_small_simulation(tmp_path):
    from velode import _train

    bench = _load()
    assert bench._have_scvelo(), "scVelo is part of the test extra: pip install -e '.[test]'"
    _train.clear_caches()  # the first fit compiles its steps; the second, of the same settings, reuses them
    results = bench.main(["--pancreas", "none", "--seeds", "0", "1", "--sim-cells", "200", "--sim-genes", "20",
                          "--max-steps", "1500", "--out", str(tmp_path)])
    sim = results["simulation"]
    names = list(sim)
    assert any(n.startswith("scVelo") for n in names) and any(n.startswith("velode") for n in names)
    velode_rows = next(v for k, v in sim.items() if k.startswith("velode"))
    assert len(velode_rows) == 2
    for row in velode_rows:
        assert row["time Spearman"] > 0.9 and row["genes fitted"] >= 10
        assert np.isfinite(row["fit seconds"]) and row["fit seconds"] > 0
        assert 0 <= row["compile seconds"] < row["fit seconds"]
    assert velode_rows[0]["compile seconds"] > 0 and velode_rows[1]["compile seconds"] == 0
    text = (tmp_path / "benchmark.md").read_text()
    assert "| time Spearman |" in text and "±" in text and "scVelo 0.3.4" in text
    assert json.loads((tmp_path / "benchmark.json").read_text())["simulation"]


def test_cbdir_table_keys_cover_every_transition():
    bench = _load()
    from velode.metrics import PANCREAS_TRANSITIONS

    assert len(PANCREAS_TRANSITIONS) == 7
    assert set(bench.STAGES) == {a for a, _ in PANCREAS_TRANSITIONS} | {b for _, b in PANCREAS_TRANSITIONS}
