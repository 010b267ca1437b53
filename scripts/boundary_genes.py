"""Which genes carry, and which oppose, a velocity's direction across one boundary of the pancreas harness.

Fits velode (one seed) on the harness's preprocessed data (``benchmark.preprocess_pancreas``). For each cell
of the source cluster with kNN neighbours in the target cluster, it takes the mean displacement to those
neighbours in ``Ms`` over the fit's velocity genes, centred per cell as scVelo's velocity graph centres
its vectors. Then, for two velocities, it splits their cosine with that displacement into one term per gene
(``gene_terms``: the terms add up to the cosine):

- ``model``: velode's velocity;
- ``slope``: the data's local slope along velode's clock (``clock_ceiling.local_slope``).

It prints the mean cosine of each, the genes with the largest share of each velocity's squared norm and
their terms, the most negative and most positive terms, and, for the genes named by ``--genes``, the mean
``Ms``, ``Mu``, fitted s and velocity in bins of latent time. Usage::

    python scripts/boundary_genes.py --pancreas ../shared/data/pancreas.h5ad --seed 0 \\
        [--source Ductal --target "Ngn3 low EP"] [--genes Tmsb4x Spp1 Ttr] [--harness harness.h5ad]
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import velode  # noqa: E402
from clock_ceiling import local_slope  # noqa: E402
from variants import harness  # noqa: E402

BINS = (0.0, 0.005, 0.01, 0.02, 0.04, 0.1, 0.3, 0.6, 1.0)


def boundary_displacements(ms, clusters, knn, source: str, target: str):
    """The source cells with neighbours in ``target`` (indices) and their mean displacement to them (cells x genes)."""
    cells, disp = [], []
    for i in np.flatnonzero(clusters == source):
        nb = knn[i][clusters[knn[i]] == target]
        if len(nb):
            cells.append(i)
            disp.append(ms[nb].mean(0) - ms[i])
    return np.asarray(cells, int), np.asarray(disp).reshape(len(cells), ms.shape[1])


def gene_terms(v, d):
    """Per cell and gene, v_g d_g / (|v| |d|) of the per-cell centred vectors: each row sums to cos(v, d)."""
    vc = v - v.mean(1, keepdims=True)
    dc = d - d.mean(1, keepdims=True)
    norm = np.linalg.norm(vc, axis=1) * np.linalg.norm(dc, axis=1)
    return vc * dc / np.maximum(norm, 1e-30)[:, None]


def norm_shares(v):
    """Per cell and gene, the gene's share of the per-cell centred vector's squared norm."""
    vc = v - v.mean(1, keepdims=True)
    sq = vc**2
    return sq / np.maximum(sq.sum(1, keepdims=True), 1e-30)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pancreas", required=True, help="path of the pancreas .h5ad (raw spliced/unspliced counts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", default="Ductal")
    p.add_argument("--target", default="Ngn3 low EP")
    p.add_argument("--genes", nargs="*", default=["Tmsb4x", "Spp1", "Ttr"], help="genes to trace along latent time")
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--harness", default=None, help="preprocessed data to read, or to write if it is not there")
    args = p.parse_args(argv)

    from velode.metrics import _knn_lists

    base = harness(args.pancreas, args.harness)
    a = base.copy()
    velode.tl.fit(a, seed=args.seed, trainer={"progress": False})
    genes = np.asarray(a.var["velocity_genes"], bool)
    names = np.asarray(a.var_names)[genes]
    ms_all = np.asarray(a.layers["Ms"], float)
    t = np.asarray(a.obs["latent_time"], float)
    clusters = np.asarray(a.obs["clusters"].astype(str))
    cells, disp = boundary_displacements(ms_all[:, genes], clusters, _knn_lists(a), args.source, args.target)
    if len(cells) == 0:
        raise SystemExit(f"no {args.source} cell has a {args.target} neighbour")
    velocities = {
        "model": np.nan_to_num(np.asarray(a.layers["velocity"], float))[:, genes],
        "slope": local_slope(ms_all, t, a.obsp["connectivities"])[:, genes],
    }
    out = {"cells": int(len(cells))}
    print(f"{len(cells)} {args.source} cells with {args.target} neighbours (seed {args.seed})")
    for name, v in velocities.items():
        terms = gene_terms(v[cells], disp)
        term, share = terms.mean(0), norm_shares(v[cells]).mean(0)
        cos = float(terms.sum(1).mean())
        out[name] = {"cosine": cos, "terms": dict(zip(names, term.astype(float))),
                     "shares": dict(zip(names, share.astype(float)))}
        fmt = lambda idx: ", ".join(f"{names[k]} {term[k]:+.4f}" for k in idx)  # noqa: E731
        print(f"\n{name}: mean cosine with the displacement in gene space {cos:.3f}")
        print("  largest share of the squared norm: " + ", ".join(
            f"{names[k]} {share[k]:.3f} ({term[k]:+.4f})" for k in np.argsort(-share)[: args.top]))
        print("  most negative terms: " + fmt(np.argsort(term)[: args.top]))
        print("  most positive terms: " + fmt(np.argsort(-term)[: args.top]))
    mu_all = np.asarray(a.layers["Mu"], float)
    fit_s, velocity = np.asarray(a.layers["fit_s"], float), np.asarray(a.layers["velocity"], float)
    for gene in args.genes:
        if gene not in a.var_names:
            print(f"\n{gene}: not among the genes")
            continue
        j = list(a.var_names).index(gene)
        k = np.flatnonzero(names == gene)
        d = f"{disp[:, k[0]].mean():+.3f}" if k.size else "(not a velocity gene)"
        print(f"\n{gene}: displacement {args.source} -> {args.target} neighbours {d}; fitted switch "
              f"{float(a.var['fit_t_'].iloc[j]):.4f}")
        print("  latent time      cells      Ms       Mu    fit s   velocity")
        for lo, hi in zip(BINS[:-1], BINS[1:]):
            m = (t >= lo) & ((t < hi) if hi < 1.0 else (t <= hi))
            if m.any():
                print(f"  [{lo:.3f}, {hi:.3f}) {m.sum():6d} {ms_all[m, j].mean():8.3f} {mu_all[m, j].mean():8.3f} "
                      f"{fit_s[m, j].mean():8.3f} {velocity[m, j].mean():9.3f}")
    return out


if __name__ == "__main__":
    main()
