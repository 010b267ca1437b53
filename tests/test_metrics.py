"""Quality metrics on hand-made geometry where the answer is known."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from velode import metrics


def _line(n=40, k=4, flip=False):
    """Cells on a line: A left, B right; velocity along +x (or -x with flip); a kNN graph on x."""
    x = np.linspace(-1, 1, n)
    a = AnnData(np.zeros((n, 3), np.float32))
    a.obs["clusters"] = pd.Categorical(np.where(x < 0, "A", "B"))
    a.obsm["X_umap"] = np.c_[x, np.zeros(n)]
    sign = -1.0 if flip else 1.0
    a.obsm["velocity_umap"] = np.c_[np.full(n, sign), np.zeros(n)]
    rows, cols = [], []
    for i in range(n):
        nb = np.argsort(np.abs(x - x[i]))[1 : k + 1]
        rows += [i] * k
        cols += list(nb)
    a.obsp["distances"] = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    v = np.zeros((n, 3))
    v[:, 0] = sign
    a.layers["velocity"] = v
    return a


def test_cbdir_is_one_along_and_minus_one_against_the_transition():
    assert metrics.cross_boundary_correctness(_line(), [("A", "B")])["A -> B"] == pytest.approx(1.0)
    assert metrics.cross_boundary_correctness(_line(flip=True), [("A", "B")])["mean"] == pytest.approx(-1.0)
    # the reverse transition B -> A is scored by cells of B looking at A: wrong way
    assert metrics.cross_boundary_correctness(_line(), [("B", "A")])["mean"] == pytest.approx(-1.0)


def test_cbdir_sideways_velocity_scores_zero_and_unknown_cluster_is_refused():
    a = _line()
    a.obsm["velocity_umap"] = np.c_[np.zeros(a.n_obs), np.ones(a.n_obs)]
    assert metrics.cross_boundary_correctness(a, [("A", "B")])["mean"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="Gamma"):
        metrics.cross_boundary_correctness(a, [("A", "Gamma")])


def test_iccoh_is_one_for_parallel_velocities_and_lower_for_random_ones():
    a = _line()
    assert metrics.in_cluster_coherence(a)["mean"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    a.layers["velocity"] = rng.standard_normal(a.shape)
    coh = metrics.in_cluster_coherence(a)
    assert set(coh) == {"A", "B", "mean"}
    assert -0.5 < coh["mean"] < 0.5
