"""Preprocessing: gene filtering, per-cell normalisation, highly variable genes and kNN moments."""


import logging
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from . import _matrix
from ._errors import InputError
from ._io import _check, _drop_empty_genes

logger = logging.getLogger(__name__)

COUNT_LAYERS = ("spliced", "unspliced")
METHODS = ("scvelo", "none")


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}: pass a larger whole number")
    return int(value)


def _gene_mask(adata: AnnData, genes: Sequence[str]) -> np.ndarray:
    """Mask of ``var_names`` in ``genes``; every name must be there."""
    names = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    if not names:
        raise InputError("the gene list is empty: name at least one gene of var_names, or give none to keep every gene")
    present = set(adata.var_names)
    missing = [g for g in names if g not in present]
    if missing:
        shown = ", ".join(repr(g) for g in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise InputError(
            f"{len(missing)} of {len(names)} genes in the gene list are not in var_names ({shown}): "
            f"check their spelling against var_names (e.g. {', '.join(map(repr, adata.var_names[:3]))})"
        )
    return np.asarray(adata.var_names.isin(names))


def _record(adata: AnnData, **entries) -> None:
    info = dict(adata.uns.get("velode_pp", {}))
    info.update(entries)
    adata.uns["velode_pp"] = info


def _shared_counts(spliced, unspliced) -> np.ndarray:
    """Per gene, the sum of ``u + s`` over the cells where both ``u > 0`` and ``s > 0``."""
    if sp.issparse(spliced) or sp.issparse(unspliced):
        s = sp.csr_matrix(spliced)
        u = sp.csr_matrix(unspliced)
        both = (s > 0).multiply(u > 0)
        total = both.multiply(s).sum(axis=0, dtype=np.float64) + both.multiply(u).sum(axis=0, dtype=np.float64)
        return np.asarray(total).ravel()
    s = np.asarray(spliced)
    u = np.asarray(unspliced)
    both = (s > 0) & (u > 0)
    return np.where(both, s.astype(np.float64) + u, 0.0).sum(axis=0)


def _normalize_per_cell(x):
    """Scale each cell (row) to the median total count of the cells with a non-zero total.

    Returns float32, sparse (CSR) if the input is sparse; cells with no counts stay zero.
    """
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32)
        totals = np.asarray(x.sum(axis=1, dtype=np.float64)).ravel()
    else:
        x = np.asarray(x, dtype=np.float32)
        totals = x.sum(axis=1, dtype=np.float64)
    positive = totals > 0
    target = float(np.median(totals[positive])) if positive.any() else 1.0
    factors = np.where(positive, target / np.where(positive, totals, 1.0), 0.0).astype(np.float32)
    if sp.issparse(x):
        out = sp.diags(factors) @ x
        return sp.csr_matrix(out, dtype=np.float32), target
    return x * factors[:, None], target


def _log1p(x):
    if sp.issparse(x):
        out = sp.csr_matrix(x, dtype=np.float32, copy=True)
        np.log1p(out.data, out=out.data)
        return out
    return np.log1p(np.asarray(x, dtype=np.float32))


def _to_dense32(x) -> np.ndarray:
    """Dense float32, aligned for JAX to read in place (no copy of what already is)."""
    from . import _aligned

    if sp.issparse(x):
        x = x.toarray()
    return _aligned.aligned(x)


def _highly_variable(x, var_names, n_top_genes: int):
    """Seurat-flavoured dispersions of log data ``x``; ``highly_variable`` flags the ``n_top_genes`` top genes."""
    import scanpy as sc

    tmp = AnnData(X=x)
    tmp.var_names = var_names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_top_genes, flavor="seurat", inplace=True)
    return tmp.var[["highly_variable", "means", "dispersions", "dispersions_norm"]]


