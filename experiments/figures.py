"""The figures of a velode fit, on pancreas or on the built-in synthetic data, one command each.

    python experiments/figures.py pancreas [--path FILE] [--out figures/pancreas] [--only NAME] [--run DIR]
    python experiments/figures.py synthetic [--out figures/synthetic] [--only NAME] [--run DIR]

(--max-steps N and --subsample N shorten the fit for quick checks; the committed figures use neither.)

NAME is one of
  stream     velocity field (streamlines) on a UMAP
  phase      phase portraits (u against s) of the 8 best-fitted genes: fitted curve, velocity arrows
  loss       training loss against step
  heatmap    marker genes along latent time (genes ordered by peak time, cells by latent time)
  magnitude  velocity magnitude on the UMAP and per cluster (or against time)
and NAME.png is written into --out; without --only all five are drawn from the same fit. The data
are fitted with velode's defaults (`velode.tl.fit(adata)`), or read from a finished `velode` run
folder with --run (its velocity.h5ad: obs latent_time, layers velocity, var fit_*, and the loss
history in uns["velode"]["history"]). pancreas is preprocessed as `velode.pp.preprocess` does by
default; the synthetic data are fitted as given (`method="none"`). The pancreas file defaults to
../shared/data/pancreas.h5ad next to the repository.

Cells are coloured (and grouped) by obs["clusters"] when the data have it, else by the true time of
the simulation, else by the latent time. A UMAP is computed (scanpy, random_state 0) when the data
have none.

Marker genes of the heatmap, chosen from the data by one rule:
  1. each velocity gene's profile: spliced moments (Ms) of the cells ordered by latent time, in 100
     bins of equal cell count, smoothed (Gaussian, sigma 2 bins) and scaled to [0, 1];
  2. candidates: the 100 velocity genes with the highest fit R^2;
  3. peak clarity = 1 - mean of the scaled profile (near 1: expressed in one short stretch of time);
  4. the bins are cut into 5 windows of 20 (a fifth of the cells each); each candidate belongs to the
     window of its peak, and each window contributes its 4 clearest candidates (slots a window cannot
     fill go to the clearest candidates left);
  5. the known endocrinogenesis markers found in the data are added and drawn in bold: Sox9, Krt19
     (ductal), Neurog3 (endocrine progenitors), Pax4, Fev (pre-endocrine), Pdx1, Ins1, Ins2, Gcg, Sst,
     Ghrl (hormone-producing cells); the synthetic data have none of them.
"""

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from scipy.ndimage import gaussian_filter1d  # noqa: E402

import velode  # noqa: E402
from velode import _outputs, pl, tl  # noqa: E402

FIGURES = ("stream", "phase", "loss", "heatmap", "magnitude")
KNOWN_MARKERS = ("Sox9", "Krt19", "Neurog3", "Pax4", "Fev", "Pdx1", "Ins1", "Ins2", "Gcg", "Sst", "Ghrl")
DEFAULT_PANCREAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pancreas.h5ad"
N_PHASE = 8
DPI = 100


def load(dataset: str, path: str | None, run: str | None, max_steps: int | None = None,
         subsample: int | None = None):
    """(AnnData with a velode fit, loss history dict)."""
    if run is not None:
        h5ad = Path(run) / "velocity.h5ad"
        if not h5ad.exists():
            raise SystemExit(f"figures: no {h5ad}: --run takes a finished velode run folder")
        adata = velode.read(h5ad)
        if "latent_time" not in adata.obs or "velocity" not in adata.layers:
            raise SystemExit(f"figures: {h5ad} has no velode fit (obs['latent_time'], layers['velocity'])")
        return adata, dict(adata.uns.get("velode", {}).get("history", {}))
    if dataset == "pancreas":
        file = Path(path) if path else DEFAULT_PANCREAS
        if not file.exists():
            raise SystemExit(f"figures: pancreas file {file} not found: pass it with --path FILE")
        adata = _subsample(velode.read(file), subsample)
        adata = velode.pp.preprocess(adata)
    else:
        adata = velode.pp.preprocess(_subsample(velode.datasets.synthetic(), subsample), method="none")
    trainer = None if max_steps is None else {"max_steps": max_steps}
    result = velode.tl.fit(adata, trainer=trainer)
    plateau = " (plateau)" if result.state.stopped_early else ""
    print(f"fitted {adata.n_obs} cells x {adata.n_vars} genes: {result.state.step} steps{plateau}, "
          f"{result.fit_seconds:.1f} s, {int(adata.var['velocity_genes'].sum())} velocity genes", flush=True)
    return adata, result.state.history


def _subsample(adata, n: int | None):
    if n is None or n >= adata.n_obs:
        return adata
    keep = np.sort(np.random.default_rng(0).choice(adata.n_obs, size=n, replace=False))
    return adata[keep].copy()


def colour_key(adata) -> str:
    for key in ("clusters", "true_time", "latent_time"):
        if key in adata.obs:
            return key
    raise AssertionError("a fitted AnnData has obs['latent_time']")


def ensure_umap(adata) -> None:
    if "X_umap" not in adata.obsm:
        import scanpy as sc

        sc.tl.umap(adata, random_state=0)


