"""The main job: data -> preprocessing -> fit -> outputs, driven by a composed Hydra config."""

import json
import logging
import time
from pathlib import Path

import numpy as np
from anndata import AnnData
from omegaconf import DictConfig, OmegaConf

from . import _checkpoint, _outputs, datasets, metrics, pp
from ._errors import ConfigError, RunFolderError
from ._io import check_obs_key, read
from .model._stats import num_vf_evals

log = logging.getLogger("velode")

DATASETS = ("synthetic", "simulation", "pancreas", "h5ad")
# Keys read (with .get) from the data group of any dataset, beyond those of the dataset's own option file.
_OPTIONAL_DATA_KEYS = {"stage_order"}


def _option_keys(group: str) -> dict[str, set[str]]:
    """The keys of each option of a config group in velode's conf/, by the option's ``name``."""
    out = {}
    for path in sorted((Path(__file__).resolve().parent.parent / "conf" / group).glob("*.yaml")):
        node = OmegaConf.load(path)
        node = node[group] if group in node else node  # a "@package _global_" option holds its group's node
        out[str(node.get("name", path.stem))] = set(node) - {"defaults"}
    return out


def check_group_keys(cfg: DictConfig) -> None:
    """ConfigError naming a key of the data, preprocess, solver or stepsize group that no option of the
    group has (data: that the chosen dataset's option does not have), e.g. one appended with
    +data.foo=1, which would otherwise be ignored. Model, loss and trainer keys: tl._fit.check_settings."""
    for group in ("data", "preprocess", "solver", "stepsize"):
        node = cfg.get(group)
        if node is None:
            continue
        options = _option_keys(group)
        which = ""
        if group == "data":
            if node.get("name") not in options:
                continue  # load_data names the datasets
            known = options[node.name] | _OPTIONAL_DATA_KEYS
            which = f" for data={node.name}"
        else:
            known = set().union(*options.values())
        unknown = sorted(set(node) - known)
        if unknown:
            raise ConfigError(f"unknown {group} option(s) {unknown}{which}: known options are {sorted(known)}")


def load_data(cfg: DictConfig) -> AnnData:
    """The AnnData named by the ``data`` config group."""
    name = cfg.name
    if name == "synthetic":
        return datasets.synthetic(n_cells=cfg.n_cells, n_genes=cfg.n_genes, seed=cfg.seed)
    if name == "simulation":
        return datasets.simulation(
            n_cells=cfg.n_cells, n_genes=cfg.n_genes, seed=cfg.seed, noise=cfg.noise, noise_level=cfg.noise_level,
            truth_layers=cfg.get("truth_layers", True),
        )
    if name in ("pancreas", "h5ad"):
        return read(cfg.path)
    raise ConfigError(f"unknown data.name {name!r}: choose one of {list(DATASETS)}")


def _integrator_args_or_error(cfg: DictConfig) -> dict:
    """:func:`build_integrator_args`, with a config Diffrax does not accept turned into one ConfigError line."""
    from hydra.errors import InstantiationException

    try:
        return build_integrator_args(cfg)
    except (InstantiationException, TypeError, ValueError) as err:
        cause = err.__cause__ or err
        msg = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise ConfigError(
            f"cannot build the solver, step-size controller or adjoint from solver={cfg.solver.get('name', '?')}, "
            f"stepsize, adjoint settings ({msg}): check their keys with `velode --cfg job`"
        ) from None


def build_integrator_args(cfg: DictConfig) -> dict:
    """Diffrax solver, step-size controller and adjoint, instantiated from their config groups."""
    from hydra.utils import instantiate

    if cfg.solver.method is None:
        return {"solver": None, "max_steps": cfg.solver.max_steps, "n_grid": cfg.solver.n_grid}
    solver = instantiate(cfg.solver.method, _convert_="all")
    controller = instantiate(cfg.stepsize.controller, _convert_="all")
    adjoint = instantiate(cfg.adjoint, _convert_="all")
    dt0 = None
    if "n_steps" in cfg.stepsize or "dt" in cfg.stepsize:
        t_end = 1.0 + (cfg.loss.horizon if cfg.loss.consistency_weight else 0.0)
        dt0 = cfg.stepsize.get("dt") or t_end / cfg.stepsize.n_steps
    return {
        "solver": solver,
        "stepsize_controller": controller,
        "adjoint": adjoint,
        "max_steps": cfg.solver.max_steps,
        "n_grid": cfg.solver.n_grid,
        "dt0": dt0,
    }


def preprocess(adata: AnnData, cfg: DictConfig) -> AnnData:
    """``adata`` preprocessed in place as the ``preprocess`` group says, restricted to ``data.genes`` if given."""
    genes = cfg.data.get("genes")
    p = cfg.preprocess
    return pp.preprocess(
        adata, method=p.method, min_shared_counts=p.min_shared_counts, n_top_genes=p.n_top_genes, n_pcs=p.n_pcs,
        n_neighbors=p.n_neighbors, genes=genes if genes is None or isinstance(genes, str) else list(genes),
        copy=False,  # the data as read are not needed afterwards: no second copy of every layer
    )


