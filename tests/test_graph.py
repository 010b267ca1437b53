import time

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData
from sklearn.neighbors import NearestNeighbors

from velode.tl._graph import velocity_embedding, velocity_graph


def _knn_connectivities(X: np.ndarray, k: int) -> sp.csr_matrix:
    nn = NearestNeighbors(n_neighbors=k + 1).fit(X)
    idx = nn.kneighbors(X, return_distance=False)[:, 1:]
    rows = np.repeat(np.arange(X.shape[0]), k)
    A = sp.csr_matrix((np.ones(rows.size), (rows, idx.ravel())), shape=(X.shape[0],) * 2)
    return ((A + A.T) > 0).astype(np.float64).tocsr()


def _line_toy(n_cells=50, n_genes=20, k=6, seed=0):
    """Cells along a line x = 5 t d + noise, velocity +d, 2-D embedding (5 t, noise)."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 1, n_cells))
    d = rng.normal(size=n_genes)
    d /= np.linalg.norm(d)
    X = 5 * t[:, None] * d + 0.02 * rng.normal(size=(n_cells, n_genes))
    adata = AnnData(X=X.copy())
    adata.layers["Ms"] = X
    adata.layers["velocity"] = np.tile(d, (n_cells, 1))
    adata.obsp["connectivities"] = _knn_connectivities(X, k)
    adata.obsm["X_umap"] = np.column_stack([5 * t, 0.05 * rng.normal(size=n_cells)])
    adata.obs["t"] = t
    return adata, t, d


def _full_cosine(adata, key="velocity"):
    return (adata.obsp[f"{key}_graph"] + adata.obsp[f"{key}_graph_neg"]).toarray()


def test_cosines_point_to_later_cells():
    adata, t, _ = _line_toy()
    velocity_graph(adata)
    pos, neg = adata.obsp["velocity_graph"], adata.obsp["velocity_graph_neg"]
    assert sp.issparse(pos) and sp.issparse(neg)
    assert pos.shape == neg.shape == (adata.n_obs, adata.n_obs)
    assert (pos.data > 0).all() and (pos.data <= 1).all()
    assert (neg.data < 0).all() and (neg.data >= -1).all()
    C = _full_cosine(adata)
    assert np.allclose(np.diag(C), 0)
    rows, cols = adata.obsp["connectivities"].nonzero()
    later = t[cols] > t[rows]
    cos = C[rows, cols]
    assert (cos[later] > 0).mean() > 0.9
    assert (cos[~later] < 0).mean() > 0.9
    # no edge outside the kNN pattern
    assert ((C != 0) & (adata.obsp["connectivities"].toarray() == 0)).sum() == 0


def test_one_cosine_by_hand():
    adata, _, _ = _line_toy()
    rng = np.random.default_rng(3)
    adata.layers["velocity"] = rng.normal(size=adata.shape)
    velocity_graph(adata)
    C = _full_cosine(adata)
    i = 7
    j = adata.obsp["connectivities"][i].nonzero()[1][0]
    v = adata.layers["velocity"][i]
    dx = adata.layers["Ms"][j] - adata.layers["Ms"][i]
    expected = v @ dx / (np.linalg.norm(v) * np.linalg.norm(dx))
    assert C[i, j] == pytest.approx(expected, rel=1e-10)


def test_gene_selection_and_nan_genes_are_ignored():
    adata, _, _ = _line_toy()
    rng = np.random.default_rng(1)
    adata.layers["velocity"] = adata.layers["velocity"] + 0.3 * rng.normal(size=adata.shape)
    velocity_graph(adata)
    reference = _full_cosine(adata)

    # an extra gene with NaN velocity must not change anything
    wide = AnnData(X=np.hstack([adata.X, np.ones((adata.n_obs, 1))]))
    wide.layers["Ms"] = np.hstack([adata.layers["Ms"], rng.normal(size=(adata.n_obs, 1))])
    v = np.hstack([adata.layers["velocity"], rng.normal(size=(adata.n_obs, 1))])
    v[5, -1] = np.nan
    wide.layers["velocity"] = v
    wide.obsp["connectivities"] = adata.obsp["connectivities"]
    velocity_graph(wide)
    np.testing.assert_allclose(_full_cosine(wide), reference, atol=1e-12)

    # an extra gene excluded by var['velocity_genes'] must not change anything either
    wide.layers["velocity"][5, -1] = 3.0
    wide.var["velocity_genes"] = np.r_[np.ones(adata.n_vars, bool), False]
    velocity_graph(wide)
    np.testing.assert_allclose(_full_cosine(wide), reference, atol=1e-12)
    # ...but it does once it is selected
    velocity_graph(wide, genes_key=None)
    assert not np.allclose(_full_cosine(wide), reference)


def test_n_neighbors_limits_edges():
    adata, _, _ = _line_toy(k=8)
    velocity_graph(adata, n_neighbors=3)
    C = _full_cosine(adata)
    assert ((C != 0).sum(axis=1) <= 3).all()


def test_embedding_points_along_time_and_reverses():
    adata, _, _ = _line_toy()
    V = velocity_embedding(adata)  # computes the graph on the fly
    assert "velocity_graph" in adata.obsp
    assert V.shape == (adata.n_obs, 2)
    assert adata.obsm["velocity_umap"] is V
    norms = np.linalg.norm(V, axis=1)
    assert (norms > 0).all()
    cos = V[:, 0] / norms
    assert cos.mean() > 0.9

    adata.layers["velocity"] = -adata.layers["velocity"]
    velocity_graph(adata)
    V_rev = velocity_embedding(adata)
    assert (V_rev[:, 0] / np.linalg.norm(V_rev, axis=1)).mean() < -0.9


def test_embedding_vector_by_hand():
    adata, _, _ = _line_toy(n_cells=30)
    rng = np.random.default_rng(2)
    adata.layers["velocity"] = rng.normal(size=adata.shape)
    scale = 4.0
    V = velocity_embedding(adata, scale=scale, basis="umap", vkey="velocity")
    C = _full_cosine(adata)
    E = adata.obsm["X_umap"]
    i = 11
    nbrs = np.flatnonzero(C[i])
    w = np.exp(scale * C[i, nbrs])
    w /= w.sum()
    u = E[nbrs] - E[i]
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    np.testing.assert_allclose(V[i], w @ u - u.mean(axis=0), atol=1e-12)


def test_uniform_cosines_give_zero_embedding():
    adata, _, _ = _line_toy()
    velocity_graph(adata)
    pattern = adata.obsp["connectivities"].copy()
    pattern.data[:] = 0.5
    adata.obsp["velocity_graph"] = pattern
    del adata.obsp["velocity_graph_neg"]
    V = velocity_embedding(adata)
    np.testing.assert_allclose(V, 0, atol=1e-12)


def test_missing_embedding_and_inputs_raise():
    adata, _, _ = _line_toy()
    del adata.obsm["X_umap"]
    with pytest.raises(ValueError, match=r"no obsm\['X_umap'\]: run scanpy.tl.umap\(adata\) first"):
        velocity_embedding(adata)
    del adata.obsp["connectivities"]
    with pytest.raises(ValueError, match="scanpy.pp.neighbors"):
        velocity_graph(adata)
    with pytest.raises(ValueError, match="velocity_x"):
        velocity_graph(adata, vkey="velocity_x")


@pytest.mark.slow
def test_pancreas_sized_graph_is_fast():
    rng = np.random.default_rng(0)
    n, g, k = 3696, 2000, 30
    X = rng.gamma(1.0, 1.0, size=(n, g))
    adata = AnnData(X=sp.csr_matrix((n, g)))
    adata.layers["Ms"] = X
    adata.layers["velocity"] = rng.normal(size=(n, g))
    rows = np.repeat(np.arange(n), k)
    cols = rng.integers(0, n, size=n * k)
    adata.obsp["connectivities"] = sp.csr_matrix((np.ones(n * k), (rows, cols)), shape=(n, n))
    start = time.perf_counter()
    velocity_graph(adata)
    elapsed = time.perf_counter() - start
    assert elapsed < 30
    assert adata.obsp["velocity_graph"].nnz + adata.obsp["velocity_graph_neg"].nnz > 0.9 * n * k
