"""The clock-following velocities of scripts/clock_ceiling.py recover the truth where it is known."""

import numpy as np
import scipy.sparse as sp
from helpers import load_script

import velode


def _cosines(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def _simulated(n_cells=400, n_genes=20, k=10):
    a = velode.datasets.simulation(n_cells=n_cells, n_genes=n_genes, seed=1)
    t = np.asarray(a.obs["true_time"], float)
    s = np.asarray(a.layers["true_spliced"], float)
    v = np.asarray(a.layers["true_velocity"], float)
    order = np.argsort(np.abs(t[:, None] - t[None, :]), axis=1)[:, 1:k + 1]  # neighbours in true time
    graph = sp.csr_matrix((np.ones(order.size), (np.repeat(np.arange(n_cells), k), order.ravel())),
                          shape=(n_cells, n_cells))
    return t, s, v, graph


def test_local_slope_along_the_true_time_is_the_true_velocity():
    cc = load_script("scripts/clock_ceiling.py")
    t, s, v, graph = _simulated()
    slope = cc.local_slope(s, t, graph)
    assert np.median(_cosines(slope, v)) > 0.99
    # along a reversed clock it points the other way; a shuffled clock gives each cell a coin-flip direction
    assert np.median(_cosines(cc.local_slope(s, -t, graph), v)) < -0.99
    shuffled = np.random.default_rng(0).permutation(t)
    assert 0.2 < np.mean(_cosines(cc.local_slope(s, shuffled, graph), v) > 0) < 0.8


def test_trend_slope_is_the_derivative_of_the_mean_trajectory():
    cc = load_script("scripts/clock_ceiling.py")
    t, s, v, _ = _simulated()
    inner = (t > 0.05) & (t < 0.95)  # away from the ends, where a kernel regression is one-sided
    assert np.median(_cosines(cc.trend_slope(s, t, 0.02)[inner], v[inner])) > 0.98
    assert np.median(_cosines(cc.trend_slope(s, t, 0.02, block=7)[inner], v[inner])) > 0.98


def test_stage_clock_orders_by_stage_first_then_by_latent_time():
    cc = load_script("scripts/clock_ceiling.py")
    clusters = np.array(["Beta", "Ductal", "Ngn3 high EP", "Ductal", "Pre-endocrine", "Ngn3 low EP", "Delta"])
    t = np.array([0.1, 0.9, 0.2, 0.3, 0.0, 0.95, 0.5])
    clock = cc.stage_clock(clusters, t, 1.0)
    # every cell of a later stage after every cell of an earlier one, even against the latent time
    assert list(np.argsort(clock)) == [3, 1, 5, 2, 4, 0, 6]
    # within a stage the latent time orders the cells; the sister lineages share one stage
    assert clock[1] > clock[3] and clock[6] > clock[0]
    # a short stage lets the latent time overlap the stages: Ductal at 0.9 comes after Ngn3 low EP at 0.3...
    short = cc.stage_clock(clusters, np.array([0.1, 0.9, 0.2, 0.3, 0.0, 0.3, 0.5]), 0.1)
    assert short[1] > short[5]
    # ...and the stage order alone, with no latent time, is a step function of the labels
    np.testing.assert_array_equal(cc.stage_clock(clusters, np.zeros(7), 2.0), [8, 0, 4, 0, 6, 2, 8])


def test_plot_rows_draws_the_named_velocities(tmp_path):
    cc = load_script("scripts/clock_ceiling.py")
    edges = {f"CBDir {a} -> {b}": v for (a, b), v in zip(velode.metrics.PANCREAS_TRANSITIONS, np.linspace(-0.1, 0.7, 7))}
    rows = {"model": {"CBDir": 0.5, **edges, "ICCoh": 0.9},
            "local slope (velode clock)": {"CBDir": 0.55, **edges, "CBDir, mean over UMAPs": 0.5}}
    path = tmp_path / "c.png"
    cc.plot_rows(rows, path, ["model", "local slope (velode clock)", "not a row"])
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 1000  # 11 x 4.8 inches at 120 dpi
    assert img[..., :3].std() > 0.05  # something is drawn


def _poisson_truth(n_cells=600, n_genes=50):
    a = velode.datasets.simulation(n_cells=n_cells, n_genes=n_genes, noise="poisson", seed=2)
    t = np.asarray(a.obs["true_time"], float)
    order = np.argsort(t)
    curves = (np.asarray(a.layers["true_spliced"], float)[order], np.asarray(a.layers["true_unspliced"], float)[order])
    return a, t, t[order], curves


def test_count_clock_reads_the_true_time_off_poisson_counts():
    from scipy.stats import spearmanr

    cc = load_script("scripts/clock_ceiling.py")
    a, t, grid, (s_grid, u_grid) = _poisson_truth()
    xs, xu = np.asarray(a.layers["spliced"], float), np.asarray(a.layers["unspliced"], float)
    ones = np.ones(a.n_obs)
    found = cc.count_clock(xs, xu, ones, ones, s_grid, u_grid, grid)
    assert spearmanr(found, t)[0] > 0.95
    assert np.median(np.abs(found - t)) < 0.05 * (t.max() - t.min())
    # a cell sequenced three times as deep, with its size factor given, is placed where it was
    deep = np.where(np.arange(a.n_obs) % 2 == 0, 3.0, 1.0)
    again = cc.count_clock(sp.csr_matrix(xs * deep[:, None]), sp.csr_matrix(xu * deep[:, None]), deep, deep,
                           s_grid, u_grid, grid, block=97)
    np.testing.assert_array_equal(again, found)
    # without its size factor the deep cell looks like a cell with more RNA: a different time
    blind = cc.count_clock(xs * deep[:, None], xu * deep[:, None], ones, ones, s_grid, u_grid, grid)
    assert np.mean(blind[deep > 1] != found[deep > 1]) > 0.5
    assert np.array_equal(blind[deep == 1], found[deep == 1])


def test_size_factors_undo_a_per_cell_normalisation():
    cc = load_script("scripts/clock_ceiling.py")
    rng = np.random.default_rng(0)
    raw = sp.csr_matrix(rng.poisson(3.0, size=(40, 30)).astype(float))
    f = rng.uniform(0.5, 2.0, size=40)
    np.testing.assert_allclose(cc.size_factors(raw, sp.diags(1 / f) @ raw), f, rtol=1e-12)


def test_velocity_pseudotime_follows_the_true_velocity():
    import scvelo as scv
    from scipy.stats import spearmanr

    cc = load_script("scripts/clock_ceiling.py")
    a = velode.datasets.simulation(n_cells=300, n_genes=30, seed=3)
    scv.pp.moments(a, n_pcs=10, n_neighbors=15)
    truth = np.asarray(a.layers["true_velocity"], float)
    vpt = cc.velocity_pseudotime(a, truth, np.ones(a.n_vars, bool))
    assert spearmanr(vpt, a.obs["true_time"])[0] > 0.9
    assert spearmanr(cc.velocity_pseudotime(a, -truth, np.ones(a.n_vars, bool)), a.obs["true_time"])[0] < -0.9
