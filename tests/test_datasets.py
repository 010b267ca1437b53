"""Tests of the synthetic and simulated datasets."""

import anndata as ad
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from velode._errors import InputError
from velode.datasets import simulation, synthetic

# --------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_keys():
    adata = synthetic(n_cells=50, n_genes=20, seed=1)
    assert adata.shape == (50, 20)
    assert set(adata.layers.keys()) == {"spliced", "unspliced"}
    for name in ("spliced", "unspliced"):
        x = adata.layers[name]
        assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (50, 20)
    assert adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X, adata.layers["spliced"])
    assert list(adata.obs.columns) == ["true_time"]
    assert list(adata.var.columns) == ["true_alpha", "true_beta", "true_gamma"]
    assert list(adata.obs_names[:2]) == ["cell_0", "cell_1"]
    assert list(adata.var_names[-1:]) == ["gene_19"]
    assert adata.uns["velode_dataset"] == {"name": "synthetic", "seed": 1}


def test_synthetic_defaults():
    adata = synthetic()
    assert adata.shape == (500, 200)
    assert adata.uns["velode_dataset"]["seed"] == 42


def test_synthetic_deterministic_and_seed_dependent():
    a, b, c = synthetic(30, 10, seed=3), synthetic(30, 10, seed=3), synthetic(30, 10, seed=4)
    for name in ("spliced", "unspliced"):
        np.testing.assert_array_equal(a.layers[name], b.layers[name])
        assert not np.array_equal(a.layers[name], c.layers[name])
    np.testing.assert_array_equal(a.obs["true_time"], b.obs["true_time"])
    assert not np.array_equal(a.var["true_alpha"], c.var["true_alpha"])


def test_synthetic_values_non_negative_and_finite():
    adata = synthetic(200, 50, seed=0)
    for name in ("spliced", "unspliced"):
        x = adata.layers[name]
        assert np.isfinite(x).all() and (x >= 0).all()
    t = adata.obs["true_time"].to_numpy()
    assert (t >= 0).all() and (t <= 1).all()


def test_synthetic_rates_follow_the_stated_generator():
    seed = 7
    adata = synthetic(20, 30, seed=seed)
    rng = np.random.default_rng(seed)
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    np.testing.assert_allclose(adata.var["true_alpha"], softplus(0.5 * rng.standard_normal(30) + 1.0))
    np.testing.assert_allclose(adata.var["true_beta"], softplus(0.5 * rng.standard_normal(30)))
    np.testing.assert_allclose(adata.var["true_gamma"], softplus(0.5 * rng.standard_normal(30) - 0.5))
    np.testing.assert_allclose(adata.obs["true_time"], rng.uniform(0, 1, size=20))


def test_synthetic_noise_around_the_clean_solution():
    adata = synthetic(400, 100, seed=11)
    t = adata.obs["true_time"].to_numpy()[:, None]
    alpha, beta, gamma = (adata.var[k].to_numpy()[None, :] for k in ("true_alpha", "true_beta", "true_gamma"))
    u_clean = alpha / beta * (1 - np.exp(-5 * beta * t))
    s_clean = alpha / gamma * (1 - np.exp(-5 * gamma * t))
    for clean, name in ((u_clean, "unspliced"), (s_clean, "spliced")):
        resid = adata.layers[name] - clean
        away_from_zero = clean > 0.6  # clipping at 0 does not touch these (6 standard deviations)
        assert away_from_zero.sum() > 1000
        r = resid[away_from_zero]
        assert abs(r.mean()) < 0.01
        assert 0.095 < r.std() < 0.105
        # clipped entries are exactly where clean + noise went below 0
        assert (adata.layers[name][clean < 0.01] == 0).mean() > 0.3


def test_synthetic_rejects_bad_sizes():
    with pytest.raises(InputError, match="n_cells"):
        synthetic(n_cells=0)
    with pytest.raises(InputError, match="n_genes"):
        synthetic(n_genes=-1)


