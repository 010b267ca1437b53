"""velode and scVelo's dynamical model side by side, on the same data, kNN graph and UMAP, in one run.

    pip install -e ".[compare]"     # scVelo 0.3.4 (optional: without it only velode is measured)
    python scripts/benchmark.py [--pancreas ../shared/data/pancreas.h5ad] [--seeds 0 1 2 3 4] [--out docs/benchmark]

Pancreas: one preprocessing (scVelo's recipe: genes with >= 20 shared counts, 2,000 highly variable,
size-normalised, log1p, 30 PCs, 30 neighbours, first-order moments), one UMAP; then scVelo
(`recover_dynamics` with 2 jobs, `velocity(mode="dynamical")`, `latent_time`) and velode
(`velode.tl.fit`, one fit per seed) each on a copy. Both sets of velocities are projected on the UMAP by
the same code (scVelo's `velocity_graph` / `velocity_embedding` when installed, velode's otherwise) and
scored by the same metrics: fit wall time, CBDir per transition and mean, ICCoh, latent time vs stage
order. Switching simulation: the same for the truth metrics (time Spearman, velocity sign agreement and
cosine with the noise-free velocity, rate recovery, genes fitted).

velode's fits share a JAX compilation cache that starts empty: the first fit compiles its programs
and the later ones read them back, as the seeds of a sweep or the reruns of one command do
(`compile seconds`: the first training step, compilation included). `--no-compile-cache` compiles
every fit.

veloVI and UniTVelo need PyTorch or TensorFlow, so they are fitted apart, in their own environments,
by scripts/other_tools.py on the preprocessed data this script writes with `--save-harness`; `--external
NAME=PATH` then projects and scores their velocities on this run's graph and UMAP beside the others
(their fit seconds come from their own runs, not this one).

`--velocity-scale sd` divides every tool's velocity, gene by gene, by its sd over cells before the velocity
graph is built: a sensitivity check of how the harness weighs genes (the default, none, is the harness).

CBDir is read off a 2-D embedding, and UMAP's layout of one kNN graph changes with its random state (and,
at one random state, from one machine to another). `--umap-seeds N` projects every tool's velocities, from
one velocity graph, on the UMAPs of random_state 0 .. N-1 and adds CBDir's mean, lowest and highest over
them (the other rows stay those of random_state 0, the harness's UMAP).

Writes benchmark.md (the tables), benchmark.json (every number, and the versions of the packages the
numbers depend on) into --out and prints the tables.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import velode
from velode import metrics

STAGES = {"Ductal": 0, "Ngn3 low EP": 1, "Ngn3 high EP": 2, "Pre-endocrine": 3,
          "Alpha": 4, "Beta": 4, "Delta": 4, "Epsilon": 4}


def _have_scvelo() -> bool:
    try:
        import scvelo  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------- fits


def fit_scvelo(adata, n_jobs: int):
    """scVelo's dynamical model in place; returns the wall time of recover_dynamics + velocity."""
    import scvelo as scv

    t0 = time.perf_counter()
    scv.tl.recover_dynamics(adata, n_jobs=n_jobs, show_progress_bar=False)
    scv.tl.velocity(adata, mode="dynamical")
    seconds = time.perf_counter() - t0
    return seconds


def fit_velode(adata, seed: int, max_steps: int | None):
    trainer = {"progress": False}
    if max_steps is not None:
        trainer["max_steps"] = max_steps
    t0 = time.perf_counter()
    r = velode.tl.fit(adata, seed=seed, trainer=trainer)
    # The whole call, as scVelo's time holds recover_dynamics and velocity: velode's fit_seconds leaves out
    # writing the outputs (velocities, fitted states, R^2 per gene), which tl.fit does after the fit.
    return time.perf_counter() - t0, r.compile_seconds


#: --velocity-scale: "none" (the harness), or "sd": every tool's velocity divided, gene by gene, by its sd over the
#: cells before the projection (a sensitivity check: no gene dominates the cosines by its magnitude alone).
VELOCITY_SCALE = "none"


