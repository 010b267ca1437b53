"""Plots of a velode fit: loss curves, phase portraits, velocity streams on an embedding, heatmaps.

Every function builds a new :class:`matplotlib.figure.Figure` (not registered with pyplot, so it
is never shown or closed behind the caller's back), returns it, and writes it as a PNG when
``save`` is given.
"""


import math
import os
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib import colormaps
from matplotlib import patheffects
from matplotlib.colors import Normalize, to_rgba
from matplotlib.figure import Figure
from scipy.ndimage import gaussian_filter1d

from ._errors import InputError

_DPI = 120
_MPL = tuple(int(x) for x in matplotlib.__version__.split(".")[:2])
_CONTINUOUS_CMAP = "viridis"


# ----------------------------------------------------------------------------------------------
# helpers


def _finish(fig: Figure, save: str | os.PathLike | None) -> Figure:
    fig.tight_layout()
    if save is not None:
        fig.savefig(save, dpi=_DPI, bbox_inches="tight")
    return fig


def _clean(ax) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def _frameless(ax, basis: str) -> None:
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_xticks([])
    ax.set_yticks([])
    name = basis.upper() if len(basis) <= 4 else basis
    ax.set_xlabel(f"{name}1", fontsize=9)
    ax.set_ylabel(f"{name}2", fontsize=9)


def _column(a, j: int) -> np.ndarray:
    col = a[:, j]
    if sp.issparse(col):
        col = col.toarray()
    return np.asarray(col, dtype=np.float64).ravel()


def _dense(a) -> np.ndarray:
    if sp.issparse(a):
        a = a.toarray()
    return np.asarray(a, dtype=np.float64)


def _marker_size(n: int) -> float:
    return float(np.clip(1.2e4 / max(n, 1), 1.0, 30.0))


def _embedding(adata: AnnData, basis: str) -> np.ndarray:
    key = f"X_{basis}"
    if key not in adata.obsm:
        module = "pp" if basis == "pca" else "tl"
        raise InputError(f"no obsm[{key!r}]: run scanpy.{module}.{basis}(adata) first")
    return np.asarray(adata.obsm[key], dtype=np.float64)[:, :2]


def _gene_index(adata: AnnData, gene) -> int:
    if isinstance(gene, (int, np.integer)):
        if not -adata.n_vars <= gene < adata.n_vars:
            raise InputError(f"gene index {gene} out of range for {adata.n_vars} genes")
        return int(gene) % adata.n_vars
    if gene not in adata.var_names:
        raise InputError(f"gene {gene!r} not in adata.var_names")
    return int(adata.var_names.get_loc(gene))


def _is_categorical(values: pd.Series) -> bool:
    return (
        isinstance(values.dtype, pd.CategoricalDtype)
        or pd.api.types.is_object_dtype(values)
        or pd.api.types.is_string_dtype(values)
        or pd.api.types.is_bool_dtype(values)
    )


