"""Tests of preprocessing: filtering, normalisation, moments."""

import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from velode import pp
from velode._errors import InputError
from velode.datasets import simulation, synthetic

PANCREAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pancreas.h5ad"


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _check_moments_by_hand(adata, cells, spliced, unspliced):
    """Ms/Mu of each cell in ``cells`` equal the mean of ``spliced``/``unspliced`` over it and its neighbours."""
    conn = adata.obsp["connectivities"].tocsr()
    for i in cells:
        row = conn[i].toarray().ravel()
        members = sorted(set(np.flatnonzero(row > 0)) | {i})
        assert len(members) > 1
        for moment, layer in (("Ms", spliced), ("Mu", unspliced)):
            expected = _dense(layer[members]).mean(axis=0)
            np.testing.assert_allclose(adata.layers[moment][i], expected, rtol=1e-5, atol=1e-6)


def _tiny_counts():
    """4 cells x 3 genes with known shared counts: gene_a 40, gene_b 0 (never both expressed), gene_c 12."""
    s = np.array([[5, 9, 1], [5, 0, 1], [5, 9, 1], [5, 0, 1]], dtype=np.float32)
    u = np.array([[5, 0, 2], [5, 9, 2], [5, 0, 2], [0, 9, 0]], dtype=np.float32)
    # gene_a: cells 0-2 have both: 3 * (5 + 5) = 30; gene_c: cells 0-2: 3 * (1 + 2) = 9
    adata = ad.AnnData(X=s.copy(), layers={"spliced": s, "unspliced": u})
    adata.var_names = ["gene_a", "gene_b", "gene_c"]
    return adata


# --------------------------------------------------------------------------- method "none"


def test_preprocess_none_fits_layers_as_given():
    adata = synthetic(120, 15, seed=3)
    out = pp.preprocess(adata, method="none", n_neighbors=10)
    assert out is not adata and "Ms" not in adata.layers
    np.testing.assert_array_equal(out.layers["Ms"], adata.layers["spliced"])
    np.testing.assert_array_equal(out.layers["Mu"], adata.layers["unspliced"])
    assert out.layers["Ms"].dtype == np.float32 and isinstance(out.layers["Ms"], np.ndarray)
    # Dense float32 layers are fitted as they are: the same arrays, no second copy of the data.
    assert out.layers["Ms"] is out.layers["spliced"] and out.layers["Mu"] is out.layers["unspliced"]
    assert out.obsm["X_pca"].shape == (120, 14)
    assert out.obsp["connectivities"].shape == (120, 120)
    assert "neighbors" in out.uns
    assert list(out.obs.columns) == ["true_time"]
    assert {"true_alpha", "true_beta", "true_gamma"} <= set(out.var.columns)
    assert out.uns["velode_pp"]["method"] == "none"


def test_preprocess_none_sparse_and_missing_x():
    adata = simulation(50, 6, seed=1, noise="poisson")
    s = sp.csr_matrix(adata.layers["spliced"])
    u = sp.csr_matrix(adata.layers["unspliced"])
    bare = ad.AnnData(layers={"spliced": s, "unspliced": u}, obs=adata.obs, var=adata.var)
    assert bare.X is None
    out = pp.preprocess(bare, method="none", n_neighbors=5)
    # Sparse layers stay sparse (the fit densifies one batch of cells at a time).
    assert sp.issparse(out.layers["Ms"]) and sp.issparse(out.layers["Mu"])
    np.testing.assert_array_equal(out.layers["Ms"].toarray(), adata.layers["spliced"])
    np.testing.assert_array_equal(out.layers["Mu"].toarray(), adata.layers["unspliced"])
    np.testing.assert_array_equal(_dense(out.X), adata.layers["spliced"])
    assert "true_switch_time" in out.var


def test_preprocess_none_two_cells_skips_graph():
    out = pp.preprocess(synthetic(2, 4), method="none")
    assert "Ms" in out.layers and "X_pca" not in out.obsm and "connectivities" not in out.obsp


def test_preprocess_copy_false_works_in_place():
    adata = synthetic(40, 5)
    out = pp.preprocess(adata, method="none", n_neighbors=5, copy=False)
    assert out is adata and "Ms" in adata.layers