def scale_velocity(adata, how: str) -> None:
    """``layers["velocity"]`` divided per gene by its sd over cells (``how="sd"``), in place; genes without a
    velocity (NaN, constant) are left as they are."""
    if how == "none":
        return
    if how != "sd":
        raise ValueError(f"unknown velocity scale {how!r}: choose none or sd")
    v = np.asarray(adata.layers["velocity"], np.float64)
    sd = np.nanstd(v, axis=0)
    adata.layers["velocity"] = (v / np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)).astype(np.float32)


def project(adata, use_scvelo: bool):
    """Velocity graph and UMAP projection by one shared implementation.

    With :data:`VELOCITY_SCALE` "sd" the graph is built on the scaled velocities; ``layers["velocity"]`` is then
    put back as it was, so metrics against a ground truth see the tool's own velocities.
    """
    original = adata.layers["velocity"]
    scale_velocity(adata, VELOCITY_SCALE)
    try:
        if use_scvelo:
            import scvelo as scv

            scv.tl.velocity_graph(adata, show_progress_bar=False)
            embed = scv.tl.velocity_embedding
        else:
            velode.tl.velocity_graph(adata)
            embed = velode.tl.velocity_embedding
        for basis in ["umap"] + extra_umaps(adata):  # one velocity graph, projected on every UMAP
            embed(adata, basis=basis)
    finally:
        adata.layers["velocity"] = original


#: --umap-seeds: the harness's UMAP is obsm["X_umap"] (random_state 0); the others, of the same kNN graph,
#: are obsm["X_umap_seed{k}"] (random_state k). Every tool is projected on each and scored on each.
UMAP_PREFIX = "umap_seed"


def extra_umaps(adata) -> list[str]:
    """The bases of the extra UMAPs ("umap_seed1", ...), in seed order."""
    keys = [k[2:] for k in adata.obsm if k.startswith("X_" + UMAP_PREFIX)]
    return sorted(keys, key=lambda k: int(k[len(UMAP_PREFIX):]))


def add_umaps(adata, n: int) -> None:
    """Add the UMAPs of random_state 1 .. n - 1 of ``adata``'s kNN graph (the harness's, seed 0, stays X_umap)."""
    import scanpy as sc

    for k in range(1, n):
        adata.obsm[f"X_{UMAP_PREFIX}{k}"] = sc.tl.umap(adata, random_state=k, copy=True).obsm["X_umap"]


def scvelo_latent_time(adata):
    import scvelo as scv

    scv.tl.latent_time(adata)


# ------------------------------------------------------------------------------------- datasets


def preprocess_pancreas(path: str, use_scvelo: bool):
    a = velode.read(path)
    if a.X is None:
        a.X = a.layers["spliced"].copy()
    if use_scvelo:
        import scvelo as scv

        import scanpy as sc

        # scVelo 0.3.4's recipe: its gene filter and size normalisation, then log1p and highly
        # variable genes through scanpy, then its moments.
        scv.pp.filter_and_normalize(a, min_shared_counts=20)
        sc.pp.log1p(a)
        sc.pp.highly_variable_genes(a, n_top_genes=2000, subset=True)
        scv.pp.moments(a, n_pcs=30, n_neighbors=30)
    else:
        a = velode.pp.preprocess(a, min_shared_counts=20, n_top_genes=2000, n_pcs=30, n_neighbors=30)
    import scanpy as sc

    sc.tl.umap(a, random_state=0)
    return a


def score_velocity(adata, velocity, latent_time=None, velocity_genes=None) -> dict:
    """:func:`pancreas_scores` of another velocity (and latent time; and velocity genes, else ``adata``'s) on a
    copy of ``adata``'s data, graph and UMAPs."""
    b = adata.copy()
    b.layers["velocity"] = np.asarray(velocity)
    if latent_time is not None:
        b.obs["latent_time"] = np.asarray(latent_time)
    if velocity_genes is not None:
        b.var["velocity_genes"] = np.asarray(velocity_genes, bool)
    project(b, True)
    return pancreas_scores(b)