# --------------------------------------------------------------------------- simulation


def test_simulation_keys_and_shapes():
    adata = simulation(n_cells=60, n_genes=8, seed=2)
    assert adata.shape == (60, 8)
    expected = {"spliced", "unspliced", "true_velocity", "true_velocity_u", "true_spliced", "true_unspliced"}
    assert set(adata.layers.keys()) == expected
    for name in expected:
        assert adata.layers[name].dtype == np.float32
        assert np.isfinite(adata.layers[name]).all()
    np.testing.assert_array_equal(adata.X, adata.layers["spliced"])
    assert {"true_alpha", "true_beta", "true_gamma", "true_switch_time"} <= set(adata.var.columns)
    assert "true_time" in adata.obs
    info = adata.uns["velode_dataset"]
    assert info["name"] == "simulation" and info["seed"] == 2 and info["noise"] == "gaussian"
    assert info["n_cells"] == 60 and info["n_genes"] == 8


def test_simulation_parameter_ranges():
    adata = simulation(n_cells=100, n_genes=300, seed=5, t_max=2.0, switch_range=(0.4, 0.6))
    beta = adata.var["true_beta"].to_numpy()
    gamma = adata.var["true_gamma"].to_numpy()
    alpha = adata.var["true_alpha"].to_numpy()
    assert (np.abs(gamma - beta) > 0.05 * beta).all()
    assert ((alpha / beta >= 1 - 1e-9) & (alpha / beta <= 3 + 1e-9)).all()
    t_sw = adata.var["true_switch_time"].to_numpy()
    assert ((t_sw >= 0.8) & (t_sw <= 1.2)).all()
    t = adata.obs["true_time"].to_numpy()
    assert (t >= 0).all() and (t <= 2.0).all()
    for name in ("spliced", "unspliced", "true_spliced", "true_unspliced"):
        assert (adata.layers[name] >= 0).all()


def test_simulation_deterministic():
    a, b = simulation(40, 5, seed=9), simulation(40, 5, seed=9)
    for name in a.layers:
        np.testing.assert_array_equal(a.layers[name], b.layers[name])
    c = simulation(40, 5, seed=10)
    assert not np.array_equal(a.layers["spliced"], c.layers["spliced"])


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_simulation_velocity_matches_truth(noise):
    adata = simulation(n_cells=200, n_genes=20, seed=3, noise=noise)
    beta = adata.var["true_beta"].to_numpy()
    gamma = adata.var["true_gamma"].to_numpy()
    alpha = adata.var["true_alpha"].to_numpy()
    u = adata.layers["true_unspliced"].astype(np.float64)
    s = adata.layers["true_spliced"].astype(np.float64)
    scale = np.abs(adata.layers["true_velocity"]).max()
    np.testing.assert_allclose(adata.layers["true_velocity"], beta * u - gamma * s, atol=1e-5 * scale)
    on = adata.obs["true_time"].to_numpy()[:, None] <= adata.var["true_switch_time"].to_numpy()[None, :]
    expected_u = np.where(on, alpha, 0.0) - beta * u
    scale_u = np.abs(expected_u).max()
    np.testing.assert_allclose(adata.layers["true_velocity_u"], expected_u, atol=1e-5 * scale_u)
    # induction moves up, repression moves unspliced down
    assert (adata.layers["true_velocity_u"][~on] <= 0).all()
    assert (adata.layers["true_velocity_u"][on] >= 0).all()


