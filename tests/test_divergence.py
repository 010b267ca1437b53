"""A non-finite loss stops training with the last finite parameters, says so, and writes no NaN."""

import json
import math

import anndata as ad
import numpy as np
import pytest
from helpers import run_cli

import velode

# A learning rate this large sends the rates to infinity in one update.
HUGE_LR = 1e30
TINY_MODEL = {"pretrain_steps": 5, "probe_steps": 3, "assign_rounds": 1}


def _data():
    return velode.pp.preprocess(velode.datasets.synthetic(60, 20, seed=1), method="none", n_neighbors=10)


# probe_steps=1: the update that diverges is the last of a run, caught by the check after the loop;
# probe_steps=3: caught by the loss of the next step.
@pytest.mark.parametrize("probe_steps", [1, 3])
def test_diverged_fit_keeps_the_last_finite_parameters(probe_steps):
    a = _data()
    result = velode.tl.fit(
        a, model={**TINY_MODEL, "probe_steps": probe_steps}, trainer={"max_steps": 20, "lr": HUGE_LR, "progress": False}
    )
    state = result.state
    assert state.status == "diverged" and a.uns["velode"]["status"] == "diverged"
    # The first update already diverged: the parameters kept are those before it.
    assert state.step == 0 and all(len(v) == 0 for v in state.history.values())
    assert "non-finite at step 1" in state.message and "parameters of step 0" in state.message
    assert "trainer.lr" in state.message
    assert math.isfinite(a.uns["velode"]["final_loss"])
    for key in ("velocity", "velocity_u", "fit_s", "fit_u"):
        assert np.isfinite(a.layers[key]).all(), key
    assert np.isfinite(a.obs["latent_time"]).all()


def test_fit_that_does_not_diverge_is_ok():
    a = _data()
    result = velode.tl.fit(a, model=TINY_MODEL, trainer={"max_steps": 10, "progress": False})
    assert result.state.status == "ok" and result.state.message == ""
    assert result.state.step == 10 and len(result.state.history["total"]) == 10


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diverged")
    a = velode.datasets.synthetic(60, 20, seed=1)
    for layer in ("spliced", "unspliced"):
        a.layers[layer][:, [3, 7]] = 0  # two genes without counts: dropped with a warning
    a.write_h5ad(tmp / "data.h5ad")
    return run_cli(
        tmp, "data=h5ad", f"data.path={tmp / 'data.h5ad'}", "preprocess=none", "preprocess.n_neighbors=10",
        "plots=false", "trainer.max_steps=10", f"trainer.lr={HUGE_LR}", "model.pretrain_steps=5",
        "model.probe_steps=3", "model.assign_rounds=1",
    )


def test_command_reports_divergence_in_metrics_and_writes_no_nan(diverged_run):
    proc, out = diverged_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "training diverged: the loss became non-finite at step 1" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "diverged" and m["steps"] == 0
    assert "non-finite at step 1" in m["message"] and "parameters of step 0" in m["message"]
    assert math.isfinite(m["final_loss"])
    b = ad.read_h5ad(out / "velocity.h5ad")
    assert b.uns["velode"]["status"] == "diverged"
    for key in ("velocity", "velocity_u", "fit_s", "fit_u"):
        assert np.isfinite(b.layers[key]).all(), key


def test_command_drops_all_zero_genes_with_a_warning_saying_how_many(diverged_run):
    proc, out = diverged_run
    assert "dropped 2 of 20 genes with zero counts" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_genes"] == 18