def pancreas_scores(a) -> dict:
    cb = metrics.cross_boundary_correctness(a, metrics.PANCREAS_TRANSITIONS)
    out = {
        "CBDir": cb.pop("mean"),
        **{f"CBDir {k}": v for k, v in cb.items()},
        # per fit; its mean over the seeds says how often a transition points backwards
        "positive edges": int(sum(v > 0 for v in cb.values())),
    }
    bases = extra_umaps(a)
    if bases:  # the same velocities on the other UMAPs (--umap-seeds): how much the embedding alone moves CBDir
        others = [metrics.cross_boundary_correctness(a, metrics.PANCREAS_TRANSITIONS, basis=b) for b in bases]
        means = [out["CBDir"]] + [o["mean"] for o in others]
        out["CBDir, mean over UMAPs"] = float(np.mean(means))
        out["CBDir, lowest UMAP"] = float(np.min(means))
        out["CBDir, highest UMAP"] = float(np.max(means))
        out["positive edges, fewest over UMAPs"] = int(min([out["positive edges"]] + [
            sum(v > 0 for k, v in o.items() if k != "mean") for o in others]))
        for b, o in zip(bases, others):  # in benchmark.json: the tools compared UMAP by UMAP
            out[f"CBDir, UMAP {b}"] = o["mean"]
    return {
        **out,
        "ICCoh": metrics.in_cluster_coherence(a)["mean"],
        "stage Spearman": metrics.stage_spearman(a, STAGES),
        "velocity genes": int(np.asarray(a.var["velocity_genes"], bool).sum()),
    }


def simulation_scores(a) -> dict:
    m = metrics.truth_metrics(a)
    return {
        "time Spearman": m.get("latent_time_spearman", float("nan")),
        "sign agreement": m.get("velocity_sign_agreement", float("nan")),
        "cosine": m.get("velocity_cosine", float("nan")),
        "alpha Spearman": m.get("alpha_spearman", float("nan")),
        "beta Spearman": m.get("beta_spearman", float("nan")),
        "gamma Spearman": m.get("gamma_spearman", float("nan")),
        "genes fitted": int(np.asarray(a.var["velocity_genes"], bool).sum()),
    }


def _scvelo_ready_simulation(a):
    """scVelo's keys on a simulation fitted as given (moments = the layers, kNN graph from velode)."""
    a = velode.pp.preprocess(a, method="none")
    return a


# ------------------------------------------------------------------------------------ reporting


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float):
        if not np.isfinite(v):
            return "nan"
        if v.is_integer() and abs(v) >= 1:
            return str(int(v))
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _summary(rows: list[dict]) -> dict:
    """Mean and spread (sd) of each metric over seeds."""
    out = {}
    for k in rows[0]:
        vals = np.asarray([r[k] for r in rows], float)
        out[k] = (float(np.nanmean(vals)), float(np.nanstd(vals)))
    return out


