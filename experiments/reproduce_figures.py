"""The figures of the seed example, on pancreas or on the built-in synthetic data, one command each.

    python experiments/reproduce_figures.py pancreas [--path FILE] [--only NAME] [--out DIR] [--run RUN_DIR]
    python experiments/reproduce_figures.py synthetic [--only NAME] [--out DIR]

NAME is one of: stream (velocity field on a UMAP), phase (phase portraits with velocity arrows),
loss (training loss curve), heatmap (marker genes along latent time), magnitude (velocity magnitude
across cells). Without --only every figure is drawn. The data are fitted with velode's defaults, or
read from a finished `velode` run folder with --run (its velocity.h5ad and history.json).

Marker genes of the heatmap: on pancreas, the known endocrinogenesis markers present in the data
(Sox9, Neurog3, Pax4, Fev, Pdx1, Gcg, Ins1, Ins2, Sst, Ghrl) followed by the best-fitted velocity genes
(highest fit R^2) up to 20 genes; on the synthetic data, the 20 best-fitted genes. Genes are shown in
order of the latent time of their peak.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402

import velode  # noqa: E402
from velode import _outputs  # noqa: E402

FIGURES = ["stream", "phase", "loss", "heatmap", "magnitude"]
PANCREAS_MARKERS = ["Sox9", "Neurog3", "Pax4", "Fev", "Pdx1", "Gcg", "Ins1", "Ins2", "Sst", "Ghrl"]
DEFAULT_PANCREAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pancreas.h5ad"


def load(dataset: str, path: str | None, run: str | None, max_steps: int | None):
    """(adata with a fit, loss history)."""
    if run is not None:
        import anndata as ad

        run = Path(run)
        adata = ad.read_h5ad(run / "velocity.h5ad")
        hist_file = run / "history.json"
        history = json.loads(hist_file.read_text()) if hist_file.exists() else adata.uns["velode"]["history"]
        return adata, history
    if dataset == "pancreas":
        adata = velode.pp.preprocess(velode.read(path or DEFAULT_PANCREAS))
    else:
        adata = velode.pp.preprocess(velode.datasets.synthetic(), method="none")
    trainer = {} if max_steps is None else {"max_steps": max_steps, "progress": False}
    result = velode.tl.fit(adata, trainer=trainer)
    return adata, result.state.history


def marker_genes(adata, dataset: str, n: int = 20) -> list[str]:
    names = list(adata.var_names)
    chosen = [g for g in PANCREAS_MARKERS if g in names] if dataset == "pancreas" else []
    r2 = np.nan_to_num(adata.var["fit_r2"].to_numpy(float), nan=-np.inf)
    for i in np.argsort(-r2):
        if len(chosen) >= n:
            break
        if names[i] not in chosen:
            chosen.append(names[i])
    # order by the latent time at which the gene's (smoothed) spliced level peaks
    t = adata.obs["latent_time"].to_numpy()
    order = np.argsort(t)
    idx = [names.index(g) for g in chosen]
    x = np.asarray(adata.layers["Ms"][:, idx], float)[order]
    k = max(1, len(order) // 50)
    smooth = np.stack([np.convolve(col, np.ones(k) / k, mode="same") for col in x.T])
    peak = t[order][np.argmax(smooth, axis=1)]
    return [chosen[j] for j in np.argsort(peak, kind="stable")]


def draw(name: str, adata, history, dataset: str):
    from velode import pl, tl

    color = "clusters" if "clusters" in adata.obs else "latent_time"
    if name in ("stream", "magnitude") and "X_umap" not in adata.obsm:
        import scanpy as sc

        sc.tl.umap(adata, random_state=0)
    if name == "stream":
        if "velocity_umap" not in adata.obsm:
            tl.velocity_graph(adata)
            tl.velocity_embedding(adata, basis="umap")
        return pl.velocity_stream(adata, color=color)
    if name == "phase":
        r2 = np.nan_to_num(adata.var["fit_r2"].to_numpy(float), nan=-np.inf)
        best = [int(i) for i in np.argsort(-r2)[:8]]
        t, u, s = tl.fitted_curves(adata)
        return pl.phase_portraits(adata, best, curve_t=t, curve_u=u, curve_s=s, color=color)
    if name == "loss":
        return pl.loss_curve(history)
    if name == "heatmap":
        return pl.heatmap_along_time(adata, marker_genes(adata, dataset))
    if name == "magnitude":
        return pl.velocity_magnitude(adata)
    raise ValueError(f"unknown figure {name!r}: choose one of {FIGURES}")


def main(argv=None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=["pancreas", "synthetic"])
    ap.add_argument("--path", default=None, help="pancreas .h5ad (default ../shared/data/pancreas.h5ad)")
    ap.add_argument("--only", choices=FIGURES, default=None, help="draw only this figure")
    ap.add_argument("--out", default=None, help="output folder (default figures/DATASET)")
    ap.add_argument("--run", default=None, help="a finished velode run folder to draw from instead of fitting")
    ap.add_argument("--max-steps", type=int, default=None, help="cap on training steps (quick checks)")
    args = ap.parse_args(argv)
    out = Path(args.out or f"figures/{args.dataset}")
    adata, history = load(args.dataset, args.path, args.run, args.max_steps)
    written = []
    import matplotlib.pyplot as plt

    for name in [args.only] if args.only else FIGURES:
        fig = draw(name, adata, history, args.dataset)
        path = out / f"{name}.png"
        _outputs.atomic_write(path, lambda tmp, f=fig: f.savefig(tmp, dpi=100, format="png", bbox_inches="tight"))
        plt.close(fig)
        written.append(path)
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
