"""The Python API: velode.tl.fit on synthetic data, a switching simulation and the real pancreas file."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

import velode

PANCREAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pancreas.h5ad"
QUIET = {"progress": False}


def small(n_cells=120, n_genes=15, seed=0):
    return velode.pp.preprocess(velode.datasets.simulation(n_cells=n_cells, n_genes=n_genes, seed=seed), method="none")


def test_fit_writes_scvelo_keys():
    a = small()
    r = velode.tl.fit(a, trainer={**QUIET, "max_steps": 50}, model={"probe_steps": 5, "assign_rounds": 1})
    assert a.layers["velocity"].shape == a.shape
    assert a.layers["velocity_u"].shape == a.shape
    lt = a.obs["latent_time"].to_numpy()
    assert np.all((lt >= 0) & (lt <= 1))
    for key in ["fit_alpha", "fit_beta", "fit_gamma", "fit_scaling", "fit_t_", "fit_r2", "velocity_genes"]:
        assert key in a.var
    assert np.all(a.var["fit_beta"] > 0) and np.all(a.var["fit_gamma"] > 0)
    assert a.var["velocity_genes"].dtype == bool
    assert a.uns["velode"]["steps"] == r.state.step <= 50
    # velocity is ds/dt of the fitted kinetics at each cell's fitted state
    v = a.var["fit_beta"].to_numpy() * a.layers["fit_u"] / a.var["fit_scaling"].to_numpy() - a.var[
        "fit_gamma"
    ].to_numpy() * a.layers["fit_s"]
    np.testing.assert_allclose(a.layers["velocity"], v, rtol=1e-4, atol=1e-5)


def test_projected_spliced_is_the_state_one_horizon_later():
    """Standard kinetics (constant rates): s(t + h) follows from (u(t), s(t)) by the closed form."""
    from velode.model._closed_form import solve_constant

    a = small()
    velode.tl.fit(a, kinetics="standard", loss={"horizon": 0.1}, trainer={**QUIET, "max_steps": 40},
                  model={"probe_steps": 5, "assign_rounds": 0, "cell_phase": 0.25})
    v = a.var
    assert "velode_cell_z" in a.obsm  # each cell its own alpha
    u0 = a.layers["fit_u"] / v["fit_scaling"].to_numpy()
    _, s1 = solve_constant(u0, a.layers["fit_s"], velode.tl.cell_alpha(a), v["fit_beta"].to_numpy(),
                           v["fit_gamma"].to_numpy(), 0.1)
    assert a.uns["velode"]["horizon"] == 0.1
    assert not np.allclose(a.layers["projected_spliced"], a.layers["fit_s"], rtol=1e-3)
    np.testing.assert_allclose(a.layers["projected_spliced"], np.asarray(s1), rtol=2e-3, atol=1e-4)


def test_fitted_curves_pass_through_the_cells_states():
    a = small()
    # the genes' own trajectories: exact for a fit without cell-specific transcription
    velode.tl.fit(a, trainer={**QUIET, "max_steps": 40}, model={"probe_steps": 5, "assign_rounds": 0, "cell_rank": 0})
    assert "velode_cell_z" not in a.obsm
    np.testing.assert_array_equal(velode.tl.cell_alpha(a), np.broadcast_to(a.var["fit_alpha"].to_numpy(), a.shape))
    t, u, s = velode.tl.fitted_curves(a, n_points=4001)
    idx = np.rint(a.obs["latent_time"].to_numpy() * 4000).astype(int)
    scale = np.abs(a.layers["fit_s"]).max()
    assert np.abs(s[:, idx].T - a.layers["fit_s"]).max() < 5e-3 * scale
    assert np.abs(u[:, idx].T - a.layers["fit_u"]).max() < 5e-3 * np.abs(a.layers["fit_u"]).max()


def test_same_seed_same_result_and_minibatches():
    kw = dict(trainer={**QUIET, "max_steps": 30, "batch_size": 50}, model={"probe_steps": 5, "assign_rounds": 1})
    a, b = small(), small()
    velode.tl.fit(a, seed=4, **kw)
    velode.tl.fit(b, seed=4, **kw)
    np.testing.assert_array_equal(a.layers["velocity"], b.layers["velocity"])
    np.testing.assert_array_equal(a.obs["latent_time"], b.obs["latent_time"])


def test_root_cluster_starts_the_clock():
    a = small(n_cells=200, n_genes=20)
    true_t = a.obs["true_time"].to_numpy()
    stage = np.where(true_t < 0.2, "early", np.where(true_t > 0.8, "late", "mid"))
    a.obs["stage"] = pd.Categorical(stage)
    velode.tl.fit(a, root_cluster="early", trainer=QUIET, cluster_key="stage")
    assert a.uns["velode"]["orientation"] == "root"
    t = a.obs["latent_time"].to_numpy()
    means = {k: t[stage == k].mean() for k in ("early", "mid", "late")}
    assert means["early"] < means["mid"] < means["late"]
    with pytest.raises(velode.InputError, match="nowhere"):
        velode.tl.fit(a.copy(), root_cluster="nowhere", trainer=QUIET, cluster_key="stage")


def test_fit_without_moments_says_what_to_run():
    a = velode.datasets.simulation(n_cells=30, n_genes=5)
    with pytest.raises(velode.InputError, match="preprocess"):
        velode.tl.fit(a)


def test_unknown_options_are_refused():
    a = small(n_cells=30, n_genes=5)
    with pytest.raises(velode.ConfigError, match="kinetics"):
        velode.tl.fit(a, kinetics="nonsense")
    with pytest.raises(velode.ConfigError, match="lrr"):
        velode.tl.fit(a, trainer={"lrr": 1.0})


@pytest.mark.slow
def test_synthetic_target_latent_time():
    a = velode.pp.preprocess(velode.datasets.synthetic(), method="none")
    velode.tl.fit(a, trainer=QUIET)
    m = velode.metrics.truth_metrics(a)
    assert m["latent_time_spearman"] >= 0.99


@pytest.mark.slow
def test_switching_simulation_targets():
    a = velode.pp.preprocess(velode.datasets.simulation(n_cells=1000, n_genes=100, seed=0), method="none")
    velode.tl.fit(a, trainer=QUIET)
    m = velode.metrics.truth_metrics(a)
    assert m["latent_time_spearman"] >= 0.99
    assert m["velocity_sign_agreement"] >= 0.96
    assert m["velocity_cosine"] >= 0.96
    assert m["fraction_velocity_genes"] >= 0.85


@pytest.mark.slow
@pytest.mark.skipif(not PANCREAS.exists(), reason="needs ../shared/data/pancreas.h5ad")
def test_pancreas_ductal_first_endocrine_last():
    a = velode.pp.preprocess(velode.read(PANCREAS))
    velode.tl.fit(a, trainer=QUIET)
    med = a.obs["latent_time"].groupby(a.obs["clusters"], observed=True).median()
    endocrine = ["Alpha", "Beta", "Delta", "Epsilon"]
    assert med["Ductal"] == med.min()
    assert med[endocrine].min() >= med.drop(endocrine).max()
    assert a.var["velocity_genes"].sum() > 100
    assert np.isfinite(a.layers["velocity"]).all()


def test_cell_specific_phase_keeps_the_clock():
    """model.cell_phase: cell-specific transcription is learned after the clock, which it leaves untouched."""
    a, b = small(), small()
    common = {"probe_steps": 5, "assign_rounds": 1}
    velode.tl.fit(a, trainer={**QUIET, "max_steps": 40}, model={**common, "cell_rank": 0})
    # the same clock budget (40 steps), then 10 more steps (a fifth of 50) for the cell-specific phase
    r = velode.tl.fit(b, trainer={**QUIET, "max_steps": 50, "patience": 0},
                      model={**common, "cell_rank": 2, "cell_phase": 0.2})
    assert r.model.modulator is not None
    assert r.state.step == 50
    np.testing.assert_array_equal(a.obs["latent_time"].to_numpy(), b.obs["latent_time"].to_numpy())
    # the modulation was trained: some cells transcribe some genes differently from others
    mult = np.asarray(r.model.modulator.scale(r.model.modulator.embed(r.data.features[: r.data.n_cells])))
    assert np.ptp(mult, axis=0).max() > 1e-3
    assert b.uns["velode"]["final_loss"] <= a.uns["velode"]["final_loss"] + 1e-6


def test_cell_specific_phase_is_skipped_with_a_numerical_solver():
    import diffrax

    a = small(n_cells=60, n_genes=5)
    with pytest.warns(UserWarning, match="needs the closed form"):
        r = velode.tl.fit(a, solver=diffrax.Tsit5(), trainer={**QUIET, "max_steps": 10},
                          model={"probe_steps": 2, "assign_rounds": 0, "cell_rank": 2})
    assert r.model.modulator is None and r.state.step <= 10


def test_unspliced_far_below_spliced_still_turns_genes_down():
    """Unspliced counts 1/200 of the spliced ones (as for hormone genes): the fit must still find the
    repression (negative velocity after the switch), not explain s by a gene that never degrades it."""
    a = velode.datasets.simulation(n_cells=400, n_genes=20, seed=1)
    a.layers["unspliced"] = a.layers["unspliced"] / 200.0
    a = velode.pp.preprocess(a, method="none")
    velode.tl.fit(a, trainer={**QUIET, "max_steps": 600}, model={"cell_rank": 0})
    m = velode.metrics.truth_metrics(a)
    assert m["latent_time_spearman"] >= 0.95
    assert m["velocity_sign_agreement"] >= 0.9
    # the fitted degradation rates are of the order of the true ones, not collapsed towards 0
    ratio = a.var["fit_gamma"] / a.var["fit_beta"]
    true_ratio = a.var["true_gamma"] / a.var["true_beta"]
    assert np.median(ratio / true_ratio) > 0.3


def test_starting_kinetics_from_precomputed_quantiles_are_the_same():
    """fit_arrays computes the clock-independent quantiles once for every candidate clock: the rates must be
    those computed from scratch at each clock."""
    from velode._fit import ModelConfig, _high_quantiles, _init_kinetics

    rng = np.random.default_rng(0)
    s = rng.gamma(2.0, 1.0, (300, 12)).astype(np.float32)
    u = (rng.gamma(2.0, 1.0, (300, 12)) / rng.uniform(1, 300, 12)).astype(np.float32)
    high = _high_quantiles(s, u)
    for t in (rng.uniform(size=300), np.linspace(1, 0, 300)):
        a = _init_kinetics("dynamical", t, s, u, ModelConfig())
        b = _init_kinetics("dynamical", t, s, u, ModelConfig(), high)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_an_empty_stretch_of_the_clock_above_the_median_is_found():
    """_gap_start: where cells placed beyond an unused stretch of the clock begin to be cut off, or None."""
    from velode._fit import _gap_start

    rng = np.random.default_rng(0)
    bulk = rng.uniform(0.0, 0.6, 900)
    # the earliest cells fitted at the far, unused end of the clock (a gene back from repression)
    start = _gap_start(np.concatenate([bulk, rng.uniform(0.95, 1.0, 100)]), 0.1)
    assert start == pytest.approx(bulk.max())
    assert _gap_start(rng.uniform(0.0, 1.0, 1000), 0.1) is None  # no stretch as long
    # an empty stretch below the median (a population ahead of the rest) is left alone
    assert _gap_start(np.concatenate([rng.uniform(0.0, 0.05, 100), rng.uniform(0.4, 1.0, 900)]), 0.1) is None
    assert _gap_start(np.concatenate([bulk, rng.uniform(0.65, 1.0, 100)]), 0.1) is None  # 0.05 < 0.1


def test_times_are_assigned_on_the_grid_up_to_t_max():
    """assign_times(t_max=...): each cell's least-squares best among the grid points of [0, t_max] (brute force)."""
    from velode._fit import ModelConfig, _init_kinetics, assign_times
    from velode._train import TrainData
    from velode.model._solve import Integrator, evaluate

    rng = np.random.default_rng(1)
    n, g, n_grid = 150, 10, 50
    s = rng.gamma(2.0, 1.0, (n, g)).astype(np.float32)
    u = rng.gamma(2.0, 0.5, (n, g)).astype(np.float32)
    kin = _init_kinetics("dynamical", rng.uniform(size=n), s, u, ModelConfig())
    w = rng.uniform(0.5, 1.5, g).astype(np.float32)
    inv_u, inv_s = (1 / u.std(0)).astype(np.float32), (1 / s.std(0)).astype(np.float32)
    data = TrainData.build(np.zeros((n, 3), np.float32), u, s, inv_u, inv_s, w, chunk=32)
    for t_max in (1.0, 0.3):
        t = np.asarray(assign_times(kin, data, Integrator(), n_grid, block=64, t_max=t_max))
        grid = np.linspace(0.0, 1.0, n_grid) * t_max
        pu, ps, _ = evaluate(kin, jnp.asarray(grid, jnp.float32)[:, None], Integrator(), t_end=1.0)
        pu, ps = np.asarray(pu) * np.asarray(kin.scale), np.asarray(ps)
        cost = (((u[:, None] - pu[None]) * inv_u) ** 2 * w).sum(-1) + (((s[:, None] - ps[None]) * inv_s) ** 2 * w).sum(-1)
        best = cost.min(1)
        chosen = cost[np.arange(n), np.clip(np.rint(t / t_max * (n_grid - 1)).astype(int), 0, n_grid - 1)]
        assert t.max() <= t_max + 1e-6
        np.testing.assert_allclose(chosen, best, rtol=1e-4)


