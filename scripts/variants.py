"""Settings of velode scored on the pancreas harness, seed by seed: CBDir per transition, ICCoh, stage order.

Fits ``velode.tl.fit(adata, seed=s, **settings)`` on the benchmark's preprocessed data (scVelo's recipe,
its kNN graph and UMAP: ``benchmark.preprocess_pancreas``) and scores each fit with the benchmark's
``score_velocity``, on the fit's own velocity genes. It also reports, for the Ductal -> Ngn3 low EP
boundary, the share of a Ductal cell's Ngn3 low EP neighbours (in the kNN graph) that come later on
the fit's clock, and each early stage's median latent time. Usage::

    python scripts/variants.py --pancreas ../shared/data/pancreas.h5ad --seeds 0 1 2 \\
        --settings '{"model": {"n_components": 15}}'

``--harness FILE`` reads (or, if missing, writes) the preprocessed data, so several settings share one
preprocessing. ``--clock-from-velocity``: each seed is first fitted with the defaults, and the fit scored is
a second one, with ``settings``, started from scVelo's velocity pseudotime of the first fit's velocities
(``time_key``; add ``{"model": {"freeze_clock": true}}`` to keep that clock). One JSON line per fit is printed.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import velode  # noqa: E402
from benchmark import preprocess_pancreas, score_velocity  # noqa: E402

EARLY = ("Ductal", "Ngn3 low EP", "Ngn3 high EP")


def later_share(adata, t, source: str = "Ductal", target: str = "Ngn3 low EP", cluster_key: str = "clusters") -> float:
    """Over the cells of ``source``, the share of their kNN neighbours in ``target`` with a later time ``t``.

    The neighbours are those CBDir reads (``velode.metrics``: ``obsp["distances"]``, else ``connectivities``).
    """
    from velode.metrics import _knn_lists

    clusters = adata.obs[cluster_key].astype(str).to_numpy()
    knn = _knn_lists(adata)
    later = []
    for i in np.flatnonzero(clusters == source):
        nb = knn[i][clusters[knn[i]] == target]
        later.extend(t[nb] > t[i])
    return float(np.mean(later)) if later else float("nan")


def harness(path: str, saved: str | None):
    import anndata as ad

    if saved and Path(saved).exists():
        return ad.read_h5ad(saved)
    base = preprocess_pancreas(path, use_scvelo=True)
    if saved:  # never half-written: a later run reads it back
        from velode import _outputs

        _outputs.atomic_write(Path(saved), lambda tmp: base.write_h5ad(tmp))
    return base


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pancreas", required=True, help="path of the pancreas .h5ad (raw spliced/unspliced counts)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--settings", default="{}", help="keyword arguments of velode.tl.fit, as JSON")
    p.add_argument("--harness", default=None, help="preprocessed data to read, or to write if it is not there")
    p.add_argument("--clock-from-velocity", action="store_true",
                   help="start each fit from the velocity pseudotime of a default fit of the same seed")
    args = p.parse_args(argv)
    settings = json.loads(args.settings)

    base = harness(args.pancreas, args.harness)
    clusters = base.obs["clusters"].astype(str).to_numpy()
    out = []
    for seed in args.seeds:
        a = base.copy()
        fit_settings = settings
        if args.clock_from_velocity:
            from clock_ceiling import velocity_pseudotime

            first = base.copy()
            velode.tl.fit(first, seed=seed, trainer={"progress": False})
            a.obs["velocity_pseudotime"] = velocity_pseudotime(base, first.layers["velocity"],
                                                               first.var["velocity_genes"])
            fit_settings = {**settings, "time_key": "velocity_pseudotime"}
        velode.tl.fit(a, seed=seed, **{"trainer": {"progress": False}, **fit_settings})
        t = a.obs["latent_time"].to_numpy(float)
        sc = score_velocity(base, a.layers["velocity"], t, velocity_genes=a.var["velocity_genes"])
        row = {
            "settings": fit_settings, "seed": seed, "CBDir": sc["CBDir"],
            **{k: v for k, v in sc.items() if k.startswith("CBDir ") and "UMAP" not in k},
            "ICCoh": sc["ICCoh"], "stage Spearman": sc["stage Spearman"],
            "Ngn3 low EP neighbours later": later_share(base, t),
            **{f"median latent time {c}": float(np.median(t[clusters == c])) for c in EARLY},
        }
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


if __name__ == "__main__":
    main()