def test_preprocess_unknown_method():
    with pytest.raises(InputError) as info:
        pp.preprocess(synthetic(10, 3), method="velocyto")
    message = str(info.value)
    assert "'scvelo'" in message and "'none'" in message and "\n" not in message


def test_preprocess_validates_first():
    adata = synthetic(10, 3)
    del adata.layers["unspliced"]
    with pytest.raises(InputError, match="'unspliced' is missing"):
        pp.preprocess(adata, method="none")


def test_preprocess_drops_all_zero_genes_with_warning():
    adata = synthetic(30, 6)
    adata.layers["spliced"][:, 2] = 0
    adata.layers["unspliced"][:, 2] = 0
    with pytest.warns(UserWarning, match="dropped 1 of 6"):
        out = pp.preprocess(adata, method="none", n_neighbors=5)
    assert out.n_vars == 5 and "gene_2" not in out.var_names
    assert adata.n_vars == 6


def test_preprocess_prints_nothing(capfd):
    pp.preprocess(synthetic(60, 10), n_top_genes=5, n_neighbors=10)
    pp.preprocess(synthetic(60, 10), method="none", n_neighbors=10)
    captured = capfd.readouterr()
    assert captured.out == ""


# --------------------------------------------------------------------------- filter_and_normalize


def test_shared_counts_filter():
    adata = _tiny_counts()
    out = pp.filter_and_normalize(adata, min_shared_counts=9, n_top_genes=None, copy=True)
    assert list(out.var_names) == ["gene_a", "gene_c"]
    out = pp.filter_and_normalize(_tiny_counts(), min_shared_counts=0, n_top_genes=None, copy=True)
    assert out.n_vars == 3
    with pytest.raises(InputError, match="lower min_shared_counts") as info:
        pp.filter_and_normalize(_tiny_counts(), min_shared_counts=10, n_top_genes=None)
    assert "\n" not in str(info.value)


