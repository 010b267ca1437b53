"""The ``velode`` command: a Hydra app around :func:`velode._run.run`."""

import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from . import _outputs
from ._errors import ConfigError, RunFolderError, VelodeError
from ._settings import compile_cache

log = logging.getLogger("velode")

# conf/ sits beside the package in the source tree (an editable install: `pip install -e .`).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

# Hydra 1.4 warns on stderr about version_base (still needed by Hydra 1.3) and about every config
# target it builds without an execution whitelist, velode's own callback included; an error must
# stay the one line on stderr. Targets of other packages still warn.
warnings.filterwarnings("ignore", message="The version_base parameter is deprecated")
warnings.filterwarnings("ignore", message=r"hydra\.utils\.instantiate\(\) resolved _target_='velode\.")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _app(cfg: DictConfig):
    from hydra.types import RunMode

    from ._run import check_run_folder, run

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    try:
        # First, so that no failure record is written over a run already in the folder.
        finished = check_run_folder(out_dir, resume=bool(cfg.trainer.get("resume", False)),
                                    overwrite=bool(cfg.get("overwrite", False)),
                                    dir_key="hydra.sweep.dir" if multirun else "hydra.run.dir")
        if finished is not None:
            log.info("%s holds a finished run (status %s): nothing to resume", out_dir, finished.get("status"))
            return finished.get("final_loss")
        _check_complete(cfg)
        use_compile_cache(cfg)
        with warnings.catch_warnings():
            warnings.showwarning = _log_warning
            metrics = run(cfg, out_dir, overrides)
    except RunFolderError as err:  # the run already in the folder stays as it is: no failure record over it
        return _fail(out_dir, f"{type(err).__name__}: {err}", str(err), multirun, overrides, record=False)
    except VelodeError as err:
        return _fail(out_dir, f"{type(err).__name__}: {err}", str(err), multirun, overrides)
    except Exception as err:  # a multirun goes on; a single run reports and exits non-zero
        if not multirun:
            raise
        log.error("job failed:\n%s", traceback.format_exc())
        return _fail(out_dir, f"{type(err).__name__}: {err}", str(err), multirun, overrides)
    log.info("wrote %s (status %s, %.1f s fit)", out_dir, metrics["status"], metrics["fit_seconds"])
    return metrics["final_loss"]


def use_compile_cache(cfg: DictConfig) -> None:
    """Turn on JAX's persistent compilation cache in the folder ``cfg.compile_cache`` (null: off)."""
    folder = cfg.get("compile_cache")
    if folder:
        try:
            compile_cache(folder)
        except OSError as err:  # an unwritable folder costs compilation time, not the run
            log.warning("compile_cache=%s cannot be used (%s): compiling without a cache", folder, err)


def _log_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings go into the run log as one line, without the source line that raised them."""
    log.warning("%s", message)


def _check_complete(cfg: DictConfig) -> None:
    """Every mandatory value given and every interpolation resolvable, before any work starts."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or "a value"
        hint = f" (e.g. {key}=/path/to/file.h5ad)" if str(key).endswith("path") else f" (e.g. {key}=...)"
        raise ConfigError(f"{key} is required but not set: give it on the command line{hint}") from None


def _fail(out_dir: Path, reason: str, message: str, multirun: bool, overrides: list[str], *, record: bool = True):
    """Called while handling the error: records it and, in a single run, exits with its one line
    (after its traceback if HYDRA_FULL_ERROR=1, as Hydra does for the errors it reports)."""
    if record:
        _outputs.write_json(out_dir / "metrics.json", {"status": "failed", "error": reason, "overrides": overrides})
    if multirun:
        log.error("job failed: %s", reason)
        return float("nan")
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exc()
    print(f"velode: error: {message}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "predict":  # `velode predict ...`: the second app (conf/predict.yaml)
        from ._predict_run import app

        del sys.argv[1]
        app()
        return
    _app()


if __name__ == "__main__":
    main()