def test_starting_modules_drawn_on_the_host_follow_equinox_and_compile_nothing(caplog):
    """A NumPy generator as key: the structure and init distribution of the JAX-key modules, no compiled program."""
    import logging

    from velode.model._encoder import TimeEncoder
    from velode.model._model import CellModulator

    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        enc = TimeEncoder(7, width=16, depth=2, key=np.random.default_rng(3))
        mod = CellModulator(7, 40, 3, key=np.random.default_rng(3), init_scale=1e-2)
    programs = {r.getMessage().split()[4] for r in caplog.records if "Finished XLA compilation" in r.getMessage()}
    # Transfers of the drawn arrays to the device may compile a copy ("stage"); nothing else may compile.
    assert not {p for p in programs if "stage" not in p}, programs
    ref = TimeEncoder(7, width=16, depth=2, key=jax.random.key(0))
    assert jax.tree_util.tree_structure(enc) == jax.tree_util.tree_structure(ref)
    for got, want in zip(enc.mlp.layers, ref.mlp.layers):
        lim = 1 / np.sqrt(want.in_features)
        for a, b in ((got.weight, want.weight), (got.bias, want.bias)):
            a = np.asarray(a)
            assert a.shape == b.shape and a.dtype == b.dtype
            assert np.all(np.abs(a) <= lim)  # uniform on +-1/sqrt(inputs)
            assert a.size < 10 or np.abs(a).max() > 0.5 * lim
    again = TimeEncoder(7, width=16, depth=2, key=np.random.default_rng(3))
    other = TimeEncoder(7, width=16, depth=2, key=np.random.default_rng(4))
    w = lambda e: np.asarray(e.mlp.layers[0].weight)  # noqa: E731
    assert np.array_equal(w(enc), w(again)) and not np.array_equal(w(enc), w(other))
    ref_mod = CellModulator(7, 40, 3, key=jax.random.key(0), init_scale=1e-2)
    assert mod.proj.shape == ref_mod.proj.shape and mod.loadings.shape == ref_mod.loadings.shape
    assert mod.proj.dtype == ref_mod.proj.dtype == jnp.float32
    # proj ~ N(0, 1/features), loadings ~ N(0, init_scale^2)
    assert 0.5 < np.std(np.asarray(mod.proj)) * np.sqrt(7) < 1.5
    assert 0.5e-2 < np.std(np.asarray(mod.loadings)) < 1.5e-2


