"""scripts/variants.py: the share of a boundary's neighbours that come later on a clock."""

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from helpers import load_script


def test_later_share_counts_the_target_neighbours_after_each_source_cell():
    v = load_script("scripts/variants.py")
    a = ad.AnnData(np.zeros((5, 1), np.float32), obs=pd.DataFrame({"clusters": ["A", "A", "B", "B", "C"]}, index=list("01234")))
    t = np.array([0.1, 0.5, 0.3, 0.9, 0.0])
    # A0's neighbours: B2 (later), B3 (later), C4 (not counted); A1's: B2 (earlier), B3 (later), A0 (not counted)
    rows, cols = [0, 0, 0, 1, 1, 1], [2, 3, 4, 2, 3, 0]
    a.obsp["distances"] = sp.csr_matrix((np.ones(6), (rows, cols)), shape=(5, 5))
    assert v.later_share(a, t, "A", "B") == 3 / 4
    assert v.later_share(a, -t, "A", "B") == 1 / 4  # the clock reversed
    assert np.isnan(v.later_share(a, t, "B", "A"))  # B's cells have no neighbours listed


def test_boundary_gene_terms_add_up_to_the_cosine_and_follow_the_displacement():
    bg = load_script("scripts/boundary_genes.py")
    rng = np.random.default_rng(0)
    ms = rng.normal(size=(6, 4))
    clusters = np.array(["A", "A", "B", "B", "C", "A"])
    knn = [np.array([2, 3, 4]), np.array([0, 4]), np.array([0]), np.array([1]), np.array([0]), np.array([3])]
    cells, disp = bg.boundary_displacements(ms, clusters, knn, "A", "B")
    assert cells.tolist() == [0, 5]  # A1 has no B neighbour
    np.testing.assert_allclose(disp[0], ms[[2, 3]].mean(0) - ms[0])
    np.testing.assert_allclose(disp[1], ms[3] - ms[5])
    v = rng.normal(size=(2, 4))
    terms = bg.gene_terms(v, disp)
    vc, dc = v - v.mean(1, keepdims=True), disp - disp.mean(1, keepdims=True)
    cos = (vc * dc).sum(1) / (np.linalg.norm(vc, axis=1) * np.linalg.norm(dc, axis=1))
    np.testing.assert_allclose(terms.sum(1), cos, rtol=1e-12)
    np.testing.assert_allclose(bg.gene_terms(disp, disp).sum(1), 1.0, rtol=1e-12)  # along the displacement
    np.testing.assert_allclose(bg.gene_terms(-disp, disp).sum(1), -1.0, rtol=1e-12)
    np.testing.assert_allclose(bg.norm_shares(v).sum(1), 1.0, rtol=1e-12)
