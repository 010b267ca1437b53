"""Fit veloVI or UniTVelo on the benchmark's preprocessed pancreas data, for the same-harness table.

These tools need PyTorch (veloVI, through scvi-tools) or TensorFlow (UniTVelo), which velode does not;
run this script in an environment of its own, with neither velode nor JAX needed::

    python -m venv /tmp/velovi && /tmp/velovi/bin/pip install torch scvi-tools velovi scvelo==0.3.4
    python -m venv /tmp/unitvelo && /tmp/unitvelo/bin/pip install unitvelo tf_keras scvelo==0.3.4

    python scripts/benchmark.py --save-harness harness.h5ad ...          # the preprocessed data + UMAP
    /tmp/velovi/bin/python scripts/other_tools.py velovi harness.h5ad velovi_0.h5ad --seed 0
    /tmp/unitvelo/bin/python scripts/other_tools.py unitvelo harness.h5ad unitvelo_0.h5ad --seed 0
    python scripts/benchmark.py --external veloVI=velovi_0.h5ad UniTVelo=unitvelo_0.h5ad ...

Each tool is run as its tutorial runs it, on the data as given (no preprocessing of its own beyond
what the tutorial adds on preprocessed data). The output holds the tool's velocity (``layers["velocity"]``),
its velocity genes, its cell latent time, the ``Ms`` its velocity graph should be built on (veloVI
min-max scales it) and the fit's wall time (``uns["fit_seconds"]``); the benchmark projects and
scores it on its own kNN graph and UMAP, like scVelo's and velode's.
"""

import argparse
import os
import tempfile
import time

import numpy as np


def fit_velovi(a, seed: int):
    import scvi
    import torch
    from scvi.external import VELOVI
    from velovi import preprocess_data

    torch.set_num_threads(os.cpu_count() or 1)
    scvi.settings.seed = seed
    t0 = time.perf_counter()
    a = preprocess_data(a)  # min-max scaled Ms/Mu; genes with a positive steady-state fit
    VELOVI.setup_anndata(a, spliced_layer="Ms", unspliced_layer="Mu")
    vae = VELOVI(a)
    vae.train(accelerator="cpu")
    # As in the veloVI tutorial: velocities in units of each gene's latent-time span (20 / max time).
    gene_time = vae.get_latent_time(n_samples=25)
    a.layers["velocity"] = np.asarray(vae.get_velocity(n_samples=25, velo_statistic="mean")) / np.asarray(
        20 / gene_time.max(0))
    a.obs["latent_time"] = np.median(np.asarray(gene_time), axis=1)
    a.var["velocity_genes"] = True
    secs = time.perf_counter() - t0
    return a, secs, {"epochs": int(len(vae.history["elbo_train"]))}


def fit_unitvelo(a, seed: int):
    # UniTVelo uses Keras 2's optimisers (tf.keras.optimizers.legacy): with TensorFlow >= 2.16 that is
    # the tf_keras package, which TensorFlow takes for tf.keras when this is set before its import.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    import unitvelo as utv

    tf.random.set_seed(seed)
    np.random.seed(seed)
    cfg = utv.config.Configuration()
    cfg.R2_ADJUST = True
    cfg.IROOT = None
    cfg.FIT_OPTION = "1"  # unified time across genes (its default for pancreas)
    cfg.GPU = -1
    graph = {k: a.obsp[k].copy() for k in a.obsp}
    neighbors = dict(a.uns.get("neighbors", {}))
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # it writes its logs and a copy of the data under ./res
        try:
            t0 = time.perf_counter()
            a = utv.run_model(a, "clusters", config_file=cfg, normalize=False)
            secs = time.perf_counter() - t0
        finally:
            os.chdir(cwd)
    for k, v in graph.items():  # it recomputes the neighbours when not normalising: score on the harness's graph
        a.obsp[k] = v
    a.uns["neighbors"] = neighbors
    return a, secs, {}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tool", choices=["velovi", "unitvelo"])
    p.add_argument("harness", help="the benchmark's preprocessed data (scripts/benchmark.py --save-harness)")
    p.add_argument("out", help="where to write the tool's velocities (.h5ad)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import anndata as ad

    a = ad.read_h5ad(args.harness)
    fit = {"velovi": fit_velovi, "unitvelo": fit_unitvelo}[args.tool]
    a, secs, extra = fit(a, args.seed)
    keep = ad.AnnData(
        obs=a.obs[["latent_time"]].copy(),
        var=a.var[["velocity_genes"]].astype(bool).copy(),
        layers={"velocity": np.asarray(a.layers["velocity"], np.float32),
                "Ms": np.asarray(a.layers["Ms"], np.float32)},
    )
    keep.uns["fit_seconds"] = float(secs)
    keep.uns["tool"] = args.tool
    keep.uns["seed"] = args.seed
    keep.uns.update(extra)
    tmp = args.out + ".partial"
    keep.write_h5ad(tmp)
    os.replace(tmp, args.out)
    print(f"{args.tool} seed {args.seed}: {secs:.1f} s, {int(keep.var['velocity_genes'].sum())} velocity genes -> {args.out}")


if __name__ == "__main__":
    main()
