"""Every option of every config group composes, and what it names can be built."""

from pathlib import Path

import diffrax
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from velode import _cli, _run
from velode._fit import ModelConfig
from velode._train import OPTIMIZERS, LossConfig, TrainerConfig
from velode.tl._fit import _config

CONF = Path(_cli.CONFIG_DIR)
GROUPS = ["data", "preprocess", "model", "solver", "stepsize", "adjoint", "loss", "trainer", "experiment", "sweep"]
NEEDS_PATH = ["data.path=/nonexistent/file.h5ad"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(autouse=True)
def hydra_context():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def _compose(*overrides, hydra=False):
    cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)
    if "path" in cfg.data.keys() and OmegaConf.is_missing(cfg.data, "path"):
        cfg = compose(config_name="config", overrides=[*overrides, *NEEDS_PATH], return_hydra_config=hydra)
    return cfg


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group} is empty"
    assert set(options("solver")) >= {"analytic", "euler", "heun", "midpoint", "bosh3", "tsit5", "dopri5", "dopri8",
                                      "kvaerno5"}
    assert set(options("adjoint")) == {"recursive_checkpoint", "backsolve", "direct"}
    assert set(options("stepsize")) == {"pid", "constant"}
    assert set(options("data")) == {"synthetic", "simulation", "pancreas", "h5ad"}


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS if g != "sweep" for o in options(g)])
def test_option_composes_and_instantiates(group, option):
    cfg = _compose(f"{group}={option}")
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # nothing left unset or unresolvable
    args = _run.build_integrator_args(cfg)  # Diffrax objects from their _target_ entries
    if cfg.solver.method is None:
        assert args["solver"] is None
    else:
        assert isinstance(args["solver"], diffrax.AbstractSolver)
        assert isinstance(args["stepsize_controller"], diffrax.AbstractStepSizeController)
        assert isinstance(args["adjoint"], diffrax.AbstractAdjoint)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("r2_min")
    _config(ModelConfig, model, "model")
    _config(LossConfig, OmegaConf.to_container(cfg.loss, resolve=True), "loss")
    trainer = _config(TrainerConfig, OmegaConf.to_container(cfg.trainer, resolve=True), "trainer")
    assert trainer.optimizer in OPTIMIZERS
    if cfg.data.name in ("synthetic", "simulation"):
        small = OmegaConf.merge(cfg.data, {"n_cells": 20, "n_genes": 4})
        a = _run.load_data(small)
        assert a.shape == (20, 4) and "spliced" in a.layers and "unspliced" in a.layers


@pytest.mark.parametrize("solver", [o for o in options("solver") if o != "analytic"])
@pytest.mark.parametrize("stepsize", options("stepsize"))
@pytest.mark.parametrize("adjoint", options("adjoint"))
def test_solver_stepsize_adjoint_combinations_build(solver, stepsize, adjoint):
    cfg = _compose(f"solver={solver}", f"stepsize={stepsize}", f"adjoint={adjoint}")
    args = _run.build_integrator_args(cfg)
    assert type(args["solver"]).__name__.lower() == solver
    if stepsize == "constant":
        assert isinstance(args["stepsize_controller"], diffrax.ConstantStepSize) and args["dt0"] > 0
    else:
        assert args["stepsize_controller"].rtol == cfg.stepsize.rtol


@pytest.mark.parametrize("sweep", options("sweep"))
def test_sweep_presets_name_real_options(sweep):
    cfg = _compose(f"sweep={sweep}", hydra=True)
    params = cfg.hydra.sweeper.params
    assert params, f"sweep={sweep} sweeps nothing"
    for key, values in params.items():
        for value in str(values).split(","):
            if key in GROUPS:
                assert value in options(key), f"sweep={sweep}: {key}={value} is not an option"
            else:
                # a value override: the key exists once the groups chosen by this preset are applied
                groups = [f"{k}={v}" for k, v in params.items() if k in GROUPS and "," not in str(v)]
                composed = _compose(*groups, f"{key}={value}")
                assert OmegaConf.select(composed, key) is not None or value == "null", (sweep, key)


@pytest.mark.parametrize("launcher, target", [
    ("local", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
])
def test_launcher_presets_compose(launcher, target):
    cfg = _compose(f"hydra/launcher={launcher}", hydra=True)
    assert cfg.hydra.launcher._target_ == target
    get_class(target)  # the plugin is installed and the class imports
    if launcher == "slurm":
        assert cfg.hydra.launcher.mem_gb > 0 and cfg.hydra.launcher.timeout_min > 0


def test_unknown_value_in_an_instantiated_group_is_a_config_error():
    cfg = _compose("trainer.optimizer=adamm")
    with pytest.raises(Exception, match="adamm"):
        import jax

        from velode._train import make_optimizer
        from velode.model._encoder import TimeEncoder

        make_optimizer(TimeEncoder(3, width=4, depth=1, key=jax.random.PRNGKey(0)),
                       _config(TrainerConfig, OmegaConf.to_container(cfg.trainer), "trainer"))


def test_instantiate_solver_targets_directly():
    for option in options("solver"):
        cfg = _compose(f"solver={option}")
        if cfg.solver.method is not None:
            solver = instantiate(cfg.solver.method)
            assert type(solver).__name__.lower() == cfg.solver.name
