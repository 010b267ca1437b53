"""How far can a velocity that follows a clock go on the pancreas harness?

Fits velode (one seed) on the harness's preprocessed data, then scores several velocities on the
same kNN graph and UMAP:

- ``model``: velode's velocity;
- ``local slope (velode clock)``: for each cell, the least-squares slope of ``Ms`` against latent
  time over the cell and its kNN neighbours. This is the derivative of the data itself along the
  model's clock, cell by cell, so branches stay apart. It is what a model with perfectly flexible
  per-gene (and per-neighbourhood) trajectories on this clock would give;
- ``local slope (diffusion pseudotime)``: the same along scanpy's diffusion pseudotime, rooted at the
  earliest Ductal cell of the model's clock, a clock that does not come from velode;
- ``trend, bandwidth h``: the slope of a kernel regression of ``Ms`` on latent time over all cells
  (one trajectory per gene, all branches pooled);
- ``local slope (known stage order x w + velode clock)``: the local slope along a clock that orders
  the cells by their known stage first (Ductal, Ngn3 low EP, Ngn3 high EP, Pre-endocrine, endocrine:
  the benchmark's ``STAGES``) and by velode's latent time within a stage (``stage_clock``). It reads
  the cluster labels, so it is not a method: it is what the data's own derivative gives along a
  clock that orders every boundary right, an upper reference for any clock a model can learn;
- ``local slope (raw-count clock)``: the same along a clock read off the raw counts instead of the
  moments: each cell's time is where the fitted genes' trajectories (``velode.tl.fitted_curves``) best
  explain its raw spliced and unspliced counts under a Poisson likelihood (``count_clock``). The moments
  average a cell with its 30 neighbours, which blurs the boundaries; the raw counts do not;
- ``local slope (velocity pseudotime)``: along scVelo's velocity pseudotime of velode's velocities
  (a clock that integrates the velocities over the graph), and ``velode fitted on velocity
  pseudotime, clock kept``;
- ``velode fitted on the known stage order ..., clock kept``: velode fitted again with that clock
  given and kept (``time_key``, ``model.freeze_clock``): what velode's kinetics make of a clock that
  orders the boundaries, as far as the time encoder can follow it (``local slope (the clock velode
  kept)``: the data's slope along the clock the encoder learned).

For each clock it also prints the share of the Ductal cells' Ngn3 low EP kNN neighbours that come
later on it (``later_share`` of ``scripts/variants.py``), the boundary no label-free clock orders.

If the slopes score no better than the model, the model's kinetics are not what limits the score:
the clock and the data are. Usage::

    python scripts/clock_ceiling.py --pancreas ../shared/data/pancreas.h5ad --seed 0 [--out docs/benchmark/clock_ceiling]
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import velode  # noqa: E402
from benchmark import STAGES, preprocess_pancreas  # noqa: E402
from benchmark import score_velocity as score  # noqa: E402
from variants import later_share  # noqa: E402


def local_slope(ms: np.ndarray, t: np.ndarray, connectivities) -> np.ndarray:
    """Per cell: the slope of ms against t over the cell and its graph neighbours (cells x genes)."""
    c = connectivities.tocsr()
    out = np.zeros_like(ms)
    for i in range(ms.shape[0]):
        nb = np.append(c.indices[c.indptr[i]:c.indptr[i + 1]], i)
        dt = t[nb] - t[nb].mean()
        out[i] = dt @ (ms[nb] - ms[nb].mean(0)) / max(float(dt @ dt), 1e-12)
    return out


def trend_slope(ms: np.ndarray, t: np.ndarray, bandwidth: float, block: int = 256) -> np.ndarray:
    """Per cell: the slope of a Gaussian-kernel local-linear regression of ms on t over all cells."""
    out = np.zeros_like(ms)
    for i0 in range(0, len(t), block):
        w = np.exp(-0.5 * ((t[None, :] - t[i0:i0 + block, None]) / bandwidth) ** 2)
        sw = w.sum(1, keepdims=True)
        dt = t[None, :] - (w * t).sum(1, keepdims=True) / sw
        var = (w * dt * dt).sum(1, keepdims=True) / sw
        out[i0:i0 + block] = ((w * dt) @ ms / sw) / np.maximum(var, 1e-12)
    return out


def stage_clock(clusters, t: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """A clock that orders cells by their known stage (``STAGES``) and, within a stage, by ``t`` in [0, 1].

    ``weight`` is the length of one stage on the clock, against ``t``'s range of 1: at 1 or more no cell
    of a later stage comes before a cell of an earlier one; below 1 the stages overlap on the clock.
    """
    stage = np.array([STAGES[str(c)] for c in np.asarray(clusters)], float)
    return weight * stage + np.asarray(t, float)


def diffusion_pseudotime(adata, root: int) -> np.ndarray:
    import scanpy as sc

    b = adata.copy()
    sc.tl.diffmap(b)
    b.uns["iroot"] = int(root)
    sc.tl.dpt(b)
    return np.asarray(b.obs["dpt_pseudotime"], float)


def size_factors(raw, normalized) -> np.ndarray:
    """Per cell: raw counts over size-normalised counts (the factor normalisation divided each cell by)."""
    raw_sum = np.asarray(raw.sum(1), float).ravel()
    norm_sum = np.asarray(normalized.sum(1), float).ravel()
    return raw_sum / np.maximum(norm_sum, 1e-12)


def count_clock(counts_s, counts_u, size_s, size_u, s_grid, u_grid, grid, floor: float = 1e-3,
                block: int = 512) -> np.ndarray:
    """Per cell: the time of ``grid`` where the trajectories best explain its raw counts (Poisson likelihood).

    ``s_grid``, ``u_grid`` (points x genes) are the genes' states along ``grid`` in size-normalised units;
    the expected count of a cell is its size factor (``size_s``, ``size_u``) times the state, floored at
    ``floor``. Counts may be dense or sparse (cells x genes).
    """
    import scipy.sparse as sp

    log_s, log_u = np.log(np.maximum(s_grid, floor)), np.log(np.maximum(u_grid, floor))
    tot_s, tot_u = np.maximum(s_grid, floor).sum(1), np.maximum(u_grid, floor).sum(1)
    dense = lambda x: np.asarray(x.todense() if sp.issparse(x) else x, float)  # noqa: E731
    out = np.empty(counts_s.shape[0])
    for lo in range(0, counts_s.shape[0], block):
        hi = min(lo + block, counts_s.shape[0])
        ll = (dense(counts_s[lo:hi]) @ log_s.T - np.outer(size_s[lo:hi], tot_s)
              + dense(counts_u[lo:hi]) @ log_u.T - np.outer(size_u[lo:hi], tot_u))
        out[lo:hi] = np.asarray(grid)[np.argmax(ll, axis=1)]
    return out


def velocity_pseudotime(adata, velocity, velocity_genes) -> np.ndarray:
    """scVelo's velocity pseudotime of ``velocity`` on ``adata``'s graph and moments."""
    import scvelo as scv

    b = adata.copy()
    b.layers["velocity"] = np.nan_to_num(np.asarray(velocity, float))
    b.var["velocity_genes"] = np.asarray(velocity_genes, bool)
    verbosity, scv.settings.verbosity = scv.settings.verbosity, 0
    try:
        scv.tl.velocity_graph(b, n_jobs=1)
        scv.tl.velocity_pseudotime(b)
    finally:
        scv.settings.verbosity = verbosity
    return np.asarray(b.obs["velocity_pseudotime"], float)


def plot_rows(rows: dict, path, names=None) -> None:
    """CBDir per transition (and the mean) of the velocities ``names`` of ``rows`` (all by default), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows) if names is None else [n for n in names if n in rows]
    edges = [k for k in rows[names[0]] if k.startswith("CBDir ") and "UMAP" not in k]
    labels = [k.replace("CBDir ", "").replace(" -> ", "\n-> ") for k in edges] + ["mean"]
    x = np.arange(len(labels))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(11, 4.8))
    for i, name in enumerate(names):
        vals = [rows[name][k] for k in edges] + [rows[name]["CBDir"]]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=name)
    ax.axhline(0.6, color="k", ls="--", lw=0.8)
    ax.text(x[-1] + 0.45, 0.61, "target 0.60", ha="right", va="bottom", fontsize=8)
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 0.85)
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("CBDir")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fit_on_clock(a, clock, seed: int):
    """velode fitted again on ``a`` with ``clock`` (cells,) given and kept: its velocities, latent time, velocity genes."""
    b = a.copy()
    b.obs["given_clock"] = np.asarray(clock, float)
    velode.tl.fit(b, seed=seed, time_key="given_clock", model={"freeze_clock": True}, trainer={"progress": False})
    return np.asarray(b.layers["velocity"]), np.asarray(b.obs["latent_time"], float), b.var["velocity_genes"]


