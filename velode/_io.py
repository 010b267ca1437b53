"""Reading count data and checking it can be fitted."""


import os
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from ._errors import InputError

READABLE_SUFFIXES = (".h5ad", ".loom")
_LAYER_HINT = (
    "velode needs raw spliced/unspliced counts as layers['spliced'] and layers['unspliced'] "
    "(e.g. from velocyto or kb)"
)


def _one_line(text: object, limit: int = 300) -> str:
    """Squeeze an arbitrary message onto one short line."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def read(path: str | os.PathLike) -> AnnData:
    """Read an ``.h5ad`` or ``.loom`` file into an :class:`~anndata.AnnData`.

    Parameters
    ----------
    path
        Path of the file. ``.loom`` files need the optional ``loompy`` package.

    Raises
    ------
    InputError
        When the file does not exist, has another extension, or cannot be read.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        where = "" if os.path.isabs(p) else f" (relative paths are resolved from '{os.getcwd()}')"
        raise InputError(f"file not found: '{p}': check the path{where}")
    if os.path.isdir(p):
        raise InputError(f"'{p}' is a directory, not a file: pass the path of a .h5ad or .loom file")
    suffix = os.path.splitext(p)[1].lower()
    if suffix not in READABLE_SUFFIXES:
        raise InputError(
            f"cannot read '{p}': unknown extension {suffix or '(none)'!r}; "
            "velode reads .h5ad and .loom files (convert other formats with anndata or scanpy first)"
        )
    if suffix == ".h5ad":
        import anndata

        reader, kind = anndata.read_h5ad, "h5ad"
    else:
        try:
            import loompy  # noqa: F401
        except ImportError:
            raise InputError(f"reading '{p}' needs the loompy package: run `pip install loompy`") from None
        try:
            from anndata.io import read_loom
        except ImportError:  # anndata < 0.11
            from anndata import read_loom
        reader, kind = read_loom, "loom"
    try:
        return reader(p)
    except Exception as err:
        if "incorrect shape" in str(err):  # anndata refuses a layer whose shape is not the data's
            raise InputError(
                f"cannot read '{p}': a layer does not match the data shape ({_one_line(err)}): "
                "every layer needs one row per cell and one column per gene"
            ) from err
        raise InputError(
            f"cannot read '{p}' as {kind} ({type(err).__name__}: {_one_line(err)}): "
            f"is the file complete and a valid .{kind} file?"
        ) from err


def check_obs_key(adata: AnnData, key: str, what: str = "cluster_key") -> None:
    """Raise an InputError unless ``key`` (the value of the setting ``what``) is a column of ``adata.obs``."""
    if key not in adata.obs:
        columns = list(map(str, adata.obs.columns))
        shown = f"obs columns: {columns[:10]}{' ...' if len(columns) > 10 else ''}" if columns else "obs has no columns"
        raise InputError(f"{what}={key!r} is not a column of obs ({shown}): name one of them, or add that column")


def _shape(x) -> tuple[int, ...]:
    return tuple(getattr(x, "shape", ()))


def _values(x) -> np.ndarray:
    """The stored values of a layer: ``.data`` of a sparse matrix, the array itself otherwise."""
    if sp.issparse(x):
        return np.asarray(x.data)
    return np.asarray(x)


def _gene_sums(x) -> np.ndarray:
    if sp.issparse(x):
        return np.asarray(x.sum(axis=0, dtype=np.float64)).ravel()
    return np.asarray(x).sum(axis=0, dtype=np.float64)


