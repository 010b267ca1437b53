"""Sparse input: the fit keeps CSR data sparse, densifies one batch of cells (or block of genes) at a
time, and gives the same result as the same data given dense."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import velode
from velode import _matrix
from helpers import run_cli

SMALL = dict(pretrain_steps=30, probe_steps=10, assign_rounds=1, cell_rank=2, cell_phase=0.2)


def _counts(n_cells, n_genes, seed=0):
    """Simulated low-depth counts: mostly zeros, like real unspliced counts."""
    a = velode.datasets.simulation(n_cells=n_cells, n_genes=n_genes, seed=seed)
    rng = np.random.default_rng(seed)
    for k in ("spliced", "unspliced"):
        a.layers[k] = rng.poisson(a.layers[k] * 0.5).astype(np.float32)
    return a


def _pair(n_cells, n_genes):
    dense = velode.pp.preprocess(_counts(n_cells, n_genes), method="none")
    sparse = dense.copy()
    for k in ("spliced", "unspliced", "Ms", "Mu"):
        sparse.layers[k] = sp.csr_matrix(dense.layers[k])
    return dense, sparse


@pytest.mark.parametrize("batch_size", [128, None], ids=["minibatch", "full_batch"])
def test_sparse_fit_equals_dense_fit(batch_size):
    dense, sparse = _pair(400, 12)
    assert 0.3 < (dense.layers["Mu"] == 0).mean() < 0.9  # really sparse data
    kw = dict(seed=0, model=SMALL, trainer={"progress": False, "max_steps": 80, "batch_size": batch_size})
    r_dense = velode.tl.fit(dense, **kw)
    r_sparse = velode.tl.fit(sparse, **kw)
    assert r_sparse.data.sparse and not r_dense.data.sparse
    assert sp.issparse(r_sparse.data.obs_u) and sp.issparse(r_sparse.data.obs_s)
    np.testing.assert_array_equal(sparse.uns["velode"]["history"]["total"], dense.uns["velode"]["history"]["total"])
    np.testing.assert_array_equal(sparse.obs["latent_time"], dense.obs["latent_time"])
    for k in ("velocity", "velocity_u", "fit_s", "projected_spliced"):
        np.testing.assert_array_equal(sparse.layers[k], dense.layers[k])
    np.testing.assert_allclose(sparse.var["fit_r2"], dense.var["fit_r2"], rtol=1e-5, atol=1e-6)
    # The full-batch loss summed over blocks of densified cells is the loss of the whole.
    assert sparse.uns["velode"]["final_loss"] == pytest.approx(dense.uns["velode"]["final_loss"], rel=1e-5)


def test_sparse_data_is_densified_a_batch_at_a_time(monkeypatch):
    """No pass over sparse data densifies more than one batch of cells or one block of genes."""
    from velode import _fit, _switch, _train
    from velode.model import _encoder
    from velode.tl import _fit as tl_fit

    n_cells, n_genes = 2000, 40
    _, sparse = _pair(n_cells, n_genes)
    for module, name, value in ((_encoder, "PCA_MAX_CELLS", 300), (_encoder, "BLOCK_CELLS", 256),
                                (_fit, "GENE_BLOCK", 8), (_fit, "CELL_BLOCK", 256), (_fit, "INIT_MAX_CELLS", 500),
                                (tl_fit, "CELL_BLOCK", 256), (_train, "LOSS_BLOCK", 256), (_switch, "GENE_BLOCK", 8)):
        monkeypatch.setattr(module, name, value)
    largest = []
    dense = _matrix.dense

    def spy(x):
        if sp.issparse(x):
            largest.append(x.shape[0] * x.shape[1])
        return dense(x)

    monkeypatch.setattr(_matrix, "dense", spy)
    velode.tl.fit(sparse, seed=0, model=SMALL, trainer={"progress": False, "max_steps": 40, "batch_size": 128})
    assert largest, "the sparse data were never densified in blocks"
    # The largest block: every cell of one block of 8 genes (per-gene statistics), a fifth of the data.
    assert max(largest) <= n_cells * 8 < n_cells * n_genes / 4
    assert np.all(np.isfinite(sparse.layers["velocity"]))


def test_sparse_predict_and_bad_values():
    dense, sparse = _pair(300, 10)
    r = velode.tl.fit(dense, seed=0, model=SMALL, trainer={"progress": False, "max_steps": 40})
    fm = velode.tl.FittedModel.from_fit(r, dense)
    out = velode.tl.predict(sparse.copy(), fm)
    np.testing.assert_allclose(out.layers["velocity"], dense.layers["velocity"], rtol=1e-5, atol=1e-6)
    bad = sparse.copy()
    bad.layers["Mu"] = bad.layers["Mu"].copy()
    bad.layers["Mu"].data[0] = -1.0
    with pytest.raises(ValueError, match="negative values"):
        velode.tl.fit(bad, trainer={"progress": False, "max_steps": 5})
    bad.layers["Mu"].data[0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        velode.tl.fit(bad, trainer={"progress": False, "max_steps": 5})


def test_cli_fits_a_sparse_h5ad(tmp_path):
    a = _counts(150, 8)
    for k in ("spliced", "unspliced"):
        a.layers[k] = sp.csr_matrix(a.layers[k])
    path = tmp_path / "counts.h5ad"
    a.write_h5ad(path)
    proc, out = run_cli(tmp_path, "data=h5ad", f"data.path={path}", "preprocess=none", "trainer.max_steps=40",
                        "model.pretrain_steps=20", "model.probe_steps=5", "model.assign_rounds=1", "plots=false")
    assert proc.returncode == 0, proc.stderr
    b = ad.read_h5ad(out / "velocity.h5ad")
    assert sp.issparse(b.layers["Mu"])  # fitted as given, never densified as a whole
    assert np.all(np.isfinite(b.layers["velocity"]))