def _cluster_key(adata: AnnData, cfg: DictConfig) -> str | None:
    """data.cluster_key, which must be a column of obs; unset: "clusters" if the data has that column."""
    key = cfg.data.get("cluster_key")
    if key is None and ("clusters" in adata.obs or cfg.data.get("root_cluster") is not None):
        key = "clusters"  # the usual name; data.root_cluster needs a column to look in
    if key is not None:
        check_obs_key(adata, key, "data.cluster_key")
    return key


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def versions() -> dict:
    """Versions of velode and of the numerical stack it ran on."""
    import diffrax
    import equinox
    import jax
    import optax

    import velode

    return {"velode": velode.__version__, "jax": jax.__version__, "diffrax": diffrax.__version__,
            "equinox": equinox.__version__, "optax": optax.__version__}


def run(cfg: DictConfig, out_dir: Path, overrides: list[str] | None = None) -> dict:
    """Run the job described by ``cfg``, writing into ``out_dir``; returns the metrics written.

    ``overrides`` (the command-line overrides of this job) are recorded in ``metrics.json``.
    """
    from . import tl
    from .tl._fit import check_settings, clock_start

    t_total = time.perf_counter()
    # Settings, then names in the data, are checked first: a wrong one fails at once, not after the preprocessing.
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    r2_min = model_cfg.pop("r2_min", 0.1)
    kinetics = model_cfg.pop("kinetics")
    settings = {"model": model_cfg, "loss": OmegaConf.to_container(cfg.loss, resolve=True),
                "trainer": OmegaConf.to_container(cfg.trainer, resolve=True)}
    check_settings(kinetics=kinetics, max_steps=cfg.solver.max_steps, n_grid=cfg.solver.n_grid,
                   other_model_options=("r2_min",), **settings)
    check_group_keys(cfg)
    integrator_args = _integrator_args_or_error(cfg)  # a solver, controller or adjoint that cannot be built fails here
    adata = load_data(cfg.data)
    log.info("data: %s, %d cells x %d genes", cfg.data.name, adata.n_obs, adata.n_vars)
    cluster_key = _cluster_key(adata, cfg)
    # checked before the work, as tl.fit would check them after it
    clock_start(adata, cfg.data.get("root_cluster"), cfg.data.get("time_key"), cluster_key or "clusters", "data.")
    t0 = time.perf_counter()
    adata = preprocess(adata, cfg)
    preprocess_seconds = time.perf_counter() - t0
    log.info("preprocessed (%s) in %.1f s: %d genes", cfg.preprocess.method, preprocess_seconds, adata.n_vars)
    result = tl.fit(
        adata,
        kinetics=kinetics,
        **integrator_args,
        **settings,
        r2_min=r2_min,
        root_cluster=cfg.data.get("root_cluster"),
        time_key=cfg.data.get("time_key"),
        cluster_key=cluster_key or "clusters",
        seed=cfg.seed,
        checkpoint_dir=out_dir,
    )
    if result.resumed_from is not None:
        log.info("went on from the checkpoint at step %d", result.resumed_from)
    info = adata.uns["velode"]
    if info["status"] == "diverged":  # the outputs below come from the last parameters with a finite loss
        log.warning("training diverged: %s", result.state.message)
    stats = dict(info["solver_stats"])
    stats["num_vf_evals"] = num_vf_evals(result.integrator.solver, stats["num_steps"])
    out = {
        "status": info["status"],
        "message": result.state.message,
        "overrides": list(overrides or []),
        "data": cfg.data.name,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "kinetics": kinetics,
        "solver": info["solver"],
        "final_loss": info["final_loss"],
        "steps": info["steps"],
        "stopped_early": result.state.stopped_early,
        "resumed_from": result.resumed_from,
        "fit_seconds": info["fit_seconds"],
        "compile_seconds": info["compile_seconds"],
        "train_seconds": result.train_seconds,
        "setup_seconds": result.setup_seconds,
        "preprocess_seconds": preprocess_seconds,
        "orientation": info["orientation"],
        "probe_losses": info["probe_losses"],
        "n_velocity_genes": info["n_velocity_genes"],
        "switches_moved": int(result.switches_moved),
        "solver_stats": stats,
        "final_terms": {k: v[-1] for k, v in result.state.history.items() if v},
    }
    log.info(
        "fitted %s kinetics (%s): %d steps%s, loss %.4g, %.1f s (compile %.1f s); time runs %s; %d velocity genes; "
        "switch search moved %d genes",
        kinetics, info["solver"], out["steps"], " (plateau)" if out["stopped_early"] else "", out["final_loss"],
        out["fit_seconds"], out["compile_seconds"], _orientation_words(info["orientation"]), out["n_velocity_genes"],
        out["switches_moved"],
    )
    truth = metrics.truth_metrics(adata)
    compared = {k: v for k, v in truth.items() if k != "fraction_velocity_genes" and isinstance(v, float)}
    if compared:
        log.info("against the truth: %s", ", ".join(f"{k} {v:.4f}" for k, v in compared.items()))
    out.update(truth)
    if cluster_key is not None:
        by = adata.obs.groupby(cluster_key, observed=True)["latent_time"].median().sort_values()
        out["latent_time_median_by_cluster"] = {str(k): float(v) for k, v in by.items()}
        order = cfg.data.get("stage_order")
        if order:
            out["stage_spearman"] = metrics.stage_spearman(adata, dict(order), cluster_key=cluster_key)
            log.info("latent time vs stage order: Spearman %.4f", out["stage_spearman"])
        log.info("median latent time: %s", ", ".join(f"{k} {v:.2f}" for k, v in out["latent_time_median_by_cluster"].items()))
    info["config"] = OmegaConf.to_yaml(cfg, resolve=True)
    out["versions"] = info["versions"] = versions()
    info["version"] = out["versions"]["velode"]

    if cfg.plots:
        _plots(adata, result, cfg, out_dir, cluster_key)
    _outputs.write_json(out_dir / "history.json", {k: [float(x) for x in v] for k, v in result.state.history.items()})
    tl.save_model(result, out_dir, adata)  # model.eqx + model.json, for `velode predict model_dir=...`
    _outputs.write_h5ad(out_dir / "velocity.h5ad", adata)
    out["total_seconds"] = time.perf_counter() - t_total
    out["peak_rss_mb"] = peak_rss_mb()
    _outputs.write_json(out_dir / "metrics.json", out)
    _checkpoint.remove(out_dir)
    return out