def table(title: str, methods: dict, keys: list[str]) -> str:
    """methods: name -> list of per-seed rows. One column per method: mean ± sd (or the value)."""
    names = list(methods)
    lines = [f"### {title}", "", "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    summaries = {n: _summary(rows) for n, rows in methods.items()}
    for k in keys:
        cells = []
        for n in names:
            if k not in summaries[n]:  # not measured for this method (e.g. compile seconds of another tool)
                cells.append("-")
                continue
            mean, sd = summaries[n][k]
            n_rows = len(methods[n])
            cells.append(_fmt(mean) if n_rows == 1 else f"{_fmt(mean)} ± {_fmt(sd)}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment() -> dict:
    """Versions of what the numbers depend on (the UMAP, hence CBDir, moves with umap-learn and scikit-learn)."""
    from importlib import metadata

    out = {}
    for pkg in ["velode", "jax", "jaxlib", "equinox", "diffrax", "optax", "numpy", "scipy", "anndata", "scanpy",
                "scvelo", "umap-learn", "pynndescent", "scikit-learn", "numba"]:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def plot_cbdir(methods: dict, path) -> Path:
    """Bar chart of CBDir per transition and mean, one bar per method (mean over seeds, sd as error bar)."""
    from matplotlib.figure import Figure

    from velode import _outputs

    edges = [f"{a} -> {b}" for a, b in metrics.PANCREAS_TRANSITIONS]
    labels = ["mean"] + [e.replace(" EP", "").replace("Pre-endocrine", "Pre-endo.") for e in edges]
    keys = ["CBDir"] + [f"CBDir {e}" for e in edges]
    names = list(methods)
    width = 0.8 / len(names)
    fig = Figure(figsize=(11, 4))
    ax = fig.add_subplot()
    x = np.arange(len(keys))
    for i, name in enumerate(names):
        vals = np.asarray([[r[k] for k in keys] for r in methods[name]], float)
        err = vals.std(0) if len(vals) > 1 else None
        ax.bar(x + (i - (len(names) - 1) / 2) * width, vals.mean(0), width, yerr=err, capsize=2, label=name)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("CBDir (cosine)")
    ax.set_title("Cross-boundary direction correctness, pancreas (same graph and UMAP)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _outputs.save_figure(path, fig)
    return Path(path)


def plot_umaps(methods: dict, path) -> Path | None:
    """CBDir of each tool on each UMAP layout (--umap-seeds): one point per fit, the mean over fits joined."""
    names = [n for n in methods if "CBDir, mean over UMAPs" in methods[n][0]]
    if not names:
        return None
    from matplotlib.figure import Figure

    from velode import _outputs

    extra = sorted((k for k in methods[names[0]][0] if k.startswith("CBDir, UMAP ")),
                   key=lambda k: int(k.rsplit(UMAP_PREFIX, 1)[1]))
    keys = ["CBDir"] + extra
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    x = np.arange(len(keys))
    for i, name in enumerate(names):
        vals = np.asarray([[r[k] for k in keys] for r in methods[name]], float)
        color = f"C{i}"
        jitter = (i - (len(names) - 1) / 2) * 0.06
        for row in vals:
            ax.plot(x + jitter, row, "o", color=color, ms=3, alpha=0.4)
        ax.plot(x + jitter, vals.mean(0), "-o", color=color, label=name)
    ax.set_xticks(x, ["0 (harness)"] + [k.rsplit(UMAP_PREFIX, 1)[1] for k in extra])
    ax.set_xlabel("UMAP random state (same kNN graph)")
    ax.set_ylabel("CBDir, mean over the 7 transitions")
    ax.set_title("CBDir on each UMAP layout, pancreas")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _outputs.save_figure(path, fig)
    return Path(path)


# ----------------------------------------------------------------------------------------- main


def check_externals(base, externals: dict) -> None:
    """Refuse, before any fit, a file that was not fitted on this run's preprocessed cells and genes."""
    import anndata as ad

    for paths in externals.values():
        for path in paths:
            e = ad.read_h5ad(path, backed="r")
            ok = list(e.obs_names) == list(base.obs_names) and set(e.var_names) <= set(base.var_names)
            e.file.close()
            if not ok:
                raise SystemExit(f"error: {path} was not fitted on this run's preprocessed cells and genes; "
                                 "fit it on the file written by --save-harness")


def external_rows(base, externals: dict, log) -> dict:
    """Score other tools' velocities (scripts/other_tools.py) on this run's data, graph and UMAP.

    ``externals``: display name -> .h5ad written by other_tools.py on the data of ``--save-harness``.
    Each tool's velocity graph is built on its own genes and its own ``Ms`` (veloVI min-max scales it).
    """
    import anndata as ad

    check_externals(base, externals)
    methods = {}
    for name, paths in externals.items():
        rows = []
        for path in paths:
            e = ad.read_h5ad(path)
            b = base[:, e.var_names].copy()
            b.layers["Ms"] = np.asarray(e.layers["Ms"])
            b.layers["velocity"] = np.asarray(e.layers["velocity"])
            b.var["velocity_genes"] = np.asarray(e.var["velocity_genes"], bool)
            b.obs["latent_time"] = np.asarray(e.obs["latent_time"], float)
            project(b, True)
            rows.append({"fit seconds": float(e.uns["fit_seconds"]), **pancreas_scores(b)})
            log(f"{name} ({path}): fitted apart in {rows[-1]['fit seconds']:.0f} s, CBDir {rows[-1]['CBDir']:.3f}")
        methods[f"{name} ({len(paths)} fit{'s' if len(paths) > 1 else ''}, run apart)"] = rows
    return methods


def run_pancreas(path, seeds, use_scvelo, n_jobs, max_steps, log, save_harness=None, externals=None, umap_seeds=1):
    base = preprocess_pancreas(path, use_scvelo)
    log(f"pancreas: {base.n_obs} cells x {base.n_vars} genes after preprocessing")
    if umap_seeds > 1:
        add_umaps(base, umap_seeds)
        log(f"{umap_seeds} UMAPs of the kNN graph (random_state 0-{umap_seeds - 1}); scores on X_umap are seed 0's")
    if save_harness:
        from velode import _outputs

        _outputs.atomic_write(Path(save_harness), lambda tmp: base.write_h5ad(tmp))
        log(f"preprocessed data and UMAP written to {save_harness}")
    if externals:
        check_externals(base, externals)
    methods, times = {}, {}
    if use_scvelo:
        a = base.copy()
        secs = fit_scvelo(a, n_jobs)
        project(a, True)
        scvelo_latent_time(a)
        row = {"fit seconds": secs, **pancreas_scores(a)}
        methods["scVelo 0.3.4 (dynamical)"] = [row]
        times["scvelo"] = secs
        log(f"scVelo: {secs:.1f} s, CBDir {row['CBDir']:.3f}")
    rows = []
    for seed in seeds:
        a = base.copy()
        secs, compile_secs = fit_velode(a, seed, max_steps)
        project(a, use_scvelo)
        row = {"fit seconds": secs, "compile seconds": compile_secs, **pancreas_scores(a)}
        rows.append(row)
        log(f"velode seed {seed}: {secs:.1f} s, CBDir {row['CBDir']:.3f}")
    methods[f"velode {velode.__version__} ({len(seeds)} seeds)"] = rows
    if use_scvelo:
        for r in rows:
            r["scVelo time / velode time"] = times["scvelo"] / r["fit seconds"]
        methods["scVelo 0.3.4 (dynamical)"][0]["scVelo time / velode time"] = 1.0
    if externals:
        methods.update(external_rows(base, externals, log))
    return methods


def run_simulation(n_cells, n_genes, seeds, use_scvelo, n_jobs, max_steps, log):
    methods = {}
    sim_seed = 0
    base = _scvelo_ready_simulation(velode.datasets.simulation(n_cells=n_cells, n_genes=n_genes, seed=sim_seed))
    if use_scvelo:
        a = base.copy()
        secs = fit_scvelo(a, n_jobs)
        project_ok = "X_umap" in a.obsm
        if not project_ok:
            import scanpy as sc

            sc.tl.umap(a, random_state=0)
        project(a, True)
        scvelo_latent_time(a)
        methods["scVelo 0.3.4 (dynamical)"] = [{"fit seconds": secs, **simulation_scores(a)}]
        log(f"simulation scVelo: {secs:.1f} s")
    rows = []
    for seed in seeds:
        a = base.copy()
        secs, compile_secs = fit_velode(a, seed, max_steps)
        rows.append({"fit seconds": secs, "compile seconds": compile_secs, **simulation_scores(a)})
        log(f"simulation velode seed {seed}: {secs:.1f} s")
    methods[f"velode {velode.__version__} ({len(seeds)} seeds)"] = rows
    return methods


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "pancreas.h5ad"
    ap.add_argument("--pancreas", default=str(default), help="pancreas .h5ad ('none' to skip)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="velode seeds")
    ap.add_argument("--sim-cells", type=int, default=1000)
    ap.add_argument("--sim-genes", type=int, default=100)
    ap.add_argument("--n-jobs", type=int, default=2, help="scVelo's recover_dynamics jobs")
    ap.add_argument("--max-steps", type=int, default=None, help="cap velode's training steps (tests)")
    ap.add_argument("--no-scvelo", action="store_true", help="measure velode alone")
    ap.add_argument("--no-compile-cache", action="store_true",
                    help="compile every velode fit (default: a fresh compilation cache, so the first fit compiles and "
                         "the others read its programs back, as the jobs of a sweep do)")
    ap.add_argument("--out", default="docs/benchmark", help="folder for benchmark.md and benchmark.json")
    ap.add_argument("--save-harness", metavar="PATH", default=None,
                    help="write the preprocessed pancreas data and its UMAP here, for scripts/other_tools.py")
    ap.add_argument("--external", metavar="NAME=PATH[,PATH...]", nargs="*", default=[],
                    help="add another tool's pancreas velocities (scripts/other_tools.py output, one file per seed)")
    ap.add_argument("--velocity-scale", choices=["none", "sd"], default="none",
                    help="sd: divide every tool's velocity per gene by its sd over cells before the projection (a "
                         "sensitivity check of the harness; none, the default, is the harness)")
    ap.add_argument("--umap-seeds", type=int, default=1, metavar="N",
                    help="also project every tool's velocities on the UMAPs of random_state 1 .. N-1 of the same kNN "
                         "graph and report CBDir's mean, lowest and highest over the N UMAPs (default 1: the harness's "
                         "UMAP only). CBDir depends on the embedding; this shows how much")
    args = ap.parse_args(argv)
    if args.umap_seeds < 1:
        ap.error(f"--umap-seeds must be >= 1, got {args.umap_seeds}")
    global VELOCITY_SCALE
    VELOCITY_SCALE = args.velocity_scale
    externals = {}
    for item in args.external:
        name, sep, paths = item.partition("=")
        if not sep or not name or not paths:
            ap.error(f"--external takes NAME=PATH[,PATH...], got {item!r}")
        missing = [p for p in paths.split(",") if not Path(p).exists()]
        if missing:
            ap.error(f"--external {name}: no such file: {missing[0]}")
        externals[name] = paths.split(",")
    use_scvelo = _have_scvelo() and not args.no_scvelo
    if not args.no_compile_cache:
        import tempfile

        velode.compile_cache(tempfile.mkdtemp(prefix="velode-benchmark-cache-"))  # empty: the first fit compiles
    if use_scvelo:
        import scvelo as scv

        scv.settings.verbosity = 0
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    log(f"velode {velode.__version__}; scVelo {'0.3.4 ' if use_scvelo else 'not '}installed; {os.cpu_count()} CPU cores")
    t0 = time.perf_counter()
    results, parts = {}, []
    import sys

    words = sys.argv[1:] if argv is None else argv
    env = environment()
    header = ["## velode vs scVelo", "", "Command: `python scripts/benchmark.py " + " ".join(words) + "`", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in env.items() if v) + ".", ""]
    if args.pancreas != "none" and Path(args.pancreas).exists():
        pan = run_pancreas(args.pancreas, args.seeds, use_scvelo, args.n_jobs, args.max_steps, log,
                           save_harness=args.save_harness, externals=externals, umap_seeds=args.umap_seeds)
        results["pancreas"] = pan
        keys = ["fit seconds", "compile seconds", "scVelo time / velode time", "CBDir"]
        keys += [f"CBDir {a} -> {b}" for a, b in metrics.PANCREAS_TRANSITIONS]
        keys += ["positive edges", "CBDir, mean over UMAPs", "CBDir, lowest UMAP", "CBDir, highest UMAP",
                 "positive edges, fewest over UMAPs", "ICCoh", "stage Spearman", "velocity genes"]
        parts.append(table("Pancreas (3,696 cells)", pan, [k for k in keys if any(k in r[0] for r in pan.values())]))
        plot_cbdir(pan, Path(args.out) / "cbdir.png")
        parts[-1] += "\n\n![CBDir per transition](cbdir.png)"
        if plot_umaps(pan, Path(args.out) / "cbdir_umaps.png"):
            parts[-1] += "\n\n![CBDir on each UMAP layout](cbdir_umaps.png)"
    elif args.pancreas != "none":
        log(f"skipping pancreas: {args.pancreas} not found")
    sim = run_simulation(args.sim_cells, args.sim_genes, args.seeds, use_scvelo, args.n_jobs, args.max_steps, log)
    results["simulation"] = sim
    keys = ["fit seconds", "compile seconds", "time Spearman", "sign agreement", "cosine", "alpha Spearman", "beta Spearman",
            "gamma Spearman", "genes fitted"]
    parts.append(table(f"Switching simulation ({args.sim_cells} cells x {args.sim_genes} genes, truth known)", sim, keys))
    text = "\n".join(header) + "\n\n".join(parts) + f"\n\nTotal benchmark time {time.perf_counter() - t0:.0f} s.\n"
    out = Path(args.out)
    from velode import _outputs

    _outputs.atomic_write(out / "benchmark.md", lambda tmp: Path(tmp).write_text(text))
    _outputs.write_json(out / "benchmark.json", {**results, "environment": env})
    print(text)
    return results


if __name__ == "__main__":
    main()
