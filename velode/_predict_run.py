"""The ``velode predict`` command: a fitted model (a run folder of ``velode``) applied to new cells.

A second Hydra app (primary config ``conf/predict.yaml``, with the main job's data and preprocess
groups), started by :func:`velode._cli.main` when the first argument is ``predict``.
"""

import logging
import time
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from . import _outputs
from ._cli import CONFIG_DIR, _check_complete, _fail, _log_warning, use_compile_cache
from ._errors import ConfigError, RunFolderError, VelodeError

log = logging.getLogger("velode")


def run_predict(cfg: DictConfig, out_dir: Path, overrides: list[str] | None = None) -> dict:
    """Load the model of ``cfg.model_dir``, preprocess the data of ``cfg.data``, predict, write into ``out_dir``."""
    from . import metrics, tl
    from ._run import load_data, peak_rss_mb, preprocess, versions
    from .tl._predict import MODEL_FILE

    t_total = time.perf_counter()
    model_dir = Path(cfg.model_dir).expanduser()
    # The model first: a wrong folder fails at once, not after the preprocessing.
    if not (model_dir / MODEL_FILE).is_file():
        raise ConfigError(f"model_dir={model_dir} holds no {MODEL_FILE}: give the run folder of a finished velode run")
    batch_size = cfg.batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    fitted = tl.load_model(model_dir)
    log.info("model: %s, %d genes (%s kinetics, solver %s)", model_dir, fitted.n_genes,
             fitted.meta["kinetics"]["name"], fitted.meta.get("solver", {}).get("name"))
    adata = load_data(cfg.data)
    n_input = adata.n_vars
    log.info("data: %s, %d cells x %d genes", cfg.data.name, adata.n_obs, n_input)
    t0 = time.perf_counter()
    adata = preprocess(adata, cfg)
    preprocess_seconds = time.perf_counter() - t0
    log.info("preprocessed (%s) in %.1f s: %d genes", cfg.preprocess.method, preprocess_seconds, adata.n_vars)
    t0 = time.perf_counter()
    result = tl.predict(adata, fitted, batch_size=batch_size, spliced_key=fitted.spliced_key,
                        unspliced_key=fitted.unspliced_key)
    predict_seconds = time.perf_counter() - t0
    info = result.uns["velode"]
    log.info("predicted %d cells x %d genes in %.1f s (%d genes of the data dropped)", result.n_obs, result.n_vars,
             predict_seconds, info["n_dropped_genes"])
    out = {
        "status": "ok",
        "overrides": list(overrides or []),
        "model_dir": str(model_dir.resolve()),
        "model_version": fitted.meta.get("velode_version"),
        "data": cfg.data.name,
        "n_cells": result.n_obs,
        "n_genes": result.n_vars,
        "n_dropped_genes": info["n_dropped_genes"],
        "n_velocity_genes": info["n_velocity_genes"],
        "kinetics": fitted.meta["kinetics"]["name"],
        "solver": info["solver"],
        "batch_size": info["batch_size"],
        "preprocess_seconds": preprocess_seconds,
        "predict_seconds": predict_seconds,
    }
    truth = metrics.truth_metrics(result)
    compared = {k: v for k, v in truth.items() if k != "fraction_velocity_genes" and isinstance(v, float)}
    if compared:
        log.info("against the truth: %s", ", ".join(f"{k} {v:.4f}" for k, v in compared.items()))
    out.update(truth)
    info["config"] = OmegaConf.to_yaml(cfg, resolve=True)
    out["versions"] = info["versions"] = versions()
    info["version"] = out["versions"]["velode"]
    _outputs.write_h5ad(out_dir / "velocity.h5ad", result)
    out["seconds"] = time.perf_counter() - t_total
    out["peak_rss_mb"] = peak_rss_mb()
    _outputs.write_json(out_dir / "metrics.json", out)
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def app(cfg: DictConfig):
    from hydra.types import RunMode

    from ._run import check_run_folder

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    try:
        # First, so that no failure record is written over predictions (or the model) already in the folder.
        if not OmegaConf.is_missing(cfg, "model_dir") and _same_dir(cfg.model_dir, out_dir):
            raise RunFolderError(f"the predictions would be written into model_dir={cfg.model_dir}, over its run: "
                                 "choose another hydra.run.dir")
        check_run_folder(out_dir, resume=False, overwrite=bool(cfg.get("overwrite", False)),
                         dir_key="hydra.sweep.dir" if multirun else "hydra.run.dir")
        _check_complete(cfg)
        use_compile_cache(cfg)
        with warnings.catch_warnings():
            warnings.showwarning = _log_warning
            metrics = run_predict(cfg, out_dir, overrides)
    except RunFolderError as err:
        return _fail(out_dir, f"{type(err).__name__}: {err}", str(err), multirun, overrides, record=False)
    except VelodeError as err:
        return _fail(out_dir, f"{type(err).__name__}: {err}", str(err), multirun, overrides)
    log.info("wrote %s (%d cells, %.1f s)", out_dir, metrics["n_cells"], metrics["seconds"])
    return None


def _same_dir(a, b) -> bool:
    try:
        return Path(str(a)).expanduser().resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return False