def test_simulation_closed_form_matches_numerical_integration():
    adata = simulation(n_cells=50, n_genes=6, seed=4, t_max=1.5)
    t = adata.obs["true_time"].to_numpy()
    order = np.argsort(t)
    for g in range(4):
        alpha, beta, gamma, t_sw = (
            adata.var[k].iloc[g] for k in ("true_alpha", "true_beta", "true_gamma", "true_switch_time")
        )

        def rhs(time, y, a, beta=beta, gamma=gamma):
            return [a - beta * y[0], beta * y[0] - gamma * y[1]]

        first = solve_ivp(rhs, (0.0, t_sw), [0.0, 0.0], args=(alpha,), rtol=1e-10, atol=1e-12, dense_output=True)
        second = solve_ivp(
            rhs, (t_sw, 1.5), first.y[:, -1], args=(0.0,), rtol=1e-10, atol=1e-12, dense_output=True
        )
        ts = t[order]
        y = np.where(ts <= t_sw, first.sol(np.minimum(ts, t_sw)), second.sol(np.maximum(ts, t_sw)))
        np.testing.assert_allclose(adata.layers["true_unspliced"][order, g], y[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(adata.layers["true_spliced"][order, g], y[1], rtol=1e-5, atol=1e-6)


def test_simulation_gaussian_noise_level():
    adata = simulation(n_cells=2000, n_genes=10, seed=1, noise_level=0.05)
    for clean_name, name in (("true_spliced", "spliced"), ("true_unspliced", "unspliced")):
        clean = adata.layers[clean_name]
        sd = 0.05 * clean.max(axis=0)
        resid = (adata.layers[name] - clean) / sd
        away = clean > 5 * sd  # unaffected by clipping at 0
        assert abs(resid[away].std() - 1.0) < 0.05


def test_simulation_noise_free_when_level_zero():
    adata = simulation(n_cells=30, n_genes=4, seed=1, noise_level=0.0)
    np.testing.assert_array_equal(adata.layers["spliced"], adata.layers["true_spliced"])
    np.testing.assert_array_equal(adata.layers["unspliced"], adata.layers["true_unspliced"])


def test_simulation_poisson_counts_in_layer_units():
    gauss = simulation(n_cells=500, n_genes=10, seed=6, noise="gaussian")
    pois = simulation(n_cells=500, n_genes=10, seed=6, noise="poisson")
    for name in ("spliced", "unspliced"):
        x = pois.layers[name]
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, np.round(x))
        assert (x >= 0).all()
    peak = np.maximum(pois.layers["true_spliced"].max(0), pois.layers["true_unspliced"].max(0))
    assert ((peak > 19.9) & (peak < 50.1)).all()
    # same kinetics and times, clean values scaled per gene
    np.testing.assert_array_equal(gauss.obs["true_time"], pois.obs["true_time"])
    scale = pois.var["true_scale"].to_numpy()
    expected = gauss.layers["true_spliced"] * scale
    np.testing.assert_allclose(pois.layers["true_spliced"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pois.var["true_alpha"], gauss.var["true_alpha"] * scale)
    np.testing.assert_allclose(
        pois.layers["true_velocity"], gauss.layers["true_velocity"] * scale, rtol=1e-4, atol=1e-4 * scale.max()
    )
    # counts are centred on the clean values
    ratio = pois.layers["spliced"].sum(0) / pois.layers["true_spliced"].sum(0)
    assert np.all(np.abs(ratio - 1) < 0.05)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise": "laplace"}, "'gaussian', 'poisson'"),
        ({"n_cells": 0}, "n_cells"),
        ({"n_genes": 0}, "n_genes"),
        ({"noise_level": -0.1}, "noise_level"),
        ({"t_max": 0.0}, "t_max"),
        ({"switch_range": (0.8, 0.2)}, "switch_range"),
        ({"switch_range": 0.5}, "switch_range"),
    ],
)
def test_simulation_argument_validation(kwargs, match):
    with pytest.raises(InputError, match=match) as info:
        simulation(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("make", [lambda: synthetic(20, 5), lambda: simulation(20, 5, noise="poisson")])
def test_datasets_round_trip_through_h5ad(tmp_path, make):
    adata = make()
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    for name in adata.layers:
        np.testing.assert_array_equal(back.layers[name], adata.layers[name])
    assert back.uns["velode_dataset"]["name"] == adata.uns["velode_dataset"]["name"]
