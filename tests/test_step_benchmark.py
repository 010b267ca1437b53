"""The step benchmark runs end to end on a small simulation, and its variants compute the same gradient."""

import numpy as np
from helpers import load_script


def test_step_benchmark_variants_agree():
    bench = load_script("scripts/step_benchmark.py")
    out = bench.main(["--cells", "300", "--genes", "40", "--batch", "128", "--reps", "2", "--calls", "2"])
    assert set(out) == {"clock", "cell-specific"}
    for rows in out.values():
        assert len(rows) == 4
        first = next(iter(rows.values()))
        assert first["ratio"] == 1.0 and first["difference"] == 0.0
        for row in rows.values():
            assert row["ms"] > 0 and row["compile_s"] > 0 and np.isfinite(row["ratio"])
            # the one-pass gradient and the compiler options change float32 rounding only
            assert row["difference"] < 1e-4
