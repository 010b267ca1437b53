"""A small multirun through the joblib launcher, with one job that fails, and its aggregation."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from helpers import load_script

TINY = [
    "data.n_cells=80", "data.n_genes=8", "trainer.max_steps=25", "model.pretrain_steps=20", "model.probe_steps=5",
    "model.assign_rounds=1", "plots=false",
]


def _aggregate():
    return load_script("scripts/aggregate.py")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    # dopri5 with solver.max_steps=2 cannot finish its solve: that job fails, the others go on.
    proc = subprocess.run(
        [sys.executable, "-m", "velode._cli", "-m", "hydra/launcher=local", f"hydra.sweep.dir={out}",
         "solver=analytic,tsit5,dopri5", "solver.max_steps=2,4096", *TINY],
        capture_output=True, text=True, timeout=900,
    )
    return proc, out


def test_sweep_finishes_and_records_every_job(sweep):
    proc, out = sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep finished: 6 jobs, 4 ok, not ok:" in proc.stdout + proc.stderr
    jobs = sorted(p for p in out.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 6
    by_overrides = {}
    for job in jobs:
        m = json.loads((job / "metrics.json").read_text())
        by_overrides[tuple(o for o in m["overrides"] if o.startswith("solver"))] = (job, m)
    failed = {k: v for k, v in by_overrides.items() if v[1]["status"] == "failed"}
    # The closed form ignores max_steps; both numerical solvers fail with 2 steps and succeed with 4096.
    assert set(failed) == {("solver=tsit5", "solver.max_steps=2"), ("solver=dopri5", "solver.max_steps=2")}
    for job, m in failed.values():
        assert "max_steps" in m["error"]
        assert not (job / "velocity.h5ad").exists()
    ok = [v for k, v in by_overrides.items() if k not in failed]
    for job, m in ok:
        assert m["status"] == "ok" and (job / "velocity.h5ad").exists()
        assert m["compile_seconds"] > 0 and m["train_seconds"] >= 0
        assert m["compile_seconds"] + m["train_seconds"] <= m["fit_seconds"] + 1e-6
        assert {"jax", "diffrax", "equinox", "velode"} <= set(m["versions"])
    tsit5 = by_overrides[("solver=tsit5", "solver.max_steps=4096")][1]["solver_stats"]
    assert tsit5["num_steps"] > 0 and tsit5["num_vf_evals"] == 6 * tsit5["num_steps"]


def test_aggregate_collects_the_sweep(sweep, tmp_path):
    _, out = sweep
    df = _aggregate().main([str(out), "--out", str(tmp_path)])
    assert len(df) == 6
    csv = pd.read_csv(tmp_path / "sweep.csv")
    assert (csv["status"] == "failed").sum() == 2 and (csv["status"] == "ok").sum() == 4
    assert set(csv["solver"]) == {"analytic", "tsit5", "dopri5"}
    assert csv.loc[csv["status"] == "ok", "fit_seconds"].notna().all()
    md = (tmp_path / "sweep.md").read_text()
    assert "2 of 6 jobs did not finish ok" in md and "max_steps" in md
    for png in ["quality_vs_cost.png", "loss_curves.png"]:
        assert (tmp_path / png).stat().st_size > 1000


def test_aggregate_refuses_a_folder_without_jobs(tmp_path):
    with pytest.raises(SystemExit, match="no metrics.json"):
        _aggregate().main([str(tmp_path)])