def test_time_key_starts_the_clock_and_freeze_clock_keeps_it():
    a = small(n_cells=200, n_genes=20)
    true_t = a.obs["true_time"].to_numpy()
    a.obs["hours"] = 3.0 + 48.0 * true_t**2  # any units, any monotone map of the truth
    quick = dict(trainer={**QUIET, "max_steps": 60}, model={"probe_steps": 5, "assign_rounds": 1})
    kept = []
    for steps in (40, 80):
        b = a.copy()
        velode.tl.fit(b, time_key="hours", trainer={**QUIET, "max_steps": steps},
                      model={"freeze_clock": True, "probe_steps": 5, "assign_rounds": 1})
        assert b.uns["velode"]["orientation"] == "given"
        kept.append(b.obs["latent_time"].to_numpy())
    # the clock is the one given (as the encoder follows it) and training does not move it
    assert spearmanr(kept[0], true_t)[0] > 0.99
    np.testing.assert_array_equal(kept[0], kept[1])
    # without freeze_clock, the given clock only starts the fit: training moves it
    c = a.copy()
    velode.tl.fit(c, time_key="hours", **quick)
    assert c.uns["velode"]["orientation"] == "given"
    assert not np.array_equal(c.obs["latent_time"].to_numpy(), kept[0])
    # a frozen clock is kept even when it runs backwards: it is the user's
    a.obs["backwards"] = -a.obs["hours"]
    d = a.copy()
    velode.tl.fit(d, time_key="backwards", trainer={**QUIET, "max_steps": 40}, model={"freeze_clock": True})
    assert spearmanr(d.obs["latent_time"], true_t)[0] < -0.99
