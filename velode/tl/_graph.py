"""Velocity graph (cosines between velocities and neighbour displacements) and its projection on an embedding."""


import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._errors import InputError

# Number of float64 values materialised at once when gathering per-edge differences (about 64 MB).
_CHUNK_VALUES = 2**23


def _dense(a) -> np.ndarray:
    if sp.issparse(a):
        a = a.toarray()
    return np.asarray(a, dtype=np.float64)


def _layer(adata: AnnData, key: str, what: str) -> np.ndarray:
    if key not in adata.layers:
        raise InputError(f"no layers[{key!r}] ({what}): compute it first or pass the right key")
    return _dense(adata.layers[key])


def _neighbour_pattern(adata: AnnData, n_neighbors: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the kNN edges (i -> j, i != j), sorted by row."""
    if "connectivities" not in adata.obsp:
        raise InputError("no obsp['connectivities']: run scanpy.pp.neighbors(adata) first")
    conn = sp.coo_matrix(adata.obsp["connectivities"])
    keep = (conn.row != conn.col) & (conn.data != 0)
    rows, cols, w = conn.row[keep], conn.col[keep], conn.data[keep]
    if n_neighbors is not None:
        if n_neighbors < 1:
            raise InputError(f"n_neighbors must be >= 1, got {n_neighbors}")
        # Keep, in every row, the n_neighbors neighbours with the largest connectivity.
        order = np.lexsort((-w, rows))
        rows, cols = rows[order], cols[order]
        starts = np.searchsorted(rows, np.arange(adata.n_obs))
        rank = np.arange(rows.size) - starts[rows]
        keep = rank < n_neighbors
        return rows[keep], cols[keep]
    order = np.lexsort((cols, rows))
    return rows[order], cols[order]


def _gene_mask(adata: AnnData, V: np.ndarray, X: np.ndarray, genes_key: str | None) -> np.ndarray:
    mask = np.ones(adata.n_vars, dtype=bool)
    if genes_key is not None and genes_key in adata.var:
        mask &= np.asarray(adata.var[genes_key], dtype=bool)
    mask &= np.isfinite(V).all(axis=0) & np.isfinite(X).all(axis=0)
    if not mask.any():
        raise InputError(
            f"no gene has a finite velocity (var[{genes_key!r}] and non-NaN layers): "
            "check the velocity layer and the velocity genes"
        )
    return mask


def velocity_graph(
    adata: AnnData,
    *,
    vkey: str = "velocity",
    xkey: str = "Ms",
    n_neighbors: int | None = None,
    genes_key: str | None = "velocity_genes",
) -> None:
    """Cosine between each cell's velocity and the displacements towards its neighbours.

    For every edge ``i -> j`` of the kNN graph (non-zero pattern of ``obsp['connectivities']``,
    self-loops excluded) the cosine ``cos(v_i, x_j - x_i)`` is computed, where ``v_i`` is the
    velocity of cell ``i`` (``layers[vkey]``) and ``x`` the expression state (``layers[xkey]``).
    Only genes flagged in ``var[genes_key]`` (when that column exists) and whose velocity and state
    are finite in every cell are used.

    Parameters
    ----------
    adata
        Annotated data with ``layers[vkey]``, ``layers[xkey]`` and ``obsp['connectivities']``
        (``scanpy.pp.neighbors``).
    vkey
        Layer holding the velocity (cells x genes).
    xkey
        Layer holding the expression state the velocity lives in (usually the ``Ms`` moments).
    n_neighbors
        Keep only the ``n_neighbors`` neighbours with the largest connectivity for each cell.
        ``None`` uses every neighbour of the graph.
    genes_key
        Boolean ``var`` column selecting the genes to use; ignored when absent or ``None``.

    Sets
    ----
    ``adata.obsp[f"{vkey}_graph"]``
        Sparse cells x cells matrix of the positive cosines (in ``(0, 1]``).
    ``adata.obsp[f"{vkey}_graph_neg"]``
        Sparse cells x cells matrix of the negative cosines (in ``[-1, 0)``, stored with their sign,
        as scVelo does); the full cosine of an edge is ``graph + graph_neg``.
    ``adata.uns[f"{vkey}_graph_params"]``
        The settings used (``xkey``, ``n_genes``, ``n_neighbors``).
    """
    V = _layer(adata, vkey, "velocity")
    X = _layer(adata, xkey, "expression state")
    if V.shape != X.shape:
        raise InputError(f"layers[{vkey!r}] has shape {V.shape} but layers[{xkey!r}] has {X.shape}")
    mask = _gene_mask(adata, V, X, genes_key)
    V = np.ascontiguousarray(V[:, mask])
    X = np.ascontiguousarray(X[:, mask])
    v_norm = np.linalg.norm(V, axis=1)

    rows, cols = _neighbour_pattern(adata, n_neighbors)
    cos = np.zeros(rows.size, dtype=np.float64)
    chunk = max(1, _CHUNK_VALUES // X.shape[1])
    for start in range(0, rows.size, chunk):
        r = rows[start : start + chunk]
        c = cols[start : start + chunk]
        d = X[c] - X[r]
        num = np.einsum("ij,ij->i", d, V[r])
        den = np.linalg.norm(d, axis=1) * v_norm[r]
        cos[start : start + chunk] = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    np.clip(cos, -1.0, 1.0, out=cos)

    shape = (adata.n_obs, adata.n_obs)
    pos = cos > 0
    neg = cos < 0
    adata.obsp[f"{vkey}_graph"] = sp.csr_matrix((cos[pos], (rows[pos], cols[pos])), shape=shape)
    adata.obsp[f"{vkey}_graph_neg"] = sp.csr_matrix((cos[neg], (rows[neg], cols[neg])), shape=shape)
    adata.uns[f"{vkey}_graph_params"] = {
        "xkey": xkey,
        "n_genes": int(mask.sum()),
        "n_neighbors": -1 if n_neighbors is None else int(n_neighbors),
    }


def _cosine_graph(adata: AnnData, vkey: str) -> sp.csr_matrix:
    g = sp.csr_matrix(adata.obsp[f"{vkey}_graph"], dtype=np.float64)
    neg_key = f"{vkey}_graph_neg"
    if neg_key in adata.obsp:
        neg = sp.csr_matrix(adata.obsp[neg_key], dtype=np.float64)
        # Negative cosines are stored with their sign; accept magnitudes too.
        g = g - abs(neg)
    g.sum_duplicates()
    g.sort_indices()
    return g


def velocity_embedding(
    adata: AnnData,
    *,
    basis: str = "umap",
    vkey: str = "velocity",
    scale: float = 10.0,
) -> np.ndarray:
    """Project the velocities on an embedding through the velocity graph.

    The transition probability from cell ``i`` to its neighbour ``j`` is
    ``T_ij = exp(scale * cos_ij) / sum_k exp(scale * cos_ik)``, with ``cos`` the velocity graph
    (positive plus negative part). The embedded velocity is the expected unit displacement
    ``sum_j T_ij u_ij`` minus its value under uniform transitions ``mean_j u_ij``, where
    ``u_ij = (e_j - e_i) / ||e_j - e_i||`` in the first two components of ``obsm[f"X_{basis}"]``.
    The velocity graph is computed with :func:`velocity_graph` defaults when missing.

    Parameters
    ----------
    adata
        Annotated data with ``obsm[f"X_{basis}"]``.
    basis
        Embedding name (``"umap"`` reads ``obsm['X_umap']``).
    vkey
        Velocity key: reads ``obsp[f"{vkey}_graph"]`` / ``obsp[f"{vkey}_graph_neg"]``.
    scale
        Inverse temperature of the softmax over the cosines.

    Returns
    -------
    The cells x 2 embedded velocities (also stored in ``adata``).

    Sets
    ----
    ``adata.obsm[f"{vkey}_{basis}"]``
        Cells x 2 velocity vectors in the embedding.
    ``adata.obsp[f"{vkey}_graph"]``, ``adata.obsp[f"{vkey}_graph_neg"]``
        Only when they were missing (see :func:`velocity_graph`).
    """
    emb_key = f"X_{basis}"
    if emb_key not in adata.obsm:
        module = "pp" if basis == "pca" else "tl"
        raise InputError(f"no obsm[{emb_key!r}]: run scanpy.{module}.{basis}(adata) first")
    E = np.asarray(adata.obsm[emb_key], dtype=np.float64)[:, :2]
    if f"{vkey}_graph" not in adata.obsp:
        velocity_graph(adata, vkey=vkey)
    g = _cosine_graph(adata, vkey)

    n = adata.n_obs
    rows = np.repeat(np.arange(n), np.diff(g.indptr))
    cols = g.indices
    d = E[cols] - E[rows]
    dist = np.linalg.norm(d, axis=1)
    unit = np.divide(d, dist[:, None], out=np.zeros_like(d), where=dist[:, None] > 0)

    logits = scale * g.data
    counts = np.diff(g.indptr)
    has = counts > 0
    row_max = np.full(n, -np.inf)
    row_max[has] = np.maximum.reduceat(logits, g.indptr[:-1][has])
    w = np.exp(logits - row_max[rows])
    w_sum = np.bincount(rows, weights=w, minlength=n)
    t = w / w_sum[rows]

    out = np.zeros((n, 2))
    safe_counts = np.maximum(counts, 1)
    for k in range(2):
        expected = np.bincount(rows, weights=t * unit[:, k], minlength=n)
        uniform = np.bincount(rows, weights=unit[:, k], minlength=n) / safe_counts
        out[:, k] = expected - uniform
    out[~has] = 0.0
    adata.obsm[f"{vkey}_{basis}"] = out
    return out