def time_profiles(adata, genes: np.ndarray, n_bins: int = 100) -> np.ndarray:
    """Scaled Ms profiles (genes x bins) of ``genes`` (indices) along latent time; see the module docstring."""
    order = np.argsort(adata.obs["latent_time"].to_numpy(), kind="stable")
    ms = adata.layers["Ms"]
    x = np.asarray(ms[order][:, genes].toarray() if hasattr(ms, "toarray") else ms[order][:, genes], float)
    bins = np.minimum(np.arange(order.size) * n_bins // order.size, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    binned = np.stack([np.bincount(bins, weights=col, minlength=n_bins) for col in x.T]) / counts
    smooth = gaussian_filter1d(binned, sigma=2.0, axis=1, mode="nearest")
    lo, hi = smooth.min(1, keepdims=True), smooth.max(1, keepdims=True)
    return np.divide(smooth - lo, hi - lo, out=np.zeros_like(smooth), where=hi > lo)


def marker_genes(adata, *, n_candidates: int = 100, n_windows: int = 5, per_window: int = 4):
    """(genes for the heatmap, known markers among them); the rule is in the module docstring."""
    names = np.asarray(adata.var_names.astype(str))
    r2 = np.nan_to_num(adata.var["fit_r2"].to_numpy(float), nan=-np.inf)
    velocity = np.asarray(adata.var["velocity_genes"], bool) if "velocity_genes" in adata.var else np.isfinite(r2)
    pool = np.flatnonzero(velocity)
    cand = pool[np.argsort(-r2[pool], kind="stable")[:n_candidates]]
    chosen: list[int] = []
    if cand.size:
        prof = time_profiles(adata, cand)
        clarity = 1.0 - prof.mean(1)
        window = np.argmax(prof, axis=1) * n_windows // prof.shape[1]
        ranked = np.argsort(-clarity, kind="stable")
        for w in range(n_windows):
            chosen += [int(cand[k]) for k in ranked if window[k] == w][:per_window]
        for k in ranked:  # slots left by windows with too few candidates
            if len(chosen) >= n_windows * per_window:
                break
            if int(cand[k]) not in chosen:
                chosen.append(int(cand[k]))
    genes = [str(names[i]) for i in chosen]
    known = [g for g in KNOWN_MARKERS if g in set(names)]
    return genes + [g for g in known if g not in genes], known


def draw(name: str, adata, history, dataset: str):
    key = colour_key(adata)
    if name == "stream":
        ensure_umap(adata)
        if "velocity_umap" not in adata.obsm:
            tl.velocity_graph(adata)
            tl.velocity_embedding(adata, basis="umap")
        return pl.velocity_stream(adata, color=key, title=f"{dataset}: velocity field on UMAP, cells by {key}")
    if name == "phase":
        r2 = np.nan_to_num(adata.var["fit_r2"].to_numpy(float), nan=-np.inf)
        best = [int(i) for i in np.argsort(-r2, kind="stable")[:N_PHASE]]
        t, u, s = tl.fitted_curves(adata)
        return pl.phase_portraits(
            adata, best, curve_t=t, curve_u=u, curve_s=s, color=key,
            title=f"{dataset}: the {len(best)} best-fitted genes (fit R\u00b2), fitted curve from its start (dot) "
                  "and velocity arrows",
        )
    if name == "loss":
        if not history or not len(history.get("total", [])):
            raise SystemExit("figures: no loss history in this fit (uns['velode']['history'])")
        n = len(history["total"])
        return pl.loss_curve(history, smooth=max(2, min(50, n // 20)),
                             title=f"{dataset}: training loss (minibatches)")
    if name == "heatmap":
        genes, known = marker_genes(adata)
        return pl.heatmap_along_time(
            adata, genes, color=key, highlight=known,
            title=f"{dataset}: marker genes along latent time" + (" (known markers in bold)" if known else ""),
        )
    if name == "magnitude":
        ensure_umap(adata)
        return pl.velocity_magnitude(adata, groupby=key, title=f"{dataset}: velocity magnitude across cells")
    raise ValueError(f"unknown figure {name!r}: choose one of {FIGURES}")


def main(argv=None) -> dict[str, Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=["pancreas", "synthetic"])
    ap.add_argument("--path", default=None, help=f"pancreas .h5ad (default {DEFAULT_PANCREAS})")
    ap.add_argument("--out", default=None, help="output folder (default figures/DATASET)")
    ap.add_argument("--only", choices=FIGURES, default=None, help="draw only this figure")
    ap.add_argument("--run", default=None, help="a finished velode run folder to draw instead of fitting")
    ap.add_argument("--max-steps", type=int, default=None, help="cap on training steps (quick checks)")
    ap.add_argument("--subsample", type=int, default=None, metavar="N",
                    help="fit N random cells (seed 0) instead of all (quick checks)")
    args = ap.parse_args(argv)
    if args.run is not None and (args.max_steps is not None or args.subsample is not None):
        ap.error("--max-steps and --subsample apply to a new fit, not to --run")
    out = Path(args.out or f"figures/{args.dataset}")
    t0 = time.perf_counter()
    adata, history = load(args.dataset, args.path, args.run, args.max_steps, args.subsample)
    written = {}
    for name in [args.only] if args.only else FIGURES:
        fig = draw(name, adata, history, args.dataset)
        written[name] = out / f"{name}.png"
        _outputs.save_figure(written[name], fig, dpi=DPI)
        print(f"wrote {written[name]}", flush=True)
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)
    return written


if __name__ == "__main__":
    main()
