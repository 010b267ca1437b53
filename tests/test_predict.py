"""A fitted model saved and applied to cells it has not seen: velode.tl.save_model / load_model / predict
and the `velode predict` command."""

import json
import subprocess
import sys

import anndata as ad
import diffrax
import equinox as eqx
import jax
import numpy as np
import pytest
from scipy.stats import spearmanr

import velode
from velode.model._solve import Integrator
from velode.tl._predict import FittedModel

CELL_LAYERS = ["velocity", "velocity_u", "fit_s", "fit_u", "projected_spliced"]
GENE_KEYS = ["fit_alpha", "fit_beta", "fit_gamma", "fit_scaling", "fit_alpha0", "fit_t_", "fit_r2", "velocity_genes"]


def _close(actual, desired, what=""):
    """Equal to float32 rounding: relative 1e-5, or 1e-5 of the largest value (velocity = beta u - gamma s cancels)."""
    desired = np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-5 * float(np.abs(desired).max()), err_msg=what)


def _halves(n_cells, n_genes, seed=0):
    """One switching simulation, its cells split at random into a training and a held-out half."""
    a = velode.pp.preprocess(velode.datasets.simulation(n_cells=n_cells, n_genes=n_genes, seed=seed), method="none")
    perm = np.random.default_rng(seed).permutation(a.n_obs)
    half = a.n_obs // 2
    return a[np.sort(perm[:half])].copy(), a[np.sort(perm[half:])].copy()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A fit (with cell-specific transcription) on 300 cells, saved; the other 300 cells held out."""
    train, test = _halves(600, 30)
    result = velode.tl.fit(train, trainer={"progress": False, "max_steps": 1500})
    path = velode.tl.save_model(result, tmp_path_factory.mktemp("model"), train)
    return train, test, result, path


def test_predict_on_the_training_cells_reproduces_the_fit(fitted):
    train, _, result, path = fitted
    assert result.model.modulator is not None
    new = train.copy()
    out = velode.tl.predict(new, path, batch_size=64)  # 5 batches, the last one padded
    assert out is new  # the model's genes in its order: written in place
    for key in CELL_LAYERS:
        assert out.layers[key].dtype == np.float32
        _close(out.layers[key], train.layers[key], key)
    _close(out.obs["latent_time"], train.obs["latent_time"], "latent_time")
    _close(out.obsm["velode_cell_z"], train.obsm["velode_cell_z"], "velode_cell_z")
    np.testing.assert_array_equal(out.varm["velode_cell_loadings"], train.varm["velode_cell_loadings"])
    for key in GENE_KEYS:
        np.testing.assert_array_equal(out.var[key].to_numpy(), train.var[key].to_numpy(), err_msg=key)
    # the R^2 on the cells predicted, from sums over batches, is the fit's own R^2 on the same cells
    np.testing.assert_allclose(out.var["predict_r2"], train.var["fit_r2"], atol=1e-4)
    np.testing.assert_allclose(velode.tl.cell_alpha(out), velode.tl.cell_alpha(train), rtol=1e-5)
    info = out.uns["velode"]
    assert info["predicted_from"] == str(path) and info["n_dropped_genes"] == 0 and info["batch_size"] == 64


def test_save_load_round_trip(fitted, tmp_path):
    train, test, result, path = fitted
    meta = json.loads((path / "model.json").read_text())
    assert meta["kinetics"] == {"name": "dynamical", "n_genes": 30, "rate_max": 50.0, "switch_max": 1.5,
                                "onset": False}
    assert meta["var_names"] == list(train.var_names)
    assert meta["layers"] == {"spliced": "Ms", "unspliced": "Mu"}
    assert meta["solver"]["name"] == "analytic" and meta["horizon"] == 0.05
    assert meta["cell_modulator"] == {"rank": 4, "bound": 0.5} and meta["velode_version"] == velode.__version__
    loaded = velode.tl.load_model(path)
    same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), eqx.filter(loaded.model, eqx.is_array),
                                  eqx.filter(result.model, eqx.is_array))
    assert all(jax.tree_util.tree_leaves(same))
    assert eqx.tree_equal(eqx.filter(loaded.model, eqx.is_array, inverse=True),
                          eqx.filter(result.model, eqx.is_array, inverse=True))
    assert loaded.integrator.analytic and loaded.var_names == list(train.var_names)
    # from the files or from memory: identical outputs; in another batch size: the same to float32 rounding
    a = velode.tl.predict(test.copy(), path)
    b = velode.tl.predict(test.copy(), FittedModel.from_fit(result, train))
    c = velode.tl.predict(test.copy(), path, batch_size=37)
    for key in CELL_LAYERS:
        np.testing.assert_array_equal(a.layers[key], b.layers[key], err_msg=key)
        _close(c.layers[key], a.layers[key], key)
    np.testing.assert_array_equal(a.obs["latent_time"], b.obs["latent_time"])
    _close(c.obs["latent_time"], a.obs["latent_time"], "latent_time")
    # saved again from the loaded model: the same files
    again = loaded.save(tmp_path / "again")
    assert (again / "model.eqx").read_bytes() == (path / "model.eqx").read_bytes()
    assert json.loads((again / "model.json").read_text()) == meta


def test_predict_on_held_out_cells(fitted):
    train, test, _, path = fitted
    out = velode.tl.predict(test.copy(), path)
    assert out.shape == test.shape and np.isfinite(out.layers["velocity"]).all()
    rho_train = spearmanr(train.obs["latent_time"], train.obs["true_time"])[0]
    rho_test = spearmanr(out.obs["latent_time"], out.obs["true_time"])[0]
    assert rho_train > 0.95
    assert rho_test > rho_train - 0.05, (rho_train, rho_test)
    m = velode.metrics.truth_metrics(out)
    assert m["velocity_sign_agreement"] > 0.8


def test_genes_are_matched_by_name(fitted):
    train, test, _, path = fitted
    genes = list(train.var_names)
    with pytest.raises(velode.InputError, match=r"2 of the model's 30 genes are not in the data \(gene_3, gene_7\)"):
        velode.tl.predict(test[:, [g for g in genes if g not in ("gene_3", "gene_7")]].copy(), path)
    # extra genes (here: a copy of the data under other names) and another order: dropped and reordered
    extra = test.copy()
    extra.var_names = [f"other_{g}" for g in genes]
    mixed = ad.concat([extra, test], axis=1, merge="first")[:, list(reversed(range(2 * len(genes))))].copy()
    before = mixed.copy()
    out = velode.tl.predict(mixed, path)
    assert out is not mixed and list(out.var_names) == genes
    assert set(mixed.layers) == set(before.layers) and mixed.obs.equals(before.obs)  # the input as it was
    exact = velode.tl.predict(test.copy(), path)
    np.testing.assert_allclose(out.layers["velocity"], exact.layers["velocity"], rtol=1e-6, atol=1e-6)
    assert out.uns["velode"]["n_dropped_genes"] == len(genes)


def test_bad_input_and_bad_model_files(fitted, tmp_path):
    _, test, _, path = fitted
    bad = test.copy()
    bad.layers["Ms"][3, 2] = np.nan
    with pytest.raises(velode.InputError, match=r"layers\['Ms'\] has 1 NaN or infinite values"):
        velode.tl.predict(bad, path)
    assert "velocity" not in bad.layers
    bad.layers["Ms"] = -np.abs(test.layers["Ms"])
    with pytest.raises(velode.InputError, match="negative values"):
        velode.tl.predict(bad, path)
    del bad.layers["Mu"]
    with pytest.raises(velode.InputError, match=r"no layers\['Mu'\]"):
        velode.tl.predict(bad, path, spliced_key="spliced")
    with pytest.raises(velode.ConfigError, match="batch_size"):
        velode.tl.predict(test, path, batch_size=0)
    with pytest.raises(velode.InputError, match="holds no model.eqx"):
        velode.tl.predict(test, tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((path / "model.json").read_text())
    (broken / "model.eqx").write_bytes((path / "model.eqx").read_bytes()[:-100])
    with pytest.raises(velode.InputError, match="does not match"):
        velode.tl.load_model(broken)


def test_numerical_solver_is_rebuilt_by_name(fitted, tmp_path):
    train, test, result, _ = fitted
    model = eqx.tree_at(lambda m: m.modulator, result.model, None, is_leaf=lambda x: x is None)  # closed form only
    integrator = Integrator(solver=diffrax.Tsit5(),
                                         stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8))
    path = velode.tl.save_model(model, tmp_path, var_names=train.var_names, integrator=integrator, horizon=0.05)
    loaded = velode.tl.load_model(path)
    assert isinstance(loaded.integrator.solver, diffrax.Tsit5)
    assert loaded.integrator.stepsize_controller.rtol == 1e-6 and loaded.fit_r2 is None
    numerical = velode.tl.predict(test.copy(), loaded)
    exact = velode.tl.predict(test.copy(), FittedModel(model, Integrator(), list(train.var_names), 0.05))
    assert numerical.uns["velode"]["solver"] == "Tsit5"
    np.testing.assert_allclose(numerical.layers["velocity"], exact.layers["velocity"], rtol=1e-3, atol=1e-3)
    assert "velode_cell_z" not in numerical.obsm
    # no training R^2 recorded: velocity genes are judged on the cells predicted
    np.testing.assert_array_equal(numerical.var["velocity_genes"], numerical.var["predict_r2"] > 0.1)


# ----- the command line -----

SMALL = ["trainer.max_steps=40", "model.pretrain_steps=20", "model.probe_steps=5", "model.assign_rounds=1",
         "model.cell_rank=0", "plots=false", "trainer.progress=false"]


def _command(out, *args, predict=True):
    cmd = [sys.executable, "-m", "velode._cli"] + (["predict"] if predict else []) + [f"hydra.run.dir={out}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _one_line_error(proc) -> str:
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("velode: error: "), proc.stderr
    return lines[0]


def test_command_end_to_end(tmp_path):
    a = velode.datasets.simulation(n_cells=160, n_genes=12, seed=0)
    a[:80].copy().write_h5ad(tmp_path / "train.h5ad")
    a.write_h5ad(tmp_path / "all.h5ad")
    run = tmp_path / "run"
    proc = _command(run, "data=h5ad", f"data.path={tmp_path / 'train.h5ad'}", "preprocess=none", *SMALL, predict=False)
    assert proc.returncode == 0, proc.stderr
    assert (run / "model.eqx").is_file() and (run / "model.json").is_file()
    fit = ad.read_h5ad(run / "velocity.h5ad")

    out = tmp_path / "pred"
    proc = _command(out, f"model_dir={run}", f"data.path={tmp_path / 'all.h5ad'}", "preprocess=none", "batch_size=50")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "ok" and m["n_cells"] == 160 and m["n_genes"] == 12 and m["model_dir"] == str(run)
    for key in ["seconds", "predict_seconds", "peak_rss_mb", "versions", "latent_time_spearman"]:
        assert key in m
    b = ad.read_h5ad(out / "velocity.h5ad")
    assert b.shape == (160, 12) and "true_time" in b.obs and f"model_dir: {run}" in b.uns["velode"]["config"]
    # the training cells get the fit's own outputs back
    _close(b.obs["latent_time"][:80], fit.obs["latent_time"])
    _close(b.layers["velocity"][:80], fit.layers["velocity"])
    np.testing.assert_array_equal(b.var["fit_gamma"], fit.var["fit_gamma"])

    # genes of the model missing from the new data
    fewer = _command(tmp_path / "fewer", f"model_dir={run}", f"data.path={tmp_path / 'all.h5ad'}", "preprocess=none",
                     "data.genes=[gene_0,gene_1]")
    assert "10 of the model's 12 genes are not in the data (gene_2, " in _one_line_error(fewer)
    assert not (tmp_path / "fewer" / "velocity.h5ad").exists()

    # a folder that holds predictions is refused, and so is writing into the model's own run folder
    again = _command(out, f"model_dir={run}", f"data.path={tmp_path / 'all.h5ad'}", "preprocess=none")
    assert "already holds a finished run" in _one_line_error(again)
    into = _command(run, f"model_dir={run}", f"data.path={tmp_path / 'all.h5ad'}", "overwrite=true")
    assert "choose another hydra.run.dir" in _one_line_error(into)
    assert (run / "model.eqx").is_file() and (run / "velocity.h5ad").is_file()


def test_command_errors_and_help(tmp_path):
    a = velode.datasets.simulation(n_cells=40, n_genes=6, seed=0)
    a.write_h5ad(tmp_path / "new.h5ad")
    out = tmp_path / "pred"
    proc = _command(out, f"model_dir={tmp_path / 'nowhere'}", f"data.path={tmp_path / 'new.h5ad'}")
    line = _one_line_error(proc)
    assert line == f"velode: error: model_dir={tmp_path / 'nowhere'} holds no model.eqx: give the run folder of a " \
                   "finished velode run"
    assert not (out / "velocity.h5ad").exists()
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"
    missing = _command(tmp_path / "p2", f"data.path={tmp_path / 'new.h5ad'}")
    assert "model_dir is required" in _one_line_error(missing)
    helped = subprocess.run([sys.executable, "-m", "velode._cli", "predict", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0
    assert "velode predict model_dir=RUN" in helped.stdout and "batch_size: 4096" in helped.stdout
