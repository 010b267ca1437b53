"""The solver benchmark's quick case runs end to end, in process, and its table holds what it claims."""


import numpy as np
from helpers import load_script


def _load():
    return load_script("scripts/solver_benchmark.py")


def test_pareto_front_keeps_exactly_the_non_dominated_points():
    bench = _load()
    costs = [1.0, 2.0, 2.0, 3.0, 4.0, np.nan, 0.5]
    errors = [1e-3, 1e-4, 1e-3, 1e-4, 1e-6, 1e-9, 1e-2]
    assert bench.pareto_front(costs, errors) == [6, 0, 1, 4]


def test_quick_benchmark(tmp_path):
    bench = _load()
    df = bench.main(["--quick", "--out", str(tmp_path)])

    assert (df["status"] == "ok").all(), df[["method", "setting", "status"]]
    closed = df[df["solver"] == "analytic"]
    assert len(closed) == 1 and closed["max_err"].iloc[0] == 0
    num = df[df["solver"] != "analytic"].set_index(["solver", "setting"])
    assert sorted(num.index) == [("heun", "n_steps=200"), ("heun", "n_steps=25"),
                                 ("tsit5", "rtol=0.001"), ("tsit5", "rtol=1e-06")]
    assert set(num["adjoint"]) == {"recursive_checkpoint"}
    for col in ["max_err", "mean_err", "grad_err", "fwd_ms", "grad_ms", "fwd_compile_s", "grad_compile_s"]:
        assert np.all(np.isfinite(num[col])), col
    assert (num["fwd_ms"] > 0).all() and (num["grad_ms"] > 0).all()
    assert (num["mean_err"] <= num["max_err"]).all() and (num["max_err"] > 0).all()
    # Accuracy follows the setting: a tight tolerance is near float32 rounding, more steps are more accurate.
    assert num.loc[("tsit5", "rtol=1e-06"), "max_err"] < 1e-5
    assert num.loc[("tsit5", "rtol=1e-06"), "grad_err"] < 1e-4
    assert num.loc[("tsit5", "rtol=0.001"), "max_err"] < 1e-2
    assert num.loc[("heun", "n_steps=200"), "max_err"] < num.loc[("heun", "n_steps=25"), "max_err"] / 10
    assert num.loc[("tsit5", "rtol=1e-06"), "steps"] > num.loc[("tsit5", "rtol=0.001"), "steps"]
    # Constant steps over [0, 1] (standard kinetics: one phase); vf evals = stages per step x steps.
    assert num.loc[("heun", "n_steps=25"), "steps"] == 25 and num.loc[("heun", "n_steps=200"), "steps"] == 200
    assert (num.loc["heun", "vf_evals"] == 2 * num.loc["heun", "steps"]).all()
    assert (num.loc["tsit5", "vf_evals"] == 6 * num.loc["tsit5", "steps"]).all()

    # The flagged Pareto rows are exactly those no other row beats on both gradient time and error.
    cost, err, flag = num["grad_ms"].to_numpy(), num["max_err"].to_numpy(), num["pareto"].to_numpy(bool)
    assert flag.any()
    for i in range(len(num)):
        beaten = np.any((cost <= cost[i]) & (err <= err[i]) & ((cost < cost[i]) | (err < err[i])))
        assert flag[i] == (not beaten), num.iloc[i]

    for name in ["solver_benchmark.csv", "solver_benchmark.md", "error_vs_cost.png"]:
        assert (tmp_path / name).stat().st_size > 0, name
    text = (tmp_path / "solver_benchmark.md").read_text()
    assert "| tsit5 | rtol=1e-06 | recursive_checkpoint |" in text and "| heun | n_steps=25 |" in text
    assert (tmp_path / "error_vs_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(df["genes"]) == {12} and set(df["cells"]) == {200}

    # The plot can be redrawn from the saved table alone.
    again = bench.main(["--replot", str(tmp_path / "solver_benchmark.csv"), "--out", str(tmp_path / "replot")])
    assert len(again) == len(df) and (tmp_path / "replot" / "error_vs_cost.png").stat().st_size > 0