def _check(adata: AnnData, layers: Sequence[str]) -> np.ndarray:
    """Run every check of :func:`validate`; return the mask of genes that are not all-zero."""
    if not isinstance(adata, AnnData):
        raise InputError(
            f"expected an AnnData object, got {type(adata).__name__}: load your data with velode.read(path)"
        )
    if isinstance(layers, str):
        layers = (layers,)
    n_obs, n_vars = adata.shape
    if n_obs == 0 or n_vars == 0:
        raise InputError(
            f"the data has {n_obs} cells and {n_vars} genes: velode needs at least one of each; "
            "check filters applied before velode"
        )
    try:
        layer_map = adata.layers
    except ValueError as err:  # anndata refuses to build a layer mapping whose shapes do not match
        raise InputError(
            f"a layer does not match the data shape {(n_obs, n_vars)} ({_one_line(err)}): "
            "every layer needs one row per cell and one column per gene"
        ) from err
    present = list(layer_map.keys())
    for name in layers:
        if name not in layer_map:
            raise InputError(
                f"layer {name!r} is missing (layers present: {present or 'none'}): {_LAYER_HINT}"
            )
    mask = np.zeros(n_vars, dtype=bool)
    for name in layers:
        x = layer_map[name]
        if _shape(x) != (n_obs, n_vars):
            raise InputError(
                f"layers[{name!r}] has shape {_shape(x)} but the data has shape {(n_obs, n_vars)}: "
                "every layer needs one row per cell and one column per gene"
            )
        values = _values(x)
        if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
            raise InputError(
                f"layers[{name!r}] has non-numeric dtype {values.dtype}: store counts as integers or floats"
            )
        if np.issubdtype(values.dtype, np.complexfloating):
            raise InputError(f"layers[{name!r}] holds complex numbers: store counts as integers or floats")
        if np.issubdtype(values.dtype, np.floating):
            n_nan = int(np.isnan(values).sum())
            if n_nan:
                raise InputError(
                    f"layers[{name!r}] has {n_nan} NaN entries: replace or remove them "
                    "(counts must be finite numbers >= 0)"
                )
            n_inf = int(np.isinf(values).sum())
            if n_inf:
                raise InputError(
                    f"layers[{name!r}] has {n_inf} infinite entries: replace or remove them "
                    "(counts must be finite numbers >= 0)"
                )
        n_neg = int((values < 0).sum())
        if n_neg:
            raise InputError(
                f"layers[{name!r}] has {n_neg} negative entries: velode needs raw counts >= 0, "
                "not log-transformed, scaled or centred values"
            )
        mask |= _gene_sums(x) > 0
    return mask


def validate(adata: AnnData, *, layers: Sequence[str] = ("spliced", "unspliced")) -> AnnData:
    """Check that ``adata`` holds count layers velode can fit.

    Checks that each of ``layers`` is present, has the shape of ``adata``, and holds only
    finite values >= 0 (sparse layers are checked through their stored values, without being
    densified), and that there is at least one cell and one gene. Genes that are zero in every
    one of ``layers`` are dropped with a :class:`UserWarning`.

    Parameters
    ----------
    adata
        The data; it is never modified.
    layers
        Names of the count layers to check.

    Returns
    -------
    ``adata`` itself when no gene is dropped, otherwise a subset copy without the all-zero genes.

    Raises
    ------
    InputError
        With a one-line message naming the problem and how to fix it.
    """
    keep = _check(adata, layers)
    return _drop_empty_genes(adata, keep, layers, inplace=False)


def _drop_empty_genes(adata: AnnData, keep: np.ndarray, layers: Sequence[str], *, inplace: bool) -> AnnData:
    if isinstance(layers, str):
        layers = (layers,)
    n_drop = int((~keep).sum())
    if n_drop == 0:
        return adata
    which = " and ".join(f"layers[{name!r}]" for name in layers)
    if n_drop == keep.size:
        raise InputError(
            f"all {keep.size} genes have zero counts in {which}: check that the layers hold the raw counts"
        )
    warnings.warn(
        f"dropped {n_drop} of {keep.size} genes with zero counts in {which}",
        UserWarning,
        stacklevel=3,
    )
    if inplace:
        adata._inplace_subset_var(keep)
        return adata
    return adata[:, keep].copy()