def filter_and_normalize(
    adata: AnnData,
    *,
    min_shared_counts: int = 20,
    n_top_genes: int | None = 2000,
    log: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Filter genes, normalise spliced/unspliced counts per cell and keep highly variable genes.

    1. Keep genes whose *shared counts* are at least ``min_shared_counts``: the sum of
       ``spliced + unspliced`` over the cells in which both are non-zero.
    2. Scale ``layers["spliced"]`` and ``layers["unspliced"]``, each by its own per-cell totals,
       to the median total (the raw counts are replaced by the normalised values).
    3. Set ``X`` to the normalised spliced values, ``log1p``-transformed if ``log``.
    4. Keep the ``n_top_genes`` most variable genes (Seurat-flavoured dispersion on the log
       spliced values; ``None`` keeps all), recorded in ``var["highly_variable"]``.

    What was done is recorded in ``adata.uns["velode_pp"]``; obs and var columns are kept.

    Parameters
    ----------
    adata
        Data with raw counts in ``layers["spliced"]`` and ``layers["unspliced"]``.
    min_shared_counts
        Smallest number of shared counts a gene needs to be kept.
    n_top_genes
        Number of highly variable genes to keep, or ``None`` to keep every gene that passed the filter.
    log
        Whether ``X`` holds ``log1p`` of the normalised spliced values.
    copy
        Return a processed copy instead of modifying ``adata``.

    Returns
    -------
    The processed copy if ``copy``, otherwise ``None``.
    """
    if isinstance(min_shared_counts, bool) or not isinstance(min_shared_counts, (int, float, np.number)):
        raise InputError(f"min_shared_counts must be a number >= 0, got {min_shared_counts!r}: pass e.g. 20")
    if min_shared_counts < 0:
        raise InputError(f"min_shared_counts must be >= 0, got {min_shared_counts!r}: pass e.g. 20")
    if n_top_genes is not None:
        n_top_genes = _check_int("n_top_genes", n_top_genes, 1)
    _check(adata, COUNT_LAYERS)
    if adata.uns.get("velode_pp", {}).get("normalized", False):
        raise InputError(
            "adata was already normalised by velode.pp.filter_and_normalize: "
            "run it once on raw counts (reload the data to start again)"
        )
    adata = adata.copy() if copy else adata

    n_input = adata.n_vars
    shared = _shared_counts(adata.layers["spliced"], adata.layers["unspliced"])
    keep = shared >= min_shared_counts
    n_kept = int(keep.sum())
    if n_kept < 2:
        raise InputError(
            f"only {n_kept} of {n_input} genes have >= {min_shared_counts} shared spliced+unspliced counts "
            "(velode needs at least 2): lower min_shared_counts"
        )
    if n_kept < n_input:
        adata._inplace_subset_var(keep)
    logger.info("kept %d of %d genes with >= %s shared counts", n_kept, n_input, min_shared_counts)

    spliced, target_s = _normalize_per_cell(adata.layers["spliced"])
    unspliced, target_u = _normalize_per_cell(adata.layers["unspliced"])
    adata.layers["spliced"] = spliced
    adata.layers["unspliced"] = unspliced
    x = spliced.copy()
    adata.X = _log1p(x) if log else x
    logger.info("normalised spliced/unspliced per cell to median totals %.4g / %.4g", target_s, target_u)

    log_x = adata.X if log else _log1p(x)
    if n_top_genes is not None and adata.n_vars > n_top_genes:
        hvg = _highly_variable(log_x, adata.var_names, n_top_genes)
        for column in hvg.columns:
            adata.var[column] = hvg[column].to_numpy()
        adata._inplace_subset_var(adata.var["highly_variable"].to_numpy(dtype=bool))
    else:
        adata.var["highly_variable"] = True
    logger.info("kept %d highly variable genes", adata.n_vars)

    _record(
        adata,
        method="scvelo",
        normalized=True,
        log=bool(log),
        min_shared_counts=min_shared_counts,
        n_top_genes=-1 if n_top_genes is None else n_top_genes,
        n_genes_input=n_input,
        n_genes_after_filter=n_kept,
        n_genes_after_hvg=adata.n_vars,
        target_total_spliced=target_s,
        target_total_unspliced=target_u,
    )
    return adata if copy else None


def _pca_and_neighbors(adata: AnnData, x, *, n_pcs: int, n_neighbors: int) -> None:
    """PCA of ``x`` into ``obsm["X_pca"]`` and a kNN graph on it, written into ``adata``."""
    import scanpy as sc

    n_obs, n_vars = x.shape
    n_comps = min(n_pcs, n_obs - 1, n_vars - 1)
    tmp = AnnData(X=x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if n_comps >= 1:
            sc.tl.pca(tmp, n_comps=n_comps, svd_solver="arpack", random_state=0)
            adata.obsm["X_pca"] = tmp.obsm["X_pca"]
            adata.varm["PCs"] = tmp.varm["PCs"]
            adata.uns["pca"] = tmp.uns["pca"]
            rep = "X_pca"
        else:
            rep = "X"
        k = min(n_neighbors, n_obs - 1)
        sc.pp.neighbors(tmp, n_neighbors=k, use_rep=rep, random_state=0)
    adata.obsp["connectivities"] = tmp.obsp["connectivities"]
    adata.obsp["distances"] = tmp.obsp["distances"]
    adata.uns["neighbors"] = tmp.uns["neighbors"]
    logger.info("PCA with %d components, kNN graph with %d neighbours", max(n_comps, 0), k)


def _moment_weights(connectivities) -> sp.csr_matrix:
    """Binarised connectivities plus self loops, each row scaled to sum to 1."""
    graph = sp.csr_matrix(connectivities)
    linked = (graph != 0) + sp.identity(graph.shape[0], dtype=bool, format="csr")
    w = sp.csr_matrix(linked, dtype=np.float32)
    rows = np.asarray(w.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags((1.0 / rows).astype(np.float32)) @ w)


def moments(
    adata: AnnData,
    *,
    n_pcs: int = 30,
    n_neighbors: int = 30,
    copy: bool = False,
) -> AnnData | None:
    """First-order kNN moments of the spliced and unspliced layers.

    Runs PCA on ``X`` (``min(n_pcs, n_cells - 1, n_genes - 1)`` components, in
    ``obsm["X_pca"]``) and a kNN graph on it (``obsp["connectivities"]``,
    ``obsp["distances"]``, ``uns["neighbors"]``; ``n_neighbors`` counts the cell itself and is
    capped at ``n_cells - 1``). Each cell's moment is the mean over the cell and its graph
    neighbours (connectivities binarised, plus self loops): ``layers["Ms"]`` from
    ``layers["spliced"]`` and ``layers["Mu"]`` from ``layers["unspliced"]``, dense float32.

    Parameters
    ----------
    adata
        Data with ``X`` (typically from :func:`filter_and_normalize`) and the count layers.
    n_pcs
        Largest number of principal components.
    n_neighbors
        Size of each cell's neighbourhood, itself included.
    copy
        Return a processed copy instead of modifying ``adata``.

    Returns
    -------
    The processed copy if ``copy``, otherwise ``None``.
    """
    n_pcs = _check_int("n_pcs", n_pcs, 1)
    n_neighbors = _check_int("n_neighbors", n_neighbors, 2)
    _check(adata, COUNT_LAYERS)
    if adata.n_obs < 3:
        raise InputError(f"too few cells for a kNN graph: got {adata.n_obs}, need at least 3")
    if n_neighbors >= adata.n_obs:
        warnings.warn(
            f"n_neighbors={n_neighbors} but only {adata.n_obs} cells: the kNN graph is capped at "
            f"{adata.n_obs - 1} neighbours, so each cell's moments average over most of the data; lower n_neighbors",
            UserWarning,
            stacklevel=2,
        )
    if adata.X is None:
        raise InputError(
            "adata.X is empty: run velode.pp.filter_and_normalize first "
            "or set adata.X (e.g. to log1p of the spliced counts)"
        )
    adata = adata.copy() if copy else adata
    _pca_and_neighbors(adata, adata.X, n_pcs=n_pcs, n_neighbors=n_neighbors)
    w = _moment_weights(adata.obsp["connectivities"])
    adata.layers["Ms"] = _to_dense32(w @ adata.layers["spliced"])
    adata.layers["Mu"] = _to_dense32(w @ adata.layers["unspliced"])
    _record(adata, moments=True, n_pcs=n_pcs, n_neighbors=n_neighbors)
    return adata if copy else None


def preprocess(
    adata: AnnData,
    *,
    method: str = "scvelo",
    min_shared_counts: int = 20,
    n_top_genes: int | None = 2000,
    n_pcs: int = 30,
    n_neighbors: int = 30,
    genes: Sequence[str] | None = None,
    copy: bool = True,
) -> AnnData:
    """Validate the counts and prepare the ``Ms``/``Mu`` layers velode fits.

    ``method="scvelo"``: :func:`filter_and_normalize` then :func:`moments`.
    ``method="none"``: fit the layers exactly as given: ``layers["Ms"]`` and ``layers["Mu"]`` are
    ``layers["spliced"]`` and ``layers["unspliced"]`` as float32, sparse (CSR) if they are sparse, so
    the fit densifies one batch of cells at a time (the same arrays, not copies, when they already
    are float32); ``X`` is set to
    the spliced layer if it is empty; ``obsm["X_pca"]`` (PCA of ``log1p`` of the spliced layer)
    and the kNN graph are computed for embeddings and plots when there are at least 3 cells.

    Genes with zero counts in both layers are dropped with a warning (see :func:`velode.validate`).
    Every obs and var column is kept.

    Parameters
    ----------
    adata
        Data with counts in ``layers["spliced"]`` and ``layers["unspliced"]``.
    method
        ``"scvelo"`` or ``"none"``.
    min_shared_counts, n_top_genes
        See :func:`filter_and_normalize` (``"scvelo"`` only).
    n_pcs, n_neighbors
        See :func:`moments`.
    genes
        Names in ``var_names`` of the genes to keep, before anything else (``None``: all genes).
    copy
        Work on a copy (default) rather than modifying ``adata`` in place.

    Returns
    -------
    The processed data (``adata`` itself when ``copy=False``).
    """
    if method not in METHODS:
        allowed = ", ".join(repr(m) for m in METHODS)
        raise InputError(f"unknown preprocessing method {method!r}: use one of {allowed}")
    n_pcs = _check_int("n_pcs", n_pcs, 1)
    n_neighbors = _check_int("n_neighbors", n_neighbors, 2)
    if genes is not None and isinstance(adata, AnnData):
        chosen = _gene_mask(adata, genes)
        if copy:
            adata, copy = adata[:, chosen].copy(), False
        else:
            adata._inplace_subset_var(chosen)
    keep = _check(adata, COUNT_LAYERS)
    if method == "scvelo" and adata.n_obs < 3:
        raise InputError(
            f"too few cells for a kNN graph: got {adata.n_obs}, need at least 3 (or use method='none')"
        )
    if copy:
        adata = adata.copy()
    _drop_empty_genes(adata, keep, COUNT_LAYERS, inplace=True)

    if method == "scvelo":
        filter_and_normalize(adata, min_shared_counts=min_shared_counts, n_top_genes=n_top_genes, log=True)
        moments(adata, n_pcs=n_pcs, n_neighbors=n_neighbors)
    else:
        # Sparse layers stay sparse (the fit densifies one batch of cells at a time); dense ones become
        # float32 arrays JAX reads in place. Ms is the layer itself when it already is so.
        spliced = adata.layers["spliced"]
        for raw, fit in (("spliced", "Ms"), ("unspliced", "Mu")):
            x = adata.layers[raw]
            adata.layers[fit] = _matrix.as_matrix(x)
            if x.dtype == np.float32:
                adata.layers[raw] = adata.layers[fit]  # keep one array
        if adata.X is None:
            adata.X = spliced.copy()
        if adata.n_obs >= 3:
            _pca_and_neighbors(adata, _log1p(spliced), n_pcs=n_pcs, n_neighbors=n_neighbors)
        else:
            logger.info("skipping PCA and kNN graph: only %d cells", adata.n_obs)
        _record(adata, method="none", normalized=False, n_pcs=n_pcs, n_neighbors=n_neighbors)
    return adata
