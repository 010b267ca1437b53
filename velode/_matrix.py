"""Cells x genes matrices that are dense or sparse, read as dense float32 blocks of cells on demand.

A fit keeps sparse (CSR) input sparse: every pass over the cells (a training minibatch, a block of
the outputs, a block of a per-gene statistic) densifies only the cells or genes it reads, so memory
holds the sparse data plus one block, not a dense copy of the data.
"""

import numpy as np
import scipy.sparse as sp

from . import _aligned


def is_sparse(x) -> bool:
    return sp.issparse(x)


def as_matrix(x):
    """``x`` as velode fits it: CSR float32 (sorted indices) if sparse, else an aligned float32 array.

    Arrays that already are so are returned as they are (not copied).
    """
    if sp.issparse(x):
        if not (sp.isspmatrix_csr(x) or isinstance(x, sp.csr_array)) or x.dtype != np.float32:
            x = sp.csr_matrix(x, dtype=np.float32)
        if not x.has_sorted_indices:
            x = x.sorted_indices()
        return x
    return _aligned.aligned(x)


def dense(x) -> np.ndarray:
    """``x`` (a block) as a dense float32 array."""
    if sp.issparse(x):
        return x.toarray().astype(np.float32, copy=False)
    return np.asarray(x, np.float32)


def take(x, rows) -> np.ndarray:
    """Dense float32 rows ``rows`` (indices, a slice or a mask) of ``x``."""
    return dense(x[rows])


def block(x, lo: int, hi: int) -> np.ndarray:
    """Dense float32 rows ``lo:hi`` of ``x``."""
    return dense(x[lo:hi])


def column_mean(x) -> np.ndarray:
    """Per-column mean over the rows (float64); a sparse matrix is not densified."""
    if sp.issparse(x):
        sums = np.bincount(x.indices, weights=np.asarray(x.data, np.float64), minlength=x.shape[1])
        return sums / max(x.shape[0], 1)
    return np.asarray(x).mean(0, dtype=np.float64)


def nbytes(x) -> int:
    """Bytes the matrix holds (for a sparse one: its values and indices)."""
    if sp.issparse(x):
        return int(x.data.nbytes + x.indices.nbytes + x.indptr.nbytes)
    return int(np.asarray(x).nbytes)
