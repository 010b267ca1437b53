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
