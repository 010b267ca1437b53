"""Same seed, same config, same machine: the `velode` command writes identical outputs, bit for bit.

Two runs of one config into two run folders (at the same time, so they share nothing but the
machine) must agree on every array of velocity.h5ad and on metrics.json, apart from what measures
the run itself (durations, ``*_seconds``; peak memory, ``peak_*``). Both files record the resolved
config and the versions of velode and of its numerical stack.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import anndata as ad
import diffrax
import equinox
import jax
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import run_cli

import velode

# Every phase of a fit (encoder pretraining, both probes, an assignment round, training, the
# cell-specific phase) in a few steps.
SMALL = ["data=synthetic", "data.n_cells=100", "data.n_genes=20", "seed=3", "trainer.max_steps=30",
         "model.pretrain_steps=10", "model.probe_steps=5", "model.assign_rounds=1", "trainer.progress=false",
         "plots=false"]


def _measured(key: str) -> bool:
    """Keys that measure the run (time, memory), not its result."""
    return key.endswith("_seconds") or key.startswith("peak_")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("determinism")
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda name: run_cli(tmp, *SMALL, name=name), ["first", "second"]))
    for proc, _ in runs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return [out for _, out in runs]


def _same_array(a, b, what):
    a, b = (x.toarray() if hasattr(x, "toarray") else x for x in (a, b))
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert np.array_equal(a, b), what
    if a.dtype.kind in "fciub":  # bit for bit: also the sign of zeros and the payload of any NaN
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), what


def _same_frame(a: pd.DataFrame, b: pd.DataFrame, what):
    assert list(a.index) == list(b.index), what
    assert list(a.columns) == list(b.columns), what
    for col in a.columns:
        assert a[col].dtype == b[col].dtype, (what, col)
        if isinstance(a[col].dtype, pd.CategoricalDtype):
            assert list(a[col].cat.categories) == list(b[col].cat.categories), (what, col)
            _same_array(a[col].cat.codes.to_numpy(), b[col].cat.codes.to_numpy(), (what, col))
        else:
            _same_array(a[col].to_numpy(), b[col].to_numpy(), (what, col))


def _same_tree(a, b, path="uns"):
    """Nested dicts of arrays and scalars, equal apart from measured keys."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            if not _measured(k):
                _same_tree(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, np.ndarray):
        _same_array(a, b, path)
    elif isinstance(a, pd.DataFrame):
        _same_frame(a, b, path)
    else:
        assert type(a) is type(b) and a == b, path


def test_outputs_are_identical_bit_for_bit(two_runs):
    first, second = (ad.read_h5ad(out / "velocity.h5ad") for out in two_runs)
    assert first.shape == second.shape == (100, 20)
    _same_array(first.X, second.X, "X")
    _same_frame(first.obs, second.obs, "obs")
    _same_frame(first.var, second.var, "var")
    for name in ("layers", "obsm", "varm", "obsp", "varp"):
        a, b = getattr(first, name), getattr(second, name)
        assert set(a.keys()) == set(b.keys()), name
        for key in a.keys():
            _same_array(a[key], b[key], f"{name}[{key!r}]")
    # What a fit writes, all present (a check that the comparison above compared something).
    assert {"velocity", "velocity_u", "fit_s", "fit_u", "projected_spliced"} <= set(first.layers.keys())
    assert {"velode_cell_z"} <= set(first.obsm.keys()) and {"velode_cell_loadings"} <= set(first.varm.keys())
    assert {"latent_time"} <= set(first.obs) and {"fit_alpha", "fit_t_", "fit_r2"} <= set(first.var)
    _same_tree(first.uns, second.uns)


def test_metrics_identical_apart_from_measurements(two_runs):
    first, second = (json.loads((out / "metrics.json").read_text()) for out in two_runs)
    assert first["status"] == "ok" and first["steps"] == 30
    assert set(first) == set(second)
    measured = sorted(k for k in first if _measured(k))
    assert {"fit_seconds", "compile_seconds", "total_seconds"} <= set(measured)
    for key in first:
        if not _measured(key):
            assert first[key] == second[key], key
    history = [json.loads((out / "history.json").read_text()) for out in two_runs]
    assert history[0] == history[1] and len(history[0]["total"]) == 30


def test_versions_and_resolved_config_are_recorded(two_runs):
    want = {"velode": velode.__version__, "jax": jax.__version__, "diffrax": diffrax.__version__,
            "equinox": equinox.__version__}
    out = two_runs[0]
    metrics = json.loads((out / "metrics.json").read_text())
    info = ad.read_h5ad(out / "velocity.h5ad").uns["velode"]
    for versions in (metrics["versions"], info["versions"]):
        assert {k: versions[k] for k in want} == want
    assert info["version"] == velode.__version__
    # The config as the job ran it: every group, the command-line values, interpolations resolved.
    config = yaml.safe_load(info["config"])
    assert "${" not in info["config"]
    assert {"data", "preprocess", "model", "solver", "stepsize", "adjoint", "loss", "trainer", "seed"} <= set(config)
    assert config["seed"] == 3 and config["data"]["name"] == "synthetic" and config["data"]["n_cells"] == 100
    assert config["trainer"]["max_steps"] == 30 and config["model"]["pretrain_steps"] == 10
    assert config["stepsize"]["controller"]["rtol"] == config["stepsize"]["rtol"]  # was ${stepsize.rtol}
