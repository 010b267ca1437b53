"""Pieces that keep memory near the data's own size: blocked generation, statistics and projection."""

import numpy as np
import pytest

import velode.datasets._simulation as sim
from velode._fit import by_genes
from velode.datasets import simulation, simulation_truth
from velode.model._encoder import fit_feature_map, project_cells


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_simulation_in_blocks_is_the_same_data(monkeypatch, noise):
    whole = simulation(n_cells=300, n_genes=20, seed=4, noise=noise)
    monkeypatch.setattr(sim, "BLOCK_CELLS", 64)  # 300 cells: 5 blocks, the last one short
    blocked = simulation(n_cells=300, n_genes=20, seed=4, noise=noise)
    for key in whole.layers:
        np.testing.assert_array_equal(blocked.layers[key], whole.layers[key])
    np.testing.assert_array_equal(blocked.var.to_numpy(), whole.var.to_numpy())


def test_simulation_without_truth_layers_recomputes_them():
    full = simulation(n_cells=200, n_genes=15, seed=1, noise="poisson")
    lean = simulation(n_cells=200, n_genes=15, seed=1, noise="poisson", truth_layers=False)
    assert set(lean.layers) == {"spliced", "unspliced"} and lean.X is None
    np.testing.assert_array_equal(lean.layers["spliced"], full.layers["spliced"])
    cells = np.arange(50, 90)
    truth = simulation_truth(lean, cells)
    for key, value in truth.items():
        np.testing.assert_allclose(value, full.layers[key][cells], rtol=1e-6, atol=1e-6)


def test_per_gene_statistics_in_blocks_match_whole_matrix():
    x = np.random.default_rng(0).gamma(2.0, size=(500, 700)).astype(np.float32)
    np.testing.assert_array_equal(by_genes(lambda a: np.quantile(a, 0.98, axis=0), x, block=128),
                                  np.quantile(x, 0.98, axis=0))
    np.testing.assert_array_equal(by_genes(lambda a: a.std(0), x, block=100), x.std(0))


def test_feature_map_of_many_cells_uses_every_cell_for_scaling():
    rng = np.random.default_rng(1)
    latent = rng.normal(size=(900, 2)) * [3.0, 2.0]  # two strong directions, then noise
    s = (5 + latent @ rng.normal(size=(2, 40)) + rng.normal(size=(900, 40))).astype(np.float32)
    u = (5 + latent @ rng.normal(size=(2, 40)) + rng.normal(size=(900, 40))).astype(np.float32)
    exact = fit_feature_map((s, u), 5)
    blocked = fit_feature_map((s, u), 5, max_cells=200)  # statistics in blocks, axes from 200 cells
    np.testing.assert_allclose(np.asarray(blocked.mean), np.asarray(exact.mean), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(blocked.scale), np.asarray(exact.scale), rtol=1e-4)
    # The axes of 200 random cells span nearly the same leading subspace as those of all 900.
    a, b = np.asarray(exact.components), np.asarray(blocked.components)
    a, b = np.linalg.qr(a)[0], np.linalg.qr(b)[0]
    cos = np.linalg.svd(a[:, :2].T @ b, compute_uv=False)
    assert cos.min() > 0.9
    # Cells projected in blocks are projected exactly as all at once.
    np.testing.assert_allclose(np.asarray(project_cells(exact, (s, u), block_cells=128)),
                               np.asarray(project_cells(exact, (s, u))), rtol=1e-5, atol=1e-5)


def test_truth_metrics_without_truth_layers_match_with_them():
    import velode

    a = simulation(n_cells=400, n_genes=15, seed=1)
    a.layers["Ms"], a.layers["Mu"] = a.layers["spliced"], a.layers["unspliced"]
    velode.tl.fit(a, trainer={"max_steps": 40, "progress": False},
                  model={"probe_steps": 10, "assign_rounds": 0, "pretrain_steps": 20})
    with_layers = velode.metrics.truth_metrics(a)
    for key in sim.TRUTH_LAYERS:
        del a.layers[key]
    without = velode.metrics.truth_metrics(a)
    assert set(without) == set(with_layers)
    for key, value in with_layers.items():
        assert without[key] == pytest.approx(value, rel=1e-6), key


def test_fitted_matrices_are_read_in_place_by_jax():
    from velode import _aligned
    from velode._train import TrainData

    a = simulation(n_cells=300, n_genes=40, seed=0, truth_layers=False)
    s, u = a.layers["spliced"], a.layers["unspliced"]
    assert _aligned.is_aligned(s) and _aligned.is_aligned(u)
    data = TrainData.build(np.zeros((300, 3), np.float32), u, s, np.ones(40), np.ones(40), np.ones(40))
    assert data.obs_s.unsafe_buffer_pointer() == s.ctypes.data  # the same memory, not a copy
    assert data.obs_u.unsafe_buffer_pointer() == u.ctypes.data
    # A misaligned array is copied once onto the boundary, with the same values.
    raw = np.arange(401, dtype=np.float32)[1:].reshape(4, 100)  # starts 4 bytes past an allocation
    assert not _aligned.is_aligned(raw)
    fixed = _aligned.aligned(raw)
    assert _aligned.is_aligned(fixed) and fixed.flags.c_contiguous
    np.testing.assert_array_equal(fixed, raw)
    assert _aligned.aligned(fixed) is fixed