class _Colouring:
    """Per-cell colours for ``obs[key]``: categorical (palette) or continuous (colormap)."""

    def __init__(self, adata: AnnData, key: str | None):
        self.key = key
        self.categories: list[str] = []
        self.palette: dict[str, tuple] = {}
        self.codes: np.ndarray | None = None
        self.values: np.ndarray | None = None
        self.norm: Normalize | None = None
        if key is None or key not in adata.obs:
            self.rgba = np.tile(to_rgba("0.6"), (adata.n_obs, 1))
            return
        col = adata.obs[key]
        if _is_categorical(col):
            cat = pd.Categorical(col.astype(str) if not isinstance(col.dtype, pd.CategoricalDtype) else col)
            self.categories = [str(c) for c in cat.categories]
            stored = adata.uns.get(f"{key}_colors")
            if stored is not None and len(stored) >= len(self.categories):
                colours = [to_rgba(c) for c in list(stored)[: len(self.categories)]]
            else:
                # tab10's hues are the easiest to tell apart; tab20 (paired shades) only when more are needed
                cmap = colormaps["tab10" if len(self.categories) <= 10 else "tab20"]
                colours = [cmap(i % cmap.N) for i in range(len(self.categories))]
            self.palette = dict(zip(self.categories, colours))
            self.codes = np.asarray(cat.codes)
            table = np.array(colours + [to_rgba("0.8")])
            self.rgba = table[self.codes]  # code -1 (missing) picks the last, grey entry
        else:
            self.values = np.asarray(col, dtype=np.float64)
            finite = np.isfinite(self.values)
            lo = np.nanmin(self.values) if finite.any() else 0.0
            hi = np.nanmax(self.values) if finite.any() else 1.0
            self.norm = Normalize(lo, hi if hi > lo else lo + 1.0)
            self.rgba = colormaps[_CONTINUOUS_CMAP](self.norm(np.where(finite, self.values, lo)))
            self.rgba[~finite] = to_rgba("0.8")

    @property
    def categorical(self) -> bool:
        return self.codes is not None

    def mappable(self):
        from matplotlib.cm import ScalarMappable

        return ScalarMappable(norm=self.norm, cmap=colormaps[_CONTINUOUS_CMAP])

    def legend_handles(self):
        from matplotlib.lines import Line2D

        return [
            Line2D([], [], ls="", marker="o", ms=5, color=self.palette[c], label=c) for c in self.categories
        ]


def _add_key(fig: Figure, axes, colouring: _Colouring) -> None:
    """Colour key for the whole figure: colorbar (continuous) or legend (categorical)."""
    if colouring.categorical:
        axes = list(np.atleast_1d(axes))
        axes[-1].legend(
            handles=colouring.legend_handles(),
            title=colouring.key,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            frameon=False,
            fontsize=8,
            title_fontsize=8,
        )
    elif colouring.values is not None:
        cb = fig.colorbar(colouring.mappable(), ax=axes, shrink=0.8, pad=0.02)
        cb.set_label(colouring.key, fontsize=9)
        cb.outline.set_visible(False)


# ----------------------------------------------------------------------------------------------
# loss


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over ``window`` values; NaNs are skipped.

    Near the first step the window narrows symmetrically (so a steep early descent is not dragged
    to the right); near the last it keeps its trailing half (so the last point is not one noisy value).
    """
    ok = np.isfinite(values)
    c = np.concatenate([[0.0], np.cumsum(np.where(ok, values, 0.0))])
    n = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(values.size)
    half = np.minimum(window // 2, i)
    lo, hi = i - half, np.minimum(i + half + 1, values.size)
    count = n[hi] - n[lo]
    return np.divide(c[hi] - c[lo], count, out=np.full(values.size, np.nan), where=count > 0)


def _plain_log_labels(axis) -> None:
    """Log-axis tick labels as plain numbers (0.8, 2, 10) instead of 8x10^-1."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(fmt)
    lo, hi = axis.get_view_interval()
    if lo > 0 and hi / lo < 30:  # under ~1.5 decades the major ticks alone are too few
        axis.set_minor_locator(LogLocator(subs=(2, 5)))
        axis.set_minor_formatter(fmt)
    else:
        axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def loss_curve(
    history: Mapping[str, Sequence[float]] | Sequence[float],
    *,
    save: str | os.PathLike | None = None,
    log: bool = True,
    smooth: int | None = None,
    title: str | None = None,
) -> Figure:
    """Training loss against optimisation step.

    Parameters
    ----------
    history
        Either a list of total losses, or a dict of equal-length lists, one per loss term
        (e.g. ``"total"``, ``"reconstruction"``, ``"consistency"``). ``"total"`` is drawn thicker.
        A term equal to ``"total"`` at every step (the reconstruction when it is the only term)
        is left out, since its line would hide under the total.
    save
        Path of a PNG to write (dpi 120).
    log
        Use a log y-axis when every finite value is positive.
    smooth
        When given, each series is drawn faintly as recorded (e.g. minibatch losses) with its
        centred mean over ``smooth`` steps on top; only the means are labelled.
    title
        Axes title.
    """
    if isinstance(history, Mapping):
        series = {str(k): np.asarray(v, dtype=np.float64).ravel() for k, v in history.items()}
    else:
        series = {"total": np.asarray(history, dtype=np.float64).ravel()}
    if "total" in series:
        total = series["total"]
        series = {
            k: v
            for k, v in series.items()
            if k == "total" or v.shape != total.shape or not np.allclose(v, total, equal_nan=True)
        }
    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.add_subplot()
    all_values = []
    for k, (name, values) in enumerate(series.items()):
        steps = np.arange(values.size)
        is_total = name == "total"
        colour = "black" if is_total else f"C{k}"
        if smooth is not None and smooth > 1:
            ax.plot(steps, values, lw=0.6, color=colour, alpha=0.25, zorder=1, label="_nolegend_")
            values = _moving_average(values, int(smooth))
        ax.plot(
            steps,
            values,
            label=name,
            lw=1.8 if is_total else 1.0,
            color=colour,
            zorder=3 if is_total else 2,
        )
        all_values.append(values[np.isfinite(values)])
    finite = np.concatenate(all_values) if all_values else np.array([])
    if log and finite.size and (finite > 0).all():
        ax.set_yscale("log")
        _plain_log_labels(ax.yaxis)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    if len(series) > 1 or (smooth is not None and smooth > 1):
        handles, labels = ax.get_legend_handles_labels()
        if smooth is not None and smooth > 1:
            from matplotlib.lines import Line2D

            labels = [f"{name} (centred mean over {smooth} steps)" for name in labels]
            handles = handles + [Line2D([], [], lw=0.6, color="black", alpha=0.4)]
            labels = labels + ["per step"]
        ax.legend(handles, labels, frameon=False, fontsize=8)
    if title is not None:
        ax.set_title(title, fontsize=10)
    _clean(ax)
    return _finish(fig, save)