def test_shared_counts_filter_sparse_matches_dense():
    dense = synthetic(80, 30, seed=5)
    # make some genes sparse enough to be filtered
    dense.layers["unspliced"][dense.layers["unspliced"] < 0.8] = 0
    sparse = dense.copy()
    for name in ("spliced", "unspliced"):
        sparse.layers[name] = sp.csr_matrix(sparse.layers[name])
    a = pp.filter_and_normalize(dense, min_shared_counts=60, n_top_genes=None, copy=True)
    b = pp.filter_and_normalize(sparse, min_shared_counts=60, n_top_genes=None, copy=True)
    assert 2 <= a.n_vars < 30
    assert list(a.var_names) == list(b.var_names)
    np.testing.assert_allclose(_dense(b.layers["spliced"]), a.layers["spliced"], rtol=1e-5)
    np.testing.assert_allclose(_dense(b.X), a.X, rtol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_normalisation_to_median_total(sparse):
    adata = simulation(60, 12, seed=2, noise="poisson")
    raw_s = adata.layers["spliced"].copy()
    if sparse:
        for name in ("spliced", "unspliced"):
            adata.layers[name] = sp.csr_matrix(adata.layers[name])
    pp.filter_and_normalize(adata, min_shared_counts=0, n_top_genes=None)
    for name in ("spliced", "unspliced"):
        totals = _dense(adata.layers[name]).sum(axis=1)
        nonzero = totals > 0
        np.testing.assert_allclose(totals[nonzero], np.median(totals[nonzero]), rtol=1e-4)
    raw_totals = raw_s.sum(axis=1)
    target = np.median(raw_totals[raw_totals > 0])
    np.testing.assert_allclose(_dense(adata.layers["spliced"]).sum(axis=1)[0], target, rtol=1e-4)
    np.testing.assert_allclose(np.expm1(_dense(adata.X)), _dense(adata.layers["spliced"]), rtol=1e-4, atol=1e-5)
    info = adata.uns["velode_pp"]
    assert info["normalized"] and info["n_genes_input"] == 12
    # a second normalisation would double-scale: refused
    with pytest.raises(InputError, match="already normalised"):
        pp.filter_and_normalize(adata)


def test_no_log():
    adata = synthetic(50, 10)
    pp.filter_and_normalize(adata, min_shared_counts=0, n_top_genes=None, log=False)
    np.testing.assert_array_equal(adata.X, adata.layers["spliced"])
    assert adata.uns["velode_pp"]["log"] is False


def test_highly_variable_selection():
    adata = synthetic(200, 60, seed=1)
    adata.var["keep_me"] = np.arange(60)
    out = pp.filter_and_normalize(adata, min_shared_counts=0, n_top_genes=20, copy=True)
    assert out.n_vars == 20 and out.var["highly_variable"].all()
    assert "dispersions_norm" in out.var and "keep_me" in out.var
    assert out.uns["velode_pp"]["n_genes_after_hvg"] == 20
    assert adata.n_vars == 60 and "velode_pp" not in adata.uns


# --------------------------------------------------------------------------- moments / method "scvelo"


def test_moments_are_neighbourhood_means():
    adata = synthetic(150, 25, seed=8)
    out = pp.preprocess(adata, min_shared_counts=0, n_top_genes=None, n_pcs=10, n_neighbors=12)
    assert out.obsm["X_pca"].shape == (150, 10)
    for name in ("Ms", "Mu"):
        assert out.layers[name].dtype == np.float32 and isinstance(out.layers[name], np.ndarray)
    _check_moments_by_hand(out, [0, 17, 149], out.layers["spliced"], out.layers["unspliced"])


def test_moments_standalone_and_caps():
    adata = synthetic(8, 3)
    out = pp.moments(adata, n_pcs=50, n_neighbors=30, copy=True)
    assert out.obsm["X_pca"].shape == (8, 2)  # min(n_pcs, n_cells - 1, n_genes - 1)
    assert out.uns["neighbors"]["params"]["n_neighbors"] == 7  # capped at n_cells - 1
    assert "Ms" not in adata.layers
    _check_moments_by_hand(out, range(8), adata.layers["spliced"], adata.layers["unspliced"])


def test_moments_too_few_cells():
    with pytest.raises(InputError, match="too few cells for a kNN graph"):
        pp.moments(synthetic(2, 5))
    with pytest.raises(InputError, match="too few cells for a kNN graph"):
        pp.preprocess(synthetic(2, 5))


def test_scvelo_keeps_truth_columns():
    adata = simulation(200, 30, seed=0, noise="poisson")
    out = pp.preprocess(adata, min_shared_counts=10, n_top_genes=20, n_neighbors=15)
    assert out.n_vars == 20
    assert {"true_alpha", "true_beta", "true_gamma", "true_switch_time"} <= set(out.var.columns)
    assert "true_time" in out.obs
    assert "true_velocity" in out.layers
    np.testing.assert_array_equal(out.layers["true_velocity"], adata[:, out.var_names].layers["true_velocity"])


@pytest.mark.slow
@pytest.mark.skipif(not PANCREAS.exists(), reason=f"pancreas data not found at {PANCREAS}")
def test_pancreas_scvelo():
    raw = ad.read_h5ad(PANCREAS)
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="zero counts"):
        out = pp.preprocess(raw)
    elapsed = time.perf_counter() - start
    assert elapsed < 60
    assert 100 < out.n_vars < raw.n_vars
    assert out.n_obs == raw.n_obs
    for name in ("Ms", "Mu"):
        m = out.layers[name]
        assert m.shape == out.shape and m.dtype == np.float32
        assert np.isfinite(m).all() and (m >= 0).all()
    assert out.obsm["X_pca"].shape == (raw.n_obs, 30)
    assert {"connectivities", "distances"} <= set(out.obsp.keys())
    assert list(out.obs.columns) == list(raw.obs.columns)
    assert (out.obs["clusters"] == raw.obs["clusters"]).all()
    _check_moments_by_hand(out, [0, 1234, 3695], out.layers["spliced"], out.layers["unspliced"])
    info = out.uns["velode_pp"]
    assert info["n_genes_after_filter"] < info["n_genes_input"]
    # the input is untouched
    assert raw.n_vars == 2000 and "Ms" not in raw.layers
