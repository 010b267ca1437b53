"""End-to-end runs of the `velode` command on small data (its answers to bad input: test_bad_input.py)."""

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import velode
from helpers import run_cli

SMALL = [
    "trainer.max_steps=60",
    "model.pretrain_steps=30",
    "model.probe_steps=10",
    "model.assign_rounds=1",
    "plots=false",
]


def test_default_synthetic_run_writes_outputs(tmp_path):
    proc, out = run_cli(tmp_path, "data.n_cells=120", "data.n_genes=30", "trainer.max_steps=80", "model.probe_steps=10")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ["status", "final_loss", "steps", "fit_seconds", "compile_seconds", "n_velocity_genes",
                "latent_time_spearman"]:
        assert key in metrics
    assert metrics["status"] == "ok"
    assert 0 < metrics["steps"] <= 80
    assert metrics["compile_seconds"] <= metrics["fit_seconds"]
    # Peak resident memory of the run: at least what JAX and the data took, far below the machine's.
    assert 100 < metrics["peak_rss_mb"] < 16_000
    a = ad.read_h5ad(out / "velocity.h5ad")
    assert a.shape == (120, 30)
    assert a.layers["velocity"].shape == a.shape and np.isfinite(a.layers["velocity"]).all()
    for key in ["fit_alpha", "fit_beta", "fit_gamma", "velocity_genes", "true_alpha"]:
        assert key in a.var
    assert "latent_time" in a.obs and "true_time" in a.obs
    assert "data:" in a.uns["velode"]["config"]
    for png in ["loss_curve.png", "phase_portraits.png", "velocity_stream.png"]:
        assert (out / png).stat().st_size > 1000


def test_simulation_standard_model_and_seed(tmp_path):
    proc, out = run_cli(
        tmp_path, "data=simulation", "data.n_cells=150", "data.n_genes=12", "model=standard", "seed=3", *SMALL
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["kinetics"] == "standard" and m["data"] == "simulation"
    assert "velocity_sign_agreement" in m and "velocity_cosine" in m


def test_numerical_solver_from_config(tmp_path):
    proc, out = run_cli(
        tmp_path, "data.n_cells=80", "data.n_genes=10", "solver=tsit5", "stepsize.rtol=1e-4", "adjoint=backsolve", *SMALL
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["solver"] == "Tsit5"
    assert m["solver_stats"]["num_steps"] > 0


def test_h5ad_input_with_preprocess_none(tmp_path):
    a = velode.datasets.simulation(n_cells=100, n_genes=10, seed=1)
    path = tmp_path / "sim.h5ad"
    a.write_h5ad(path)
    proc, out = run_cli(tmp_path, "data=h5ad", f"data.path={path}", "preprocess=none", *SMALL)
    assert proc.returncode == 0, proc.stderr
    b = ad.read_h5ad(out / "velocity.h5ad")
    assert "true_velocity" in b.layers and "velocity" in b.layers


PANCREAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pancreas.h5ad"


@pytest.mark.slow
@pytest.mark.skipif(not PANCREAS.exists(), reason="needs ../shared/data/pancreas.h5ad")
def test_pancreas_command(tmp_path):
    """`velode data=pancreas data.path=FILE` as written, shortened training: scVelo keys, stage metric, stream plot."""
    proc, out = run_cli(
        tmp_path, "data=pancreas", f"data.path={PANCREAS}", "trainer.max_steps=150", "model.probe_steps=20",
        "model.assign_rounds=1", "n_phase_portraits=4",
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "ok" and m["n_cells"] == 3696
    assert -1.0 <= m["stage_spearman"] <= 1.0
    assert set(m["latent_time_median_by_cluster"]) >= {"Ductal", "Alpha", "Beta"}
    a = ad.read_h5ad(out / "velocity.h5ad")
    assert "clusters" in a.obs and "X_umap" in a.obsm and "velocity_genes" in a.var
    assert a.uns["velode"]["config"].count("pancreas") >= 1
    for png in ["loss_curve.png", "phase_portraits.png", "velocity_stream.png"]:
        assert (out / png).stat().st_size > 1000
    assert (out / "velode.log").exists()


def test_solver_hitting_max_steps_is_a_clear_failure(tmp_path):
    proc, out = run_cli(
        tmp_path, "data.n_cells=60", "data.n_genes=8", "solver=dopri5", "solver.max_steps=2",
        "stepsize.rtol=1e-9", "stepsize.atol=1e-9", *SMALL,
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("velode: error:"), proc.stderr
    assert "solver.max_steps=2" in lines[0] and "stepsize.rtol/atol" in lines[0]  # the settings to change
    assert "Traceback" not in proc.stderr
    assert not (out / "velocity.h5ad").exists()
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"


def test_help_lists_groups():
    proc = subprocess.run([sys.executable, "-m", "velode._cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for word in ["data:", "solver:", "tsit5", "velode data=h5ad data.path=FILE"]:
        assert word in proc.stdout


def test_compile_cache_is_filled_and_changes_nothing(tmp_path):
    cache = tmp_path / "cache"
    proc, first = run_cli(tmp_path, f"compile_cache={cache}", *SMALL, name="first")
    assert proc.returncode == 0, proc.stderr
    entries = list(cache.iterdir())
    assert entries, "no compiled program was kept"
    proc, second = run_cli(tmp_path, f"compile_cache={cache}", *SMALL, name="second")  # reads the programs back
    assert proc.returncode == 0, proc.stderr
    a, b = ad.read_h5ad(first / "velocity.h5ad"), ad.read_h5ad(second / "velocity.h5ad")
    np.testing.assert_array_equal(a.layers["velocity"], b.layers["velocity"])
    np.testing.assert_array_equal(a.obs["latent_time"], b.obs["latent_time"])
    proc, _ = run_cli(tmp_path, "compile_cache=null", *SMALL, name="off", env={"VELODE_COMPILE_CACHE": str(cache / "x")})
    assert proc.returncode == 0, proc.stderr
    assert not (cache / "x").exists()