# ----------------------------------------------------------------------------------------------
# phase portraits


def _arrows(
    ds: np.ndarray, du: np.ndarray, ref_s: np.ndarray, ref_u: np.ndarray, span_s: float, span_u: float
) -> tuple[np.ndarray, np.ndarray]:
    """Arrow components in data units: typical arrow ~8% of the panel, the longest capped at twice that.

    ``ref_s`` / ``ref_u`` are the velocities of all cells, which set the typical length.
    """
    ref = np.hypot(ref_s / span_s, ref_u / span_u)
    ref = ref[np.isfinite(ref) & (ref > 0)]
    if ref.size == 0:
        return np.zeros_like(ds), np.zeros_like(du)
    typical = 0.08
    f = typical / np.quantile(ref, 0.9)
    rel = np.hypot(ds / span_s, du / span_u) * f
    shrink = np.minimum(1.0, np.divide(2 * typical, rel, out=np.ones_like(rel), where=rel > 0))
    return ds * f * shrink, du * f * shrink


def phase_portraits(
    adata: AnnData,
    genes: Sequence[str | int],
    *,
    curve_t: np.ndarray | None = None,
    curve_u: np.ndarray | None = None,
    curve_s: np.ndarray | None = None,
    color: str | None = "latent_time",
    xkey: str = "Ms",
    ukey: str = "Mu",
    arrows: bool = True,
    vkey: str = "velocity",
    vukey: str = "velocity_u",
    n_arrows: int = 150,
    ncols: int = 4,
    title: str | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Unspliced (y) against spliced (x) for each gene, with the fitted trajectory and velocities.

    Parameters
    ----------
    adata
        Annotated data with ``layers[xkey]`` (spliced) and ``layers[ukey]`` (unspliced).
    genes
        Gene names or integer indices into ``adata.var``; one panel each, titled by gene name.
    curve_t, curve_u, curve_s
        Fitted trajectory: ``curve_t`` the K times, ``curve_u`` / ``curve_s`` arrays of shape
        ``(n_vars, K)`` indexed by the gene's position in ``adata.var``. Skipped when ``None``.
    color
        ``obs`` column colouring the cells: continuous (colormap and colorbar) or categorical
        (``uns[f"{color}_colors"]`` when present, else tab20, with a legend).
    xkey, ukey
        Layers of the spliced / unspliced states.
    arrows, vkey, vukey, n_arrows
        Draw ``(layers[vkey], layers[vukey])`` as arrows on ``n_arrows`` random cells (seed 0)
        when ``arrows`` is true and both layers exist.
    ncols
        Panels per row.
    title
        Title over all panels.
    save
        Path of a PNG to write (dpi 120).
    """
    for key in (xkey, ukey):
        if key not in adata.layers:
            raise InputError(f"no layers[{key!r}]: compute the moments first (or pass xkey/ukey)")
    if isinstance(genes, (str, int, np.integer)):
        genes = [genes]
    idx = [_gene_index(adata, g) for g in genes]
    if not idx:
        raise InputError("phase_portraits needs at least one gene")
    has_curve = curve_u is not None and curve_s is not None
    if has_curve:
        curve_u = np.asarray(curve_u, dtype=np.float64)
        curve_s = np.asarray(curve_s, dtype=np.float64)
        if curve_u.shape != curve_s.shape or curve_u.ndim != 2 or curve_u.shape[0] != adata.n_vars:
            raise InputError(
                f"curve_u and curve_s must both have shape (n_vars={adata.n_vars}, K); "
                f"got {curve_u.shape} and {curve_s.shape}"
            )
    draw_arrows = arrows and vkey in adata.layers and vukey in adata.layers
    colouring = _Colouring(adata, color)
    rng = np.random.default_rng(0)
    picked = np.sort(rng.choice(adata.n_obs, size=min(n_arrows, adata.n_obs), replace=False))

    n = len(idx)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    width, height = 3.2 * ncols + 1.0, 3.0 * nrows + (0.3 if title else 0.0)
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        fig.delaxes(ax)
    axes = axes[:n]
    size = _marker_size(adata.n_obs)
    order = np.argsort(colouring.values) if colouring.values is not None else np.arange(adata.n_obs)

    for ax, j in zip(axes, idx):
        s = _column(adata.layers[xkey], j)
        u = _column(adata.layers[ukey], j)
        ax.scatter(s[order], u[order], c=colouring.rgba[order], s=size, lw=0, rasterized=True)
        if has_curve:
            ax.plot(curve_s[j], curve_u[j], color="black", lw=1.5, zorder=4)
            ax.plot(curve_s[j, :1], curve_u[j, :1], "o", color="black", ms=3, zorder=5)
        if draw_arrows:
            vs = _column(adata.layers[vkey], j)
            vu = _column(adata.layers[vukey], j)
            ds, du = vs[picked], vu[picked]
            span_s = float(np.nanmax(s) - np.nanmin(s)) or 1.0
            span_u = float(np.nanmax(u) - np.nanmin(u)) or 1.0
            ok = np.isfinite(ds) & np.isfinite(du)
            qs, qu = _arrows(ds[ok], du[ok], vs, vu, span_s, span_u)
            if ok.any() and (np.hypot(qs, qu) > 0).any():
                ax.quiver(
                    s[picked][ok],
                    u[picked][ok],
                    qs,
                    qu,
                    angles="xy",
                    scale_units="xy",
                    scale=1.0,
                    width=0.004,
                    headwidth=4,
                    color="0.2",
                    alpha=0.8,
                    zorder=6,
                )
        ax.set_title(str(adata.var_names[j]), fontsize=10)
        ax.set_xlabel("spliced", fontsize=8)
        ax.set_ylabel("unspliced", fontsize=8)
        ax.tick_params(labelsize=7)
        _clean(ax)
    # Room on the right for a categorical legend (a colorbar takes its room from the panels).
    right = 1.0 - 1.0 / width if colouring.categorical else 1.0
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0.0, 0.0, right, 1.0))
    _add_key(fig, axes, colouring)
    if save is not None:
        fig.savefig(save, dpi=_DPI, bbox_inches="tight")
    return fig


# ----------------------------------------------------------------------------------------------
# embedding plots


def _scatter_embedding(ax, E: np.ndarray, colouring: _Colouring, *, labels: bool) -> None:
    size = _marker_size(E.shape[0])
    order = np.argsort(colouring.values) if colouring.values is not None else np.arange(E.shape[0])
    ax.scatter(E[order, 0], E[order, 1], c=colouring.rgba[order], s=size, lw=0, rasterized=True, zorder=1)
    if labels and colouring.categorical:
        for k, name in enumerate(colouring.categories):
            sel = colouring.codes == k
            if not sel.any():
                continue
            x, y = np.median(E[sel], axis=0)
            ax.text(
                x,
                y,
                name,
                fontsize=8,
                fontweight="bold",
                ha="center",
                va="center",
                zorder=5,
                path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")],
            )


def _grid_velocity(
    E: np.ndarray, V: np.ndarray, n_grid: int = 50, smooth: float = 1.0, min_density: float = 0.05
):
    """Gaussian-kernel average of the cells' vectors on a regular grid.

    Grid points whose kernel mass is below ``min_density`` times the 99th percentile of the
    masses (i.e. far from any crowd of cells) are masked with NaN.
    """
    lo, hi = E.min(axis=0), E.max(axis=0)
    pad = 0.02 * (hi - lo)
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], n_grid)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], n_grid)
    h = smooth * max(xs[1] - xs[0], ys[1] - ys[0])
    gx, gy = np.meshgrid(xs, ys)
    grid = np.column_stack([gx.ravel(), gy.ravel()])

    ok = np.isfinite(V).all(axis=1) & np.isfinite(E).all(axis=1)
    E, V = E[ok], V[ok]
    mass = np.zeros(grid.shape[0])
    acc = np.zeros((grid.shape[0], 2))
    chunk = max(1, 2**22 // max(E.shape[0], 1))
    for start in range(0, grid.shape[0], chunk):
        g = grid[start : start + chunk]
        d2 = ((g[:, None, :] - E[None, :, :]) ** 2).sum(-1)
        w = np.exp(-0.5 * d2 / h**2)
        mass[start : start + chunk] = w.sum(1)
        acc[start : start + chunk] = w @ V
    U = np.divide(acc, mass[:, None], out=np.zeros_like(acc), where=mass[:, None] > 0)
    masked = mass < min_density * np.quantile(mass, 0.99)
    U[masked] = np.nan
    return xs, ys, U[:, 0].reshape(n_grid, n_grid), U[:, 1].reshape(n_grid, n_grid)


def velocity_stream(
    adata: AnnData,
    *,
    basis: str = "umap",
    color: str | None = "clusters",
    vkey: str = "velocity",
    density: float = 1.5,
    title: str | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Embedding coloured by ``obs[color]`` with streamlines of the embedded velocity field.

    The cells' vectors ``obsm[f"{vkey}_{basis}"]`` (computed with
    :func:`velode.tl._graph.velocity_embedding` when missing, which may set
    ``obsp[f"{vkey}_graph"]``, ``obsp[f"{vkey}_graph_neg"]`` and ``obsm[f"{vkey}_{basis}"]``) are
    smoothed onto a regular grid with a Gaussian kernel; grid points with few cells nearby are
    left empty. Categories are labelled at their median position, continuous values get a colorbar.

    Parameters
    ----------
    basis
        Embedding name (reads ``obsm[f"X_{basis}"]``).
    color
        ``obs`` column colouring the cells.
    vkey
        Velocity key.
    density
        Streamline density passed to ``Axes.streamplot``.
    title
        Axes title (default: the colour key).
    save
        Path of a PNG to write (dpi 120).
    """
    E = _embedding(adata, basis)
    key = f"{vkey}_{basis}"
    if key not in adata.obsm:
        from .tl._graph import velocity_embedding

        velocity_embedding(adata, basis=basis, vkey=vkey)
    V = np.asarray(adata.obsm[key], dtype=np.float64)[:, :2]
    colouring = _Colouring(adata, color)

    fig = Figure(figsize=(6.0, 5.0))
    ax = fig.add_subplot()
    _scatter_embedding(ax, E, colouring, labels=True)
    xs, ys, gu, gv = _grid_velocity(E, V)
    speed = np.hypot(gu, gv)
    if np.isfinite(speed).any() and np.nanmax(speed) > 0:
        lw = 0.4 + 1.4 * np.nan_to_num(speed / np.nanmax(speed))
        ax.streamplot(
            xs,
            ys,
            np.ma.masked_invalid(gu),
            np.ma.masked_invalid(gv),
            density=density,
            color="0.15",
            linewidth=lw,
            arrowsize=1.0,
            zorder=3,
        )
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(ys[0], ys[-1])
    _frameless(ax, basis)
    if title is not None or color is not None:
        ax.set_title(title if title is not None else color, fontsize=10)
    if colouring.values is not None:
        _add_key(fig, ax, colouring)
    return _finish(fig, save)


def velocity_magnitude(
    adata: AnnData,
    *,
    basis: str = "umap",
    vkey: str = "velocity",
    genes_key: str | None = "velocity_genes",
    groupby: str | None = None,
    title: str | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Embedding coloured by the norm of each cell's velocity over the velocity genes.

    The norm uses the genes flagged in ``var[genes_key]`` (all genes when absent) and ignores NaN.
    With ``groupby`` (an ``obs`` column) a second panel shows the norm per group: box plots
    (median, quartiles, 5-95% whiskers) for a categorical column, the cells against the column's
    values with their running median for a continuous one.
    """
    E = _embedding(adata, basis)
    if vkey not in adata.layers:
        raise InputError(f"no layers[{vkey!r}]: fit the model and write its velocities first")
    if groupby is not None and groupby not in adata.obs:
        raise InputError(f"no obs[{groupby!r}] to group the cells by")
    V = _dense(adata.layers[vkey])
    if genes_key is not None and genes_key in adata.var:
        V = V[:, np.asarray(adata.var[genes_key], dtype=bool)]
    norm = np.sqrt(np.nansum(V**2, axis=1))
    label = f"|{vkey}| ({V.shape[1]} genes)"

    fig = Figure(figsize=(6.0, 5.0) if groupby is None else (11.0, 4.8))
    ax = fig.add_subplot(1, 1, 1) if groupby is None else fig.add_subplot(1, 2, 1)
    order = np.argsort(norm)
    sc = ax.scatter(
        E[order, 0], E[order, 1], c=norm[order], cmap="magma_r", s=_marker_size(adata.n_obs), lw=0, rasterized=True
    )
    cb = fig.colorbar(sc, ax=ax, shrink=0.8, pad=0.02)
    cb.set_label(label, fontsize=9)
    cb.outline.set_visible(False)
    _frameless(ax, basis)
    ax.set_title("velocity magnitude" if groupby is None else f"velocity magnitude on {basis.upper()}", fontsize=10)
    if groupby is not None:
        _magnitude_by(fig.add_subplot(1, 2, 2), adata, norm, groupby, label)
    if title is not None:
        fig.suptitle(title, fontsize=11)
    return _finish(fig, save)


def _magnitude_by(ax, adata: AnnData, norm: np.ndarray, groupby: str, label: str) -> None:
    colouring = _Colouring(adata, groupby)
    if colouring.categorical:
        present = [k for k in range(len(colouring.categories)) if (colouring.codes == k).any()]
        data = [norm[colouring.codes == k] for k in present]
        names = [colouring.categories[k] for k in present]
        pos = np.arange(len(present))[::-1]  # first category on top
        # matplotlib >= 3.10 says orientation=, older versions vert=
        horizontal = {"orientation": "horizontal"} if _MPL >= (3, 10) else {"vert": False}
        bp = ax.boxplot(
            data, positions=pos, widths=0.6, whis=(5, 95), showfliers=False, patch_artist=True,
            medianprops=dict(color="black", lw=1.2), **horizontal,
        )
        for box, name in zip(bp["boxes"], names):
            box.set_facecolor(colouring.palette[name])
            box.set_edgecolor("0.2")
        ax.set_yticks(pos)
        ax.set_yticklabels([f"{n} ({d.size})" for n, d in zip(names, data)], fontsize=8)
        ax.set_ylabel(f"{groupby} (cells)", fontsize=9)
    else:
        x = colouring.values
        ok = np.isfinite(x) & np.isfinite(norm)
        ax.scatter(x[ok], norm[ok], s=_marker_size(adata.n_obs), c="0.55", lw=0, rasterized=True, label="cells")
        if ok.sum() >= 10:
            o = np.argsort(x[ok])
            w = max(5, ok.sum() // 25)
            med = pd.Series(norm[ok][o]).rolling(w, center=True, min_periods=1).median().to_numpy()
            ax.plot(x[ok][o], med, color="C3", lw=1.8, label=f"running median ({w} cells)")
            ax.legend(frameon=False, fontsize=8)
        ax.set_xlabel(groupby, fontsize=9)
        ax.set_ylim(bottom=0)
    ax.set_xlabel(label if colouring.categorical else groupby, fontsize=9)
    if not colouring.categorical:
        ax.set_ylabel(label, fontsize=9)
    ax.set_title(f"velocity magnitude by {groupby}", fontsize=10)
    ax.tick_params(labelsize=8)
    _clean(ax)


# ----------------------------------------------------------------------------------------------
# heatmap


def heatmap_along_time(
    adata: AnnData,
    genes: Sequence[str | int],
    *,
    time_key: str = "latent_time",
    layer: str | None = "Ms",
    n_bins: int = 100,
    color: str | None = None,
    highlight: Sequence[str] = (),
    title: str | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Expression of ``genes`` along ``obs[time_key]``: genes x time bins, sorted by peak time.

    Cells are ordered by time and grouped into ``n_bins`` bins of equal size; each gene's binned
    mean is smoothed (Gaussian, sigma = 2% of the bins) and min-max scaled to [0, 1]. Genes are
    sorted by the bin of their maximum. ``layer=None`` or ``"X"`` reads ``adata.X``.

    ``color`` (an ``obs`` column) adds a band over the heatmap with the same bins: the most
    frequent category of each bin (with a legend) or the bin mean of a continuous column.
    Gene names in ``highlight`` are written in bold.
    """
    if time_key not in adata.obs:
        raise InputError(f"no obs[{time_key!r}]: fit the model (latent time) first or pass time_key")
    if layer in (None, "X"):
        M = adata.X
    elif layer in adata.layers:
        M = adata.layers[layer]
    else:
        raise InputError(f"no layers[{layer!r}]")
    if color is not None and color not in adata.obs:
        raise InputError(f"no obs[{color!r}] to draw over the heatmap")
    if isinstance(genes, (str, int, np.integer)):
        genes = [genes]
    idx = [_gene_index(adata, g) for g in genes]
    if not idx:
        raise InputError("heatmap_along_time needs at least one gene")

    t = np.asarray(adata.obs[time_key], dtype=np.float64)
    cells = np.flatnonzero(np.isfinite(t))
    if cells.size == 0:
        raise InputError(f"obs[{time_key!r}] has no finite value")
    cells = cells[np.argsort(t[cells], kind="stable")]
    Y = M[cells][:, idx]
    Y = _dense(Y)
    n_bins = int(max(1, min(n_bins, cells.size)))
    bins = np.minimum((np.arange(cells.size) * n_bins) // cells.size, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    binned = np.stack([np.bincount(bins, weights=np.nan_to_num(Y[:, k]), minlength=n_bins) for k in range(len(idx))])
    binned /= counts
    sigma = max(n_bins * 0.02, 0.5)
    smooth = gaussian_filter1d(binned, sigma=sigma, axis=1, mode="nearest")
    lo = smooth.min(axis=1, keepdims=True)
    hi = smooth.max(axis=1, keepdims=True)
    scaled = np.divide(smooth - lo, hi - lo, out=np.zeros_like(smooth), where=(hi - lo) > 0)
    order = np.argsort(np.argmax(scaled, axis=1), kind="stable")
    scaled = scaled[order]
    names = [str(adata.var_names[idx[k]]) for k in order]

    colouring = _Colouring(adata, color) if color is not None else None
    band = 0.0 if colouring is None else (0.3 if colouring.categorical else 0.8)
    heat = max(1.6, 0.18 * len(idx))
    legend_rows = 0 if colouring is None or not colouring.categorical else math.ceil(len(colouring.categories) / 4)
    fig = Figure(figsize=(6.5, heat + band + 0.9 + 0.25 * legend_rows + (0.3 if title else 0.0)), layout="constrained")
    if colouring is None:
        gs = fig.add_gridspec(1, 2, width_ratios=(1.0, 0.03))
        ax = fig.add_subplot(gs[0, 0])
        cax = fig.add_subplot(gs[0, 1])
    else:
        gs = fig.add_gridspec(2, 2, width_ratios=(1.0, 0.03), height_ratios=(band, heat))
        ax = fig.add_subplot(gs[1, 0])
        cax = fig.add_subplot(gs[1, 1])
        bax = fig.add_subplot(gs[0, 0], sharex=ax)
        fig.add_subplot(gs[0, 1]).set_axis_off()
    im = ax.imshow(
        scaled,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        vmin=0,
        vmax=1,
        extent=(0, n_bins, len(idx) - 0.5, -0.5),
    )
    # Bins hold equal numbers of cells, so the axis is the cells' rank; ticks show the time there.
    t_sorted = t[cells]
    ticks = np.linspace(0, n_bins, 5)
    at = np.minimum((ticks / n_bins * cells.size).astype(int), cells.size - 1)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{v:.2f}" for v in t_sorted[at]], fontsize=8)
    if len(idx) <= 60:
        ax.set_yticks(np.arange(len(idx)))
        ax.set_yticklabels(names, fontsize=7 if len(idx) > 20 else 8)
        bold = set(map(str, highlight))
        for label in ax.get_yticklabels():
            if label.get_text() in bold:
                label.set_fontweight("bold")
    else:
        ax.set_yticks([])
        ax.set_ylabel(f"{len(idx)} genes")
    ax.set_xlabel(f"{time_key} (cells in order, {n_bins} bins of equal size)", fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("scaled expression", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    cb.outline.set_visible(False)
    if colouring is not None:
        _time_band(fig, bax, colouring, cells, bins, n_bins)
    if title is not None:
        fig.suptitle(title, fontsize=11)
    if save is not None:
        fig.savefig(save, dpi=_DPI, bbox_inches="tight")
    return fig


def _time_band(fig: Figure, ax, colouring: _Colouring, cells: np.ndarray, bins: np.ndarray, n_bins: int) -> None:
    """The band over the heatmap: per time bin, the most frequent category or the mean value."""
    ax.tick_params(labelbottom=False, bottom=False, labelsize=7)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    if colouring.categorical:
        codes = colouring.codes[cells]
        n_cat = len(colouring.categories)
        table = np.zeros((n_bins, n_cat + 1))
        np.add.at(table, (bins, np.where(codes >= 0, codes, n_cat)), 1)
        top = np.argmax(table[:, :n_cat], axis=1)
        colours = np.array([colouring.palette[c] for c in colouring.categories])[top]
        ax.imshow(colours[None], aspect="auto", interpolation="nearest", extent=(0, n_bins, 1, 0))
        ax.set_yticks([0.5])
        ax.set_yticklabels([colouring.key], fontsize=8)
        ax.tick_params(left=False)
        ax.spines["left"].set_visible(False)
        fig.legend(
            handles=colouring.legend_handles(),
            loc="outside lower center",
            ncol=min(4, n_cat),
            frameon=False,
            fontsize=8,
            title=f"{colouring.key} (most frequent in each bin)",
            title_fontsize=8,
        )
    else:
        v = colouring.values[cells]
        ok = np.isfinite(v)
        counts = np.bincount(bins[ok], minlength=n_bins)
        mean = np.bincount(bins[ok], weights=v[ok], minlength=n_bins)
        mean = np.divide(mean, counts, out=np.full(n_bins, np.nan), where=counts > 0)
        ax.plot(np.arange(n_bins) + 0.5, mean, color="0.2", lw=1.2)
        ax.set_ylabel(colouring.key, fontsize=8)
        ax.locator_params(axis="y", nbins=3)