PLOTTED = ["model", "local slope (velode clock)", "local slope (known stage order x 1 + velode clock)",
           "velode fitted on the known stage order x 1 + velode clock, clock kept",
           "local slope (the clock velode kept, x 1)"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pancreas", required=True, help="path of the pancreas .h5ad (raw spliced/unspliced counts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bandwidths", type=float, nargs="*", default=[0.01, 0.05])
    p.add_argument("--stage-weights", type=float, nargs="*", default=[1.0, 0.1],
                   help="clocks of the known stage order (times this) plus velode's latent time")
    p.add_argument("--out", default=None, help="folder for clock_ceiling.json and clock_ceiling.png (default: print only)")
    args = p.parse_args(argv)

    a = preprocess_pancreas(args.pancreas, use_scvelo=True)
    velode.tl.fit(a, seed=args.seed, trainer={"progress": False})
    t = np.asarray(a.obs["latent_time"], float)
    ms = np.asarray(a.layers["Ms"], float)
    clusters = np.asarray(a.obs["clusters"])
    ductal = np.flatnonzero(clusters == "Ductal")
    dpt = diffusion_pseudotime(a, ductal[np.argmin(t[ductal])])

    # The raw counts of the same cells and genes, and the factors normalisation divided them by.
    raw = velode.read(args.pancreas)[a.obs_names, a.var_names]
    size_s = size_factors(raw.layers["spliced"], a.layers["spliced"])
    size_u = size_factors(raw.layers["unspliced"], a.layers["unspliced"])
    grid, u_curves, s_curves = velode.tl.fitted_curves(a, n_points=400)
    genes = np.asarray(a.var["velocity_genes"], bool)
    t_count = count_clock(raw.layers["spliced"][:, genes], raw.layers["unspliced"][:, genes], size_s, size_u,
                          s_curves[genes].T, u_curves[genes].T, grid)
    vpt = velocity_pseudotime(a, a.layers["velocity"], genes)
    clocks = {"velode": t, "diffusion pseudotime": dpt, "raw-count clock": t_count, "velocity pseudotime": vpt}

    rows = {"model": score(a, np.asarray(a.layers["velocity"]))}
    rows["local slope (velode clock)"] = score(a, local_slope(ms, t, a.obsp["connectivities"]))
    rows["local slope (diffusion pseudotime)"] = score(a, local_slope(ms, dpt, a.obsp["connectivities"]))
    rows["local slope (raw-count clock)"] = score(a, local_slope(ms, t_count, a.obsp["connectivities"]))
    rows["local slope (velocity pseudotime)"] = score(a, local_slope(ms, vpt, a.obsp["connectivities"]))
    v_b, t_b, genes_b = fit_on_clock(a, vpt, args.seed)
    clocks["the clock velode kept, velocity pseudotime"] = t_b
    rows["velode fitted on velocity pseudotime, clock kept"] = score(a, v_b, t_b, velocity_genes=genes_b)
    for h in args.bandwidths:
        rows[f"trend, bandwidth {h:g}"] = score(a, trend_slope(ms, t, h))
    for w in args.stage_weights:  # reads the labels: a reference, not a method
        clock = stage_clock(clusters, t, w)
        rows[f"local slope (known stage order x {w:g} + velode clock)"] = score(
            a, local_slope(ms, clock, a.obsp["connectivities"]))
        v_b, t_b, genes_b = fit_on_clock(a, clock, args.seed)
        clocks[f"known stage order x {w:g} + velode clock"] = clock
        clocks[f"the clock velode kept, x {w:g}"] = t_b
        rows[f"velode fitted on the known stage order x {w:g} + velode clock, clock kept"] = score(
            a, v_b, t_b, velocity_genes=genes_b)
        rows[f"local slope (the clock velode kept, x {w:g})"] = score(a, local_slope(ms, t_b, a.obsp["connectivities"]))

    keys = ["CBDir"] + [k for k in rows["model"] if k.startswith("CBDir ")] + ["ICCoh"]
    print("| velocity | " + " | ".join(k.replace("CBDir ", "") for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    later = {name: later_share(a, c) for name, c in clocks.items()}
    print("\n| clock | Ductal cells' Ngn3 low EP neighbours later on it |\n|---|---|")
    for name, share in later.items():
        print(f"| {name} | {share:.3f} |")
    if args.out:
        import json

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "clock_ceiling.json").write_text(json.dumps({"seed": args.seed, "rows": rows, "later share": later}, indent=1, default=float))
        plot_rows(rows, out / "clock_ceiling.png", PLOTTED)
    return rows


if __name__ == "__main__":
    main()