# What a run leaves in its folder that another run would replace (figures aside).
RUN_OUTPUTS = ("velocity.h5ad", "metrics.json", "history.json", "model.eqx", "model.json")


def check_run_folder(out_dir: Path, *, resume: bool, overwrite: bool, dir_key: str = "hydra.run.dir") -> dict | None:
    """Refuse to run into a folder that holds a run, unless asked (RunFolderError says what to pass).

    A folder holds a run if it has velocity.h5ad, a metrics.json of a run that did not fail, or a
    checkpoint. ``overwrite`` removes them first. ``resume`` goes on from the checkpoint; if the run
    had finished, its metrics are returned and there is nothing to do.
    """
    out_dir = Path(out_dir)
    _outputs.remove_temporaries(out_dir, RUN_OUTPUTS)  # a killed run's half-written files, never under their names
    if overwrite:
        for name in RUN_OUTPUTS:
            (out_dir / name).unlink(missing_ok=True)
        _checkpoint.remove(out_dir)
        return None
    metrics = None
    if (out_dir / "metrics.json").exists():
        try:
            metrics = json.loads((out_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            metrics = {}
    has_h5ad = (out_dir / "velocity.h5ad").exists()
    ran = metrics is not None and metrics.get("status") != "failed"
    if resume and has_h5ad and ran:
        return metrics
    if resume:
        return None
    if has_h5ad or ran:
        raise RunFolderError(
            f"{out_dir} already holds a finished run (velocity.h5ad, metrics.json): pass overwrite=true to replace it, "
            f"or choose a new {dir_key}"
        )
    if (out_dir / _checkpoint.NAME).exists():
        try:
            step = f" at step {json.loads((out_dir / _checkpoint.SIDECAR).read_text())['step']}"
        except (OSError, ValueError, KeyError, TypeError):
            step = ""
        raise RunFolderError(
            f"{out_dir} holds an unfinished run (checkpoint{step}): pass trainer.resume=true to continue it, "
            f"overwrite=true to start again, or choose a new {dir_key}"
        )
    return None


def _orientation_words(orientation: str) -> str:
    return {
        "forward": "along the first principal axis",
        "reversed": "against the first principal axis",
        "root": "from the root cluster",
        "given": "as data.time_key gives it",
    }.get(orientation, orientation)


def _plots(adata: AnnData, result, cfg: DictConfig, out_dir: Path, cluster_key: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from . import pl, tl

    _outputs.save_figure(out_dir / "loss_curve.png", pl.loss_curve(result.state.history))
    r2 = adata.var["fit_r2"].to_numpy()
    best = [int(i) for i in np.argsort(-np.nan_to_num(r2, nan=-np.inf))[: cfg.n_phase_portraits]]
    t, u, s = tl.fitted_curves(adata)
    color = cluster_key or "latent_time"
    _outputs.save_figure(
        out_dir / "phase_portraits.png",
        pl.phase_portraits(adata, best, curve_t=t, curve_u=u, curve_s=s, color=color),
    )
    if "connectivities" in adata.obsp and adata.n_obs >= 10:
        import scanpy as sc

        if "X_umap" not in adata.obsm:
            sc.tl.umap(adata, random_state=0)
        tl.velocity_graph(adata)
        _outputs.save_figure(out_dir / "velocity_stream.png", pl.velocity_stream(adata, color=color))
