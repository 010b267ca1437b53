"""``velode.tl.fit``: fit the model to an AnnData and write scVelo's keys in place."""

import dataclasses
import numbers
import typing

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _matrix
from .._errors import ConfigError, InputError
from .._fit import CELL_BLOCK, KINETICS, FitResult, ModelConfig, fit_arrays
from .._io import check_obs_key
from .._train import LossConfig, TrainerConfig, check_trainer, loss_value
from ..model._kinetics import DynamicalKinetics, StandardKinetics
from ..model._solve import Integrator, evaluate


def _config(cls, value, what: str, also=()):
    """``value`` (a dict of options) as ``cls``; ``also``: other valid options of the group, named in the error."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"unknown {what} option(s) {unknown}: known options are {sorted(known | set(also))}")
    for f in dataclasses.fields(cls):
        if f.name in value and not _type_ok(value[f.name], f.type):
            raise ConfigError(
                f"{what}.{f.name} must be {_TYPE_WORDS.get(f.type, f.type)}, got {value[f.name]!r} "
                f"(the default is {f.default!r})"
            )
    return cls(**value)


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               int | None: "an integer or null"}


def _type_ok(value, typ) -> bool:
    """Whether ``value`` fits the annotation ``typ`` of a config field (ints count as numbers, bools as neither)."""
    for t in typing.get_args(typ) or (typ,):
        if t is type(None):
            if value is None:
                return True
        elif isinstance(value, (bool, np.bool_)):
            if t is bool:
                return True
        elif t is int:
            if isinstance(value, numbers.Integral):
                return True
        elif t is float:
            if isinstance(value, numbers.Real):
                return True
        elif not isinstance(t, type) or isinstance(value, t):
            return True
    return False


def check_settings(*, kinetics: str = "dynamical", model=None, loss=None, trainer=None, max_steps=4096,
                   n_grid=129, other_model_options=()) -> tuple[ModelConfig, LossConfig, TrainerConfig]:
    """The settings of :func:`fit`, checked before any data is touched (ConfigError names the first wrong one).

    ``other_model_options``: options of the command line's model group that :func:`fit` takes as its own
    arguments (e.g. ``r2_min``), listed with the known ones when an unknown option is refused.
    """
    if kinetics not in KINETICS:
        raise ConfigError(f"unknown kinetics {kinetics!r}: choose one of {sorted(KINETICS)}")
    model_cfg = dataclasses.replace(_config(ModelConfig, model, "model", also=other_model_options), kinetics=kinetics)
    loss_cfg = _config(LossConfig, loss, "loss")
    trainer_cfg = _config(TrainerConfig, trainer, "trainer")
    check_trainer(trainer_cfg)
    for name, v, least in (("max_steps", max_steps, 1), ("n_grid", n_grid, 2)):
        if not (_type_ok(v, int) and v >= least):
            raise ConfigError(f"solver.{name} must be an integer >= {least}, got {v!r}")
    return model_cfg, loss_cfg, trainer_cfg


def root_cells(adata: AnnData, root_cluster: str, cluster_key: str = "clusters") -> np.ndarray:
    """Mask (cells,) of the cells of category ``root_cluster`` of ``obs[cluster_key]``; InputError if there are none."""
    check_obs_key(adata, cluster_key, "cluster_key")
    labels = adata.obs[cluster_key].astype(str).to_numpy()
    if root_cluster not in set(labels):
        found = sorted(set(labels))
        raise InputError(
            f"root_cluster {root_cluster!r} is not a category of obs[{cluster_key!r}]: choose one of "
            f"{found[:10]}{' ...' if len(found) > 10 else ''}"
        )
    return labels == root_cluster


def start_times(adata: AnnData, time_key: str) -> np.ndarray:
    """``obs[time_key]`` as a starting clock (cells,); InputError unless it is numeric, finite and not constant."""
    check_obs_key(adata, time_key, "time_key")
    col = adata.obs[time_key]
    if not (pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)):
        raise InputError(f"obs[{time_key!r}] holds {col.dtype} values: time_key needs a numeric column (a pseudotime, "
                         "or the time points of the experiment)")
    t = col.to_numpy(np.float64)
    bad = int(np.sum(~np.isfinite(t)))
    if bad:
        raise InputError(f"obs[{time_key!r}] has {bad} NaN or infinite values: give every cell a time (or subset the "
                         "cells that have one)")
    if np.ptp(t) == 0:
        raise InputError(f"obs[{time_key!r}] is {t[0]:g} for every cell: a clock needs cells at different times")
    return t


def clock_start(adata: AnnData, root_cluster: str | None, time_key: str | None, cluster_key: str = "clusters",
                prefix: str = ""):
    """What starts the clock: (the root cells' mask or None, ``obs[time_key]`` or None), each checked.

    InputError if both are given; ``prefix`` names the options in that message (``"data."`` on the command line).
    """
    if root_cluster is not None and time_key is not None:
        raise InputError(f"{prefix}root_cluster={root_cluster!r} and {prefix}time_key={time_key!r} both start the "
                         "clock: give one")
    return (None if root_cluster is None else root_cells(adata, root_cluster, cluster_key),
            None if time_key is None else start_times(adata, time_key))


def _check_layer(adata: AnnData, key: str):
    """``layers[key]`` as velode fits it: dense float32, or CSR float32 if the layer is sparse (never densified)."""
    if key not in adata.layers:
        raise InputError(
            f"no layers[{key!r}] to fit: run velode.pp.preprocess(adata) first "
            "(method='none' fits the spliced/unspliced layers as they are)"
        )
    layer = adata.layers[key]
    if _matrix.is_sparse(layer):
        x = _matrix.as_matrix(layer)
        values = x.data  # the stored entries; the others are zeros
    else:
        x = values = np.asarray(layer, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise InputError(
            f"layers[{key!r}] has {int((~np.isfinite(values)).sum())} NaN or infinite values: clean the data first"
        )
    if np.any(values < 0):
        raise InputError(
            f"layers[{key!r}] has {int((values < 0).sum())} negative values: velode needs non-negative counts"
        )
    return x


def fit(
    adata: AnnData,
    *,
    kinetics: str = "dynamical",
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    max_steps: int = 4096,
    dt0: float | None = None,
    n_grid: int = 129,
    model: ModelConfig | dict | None = None,
    loss: LossConfig | dict | None = None,
    trainer: TrainerConfig | dict | None = None,
    r2_min: float = 0.1,
    root_cluster: str | None = None,
    time_key: str | None = None,
    cluster_key: str = "clusters",
    spliced_key: str = "Ms",
    unspliced_key: str = "Mu",
    seed: int = 0,
    checkpoint_dir=None,
) -> FitResult:
    """Fit a shared latent time and per-gene kinetics to ``adata``; write the results in place.

    ``solver=None`` uses the exact closed form; a Diffrax solver (``diffrax.Tsit5()``...) integrates
    the kinetics numerically with ``stepsize_controller`` (default PID, rtol 1e-3, atol 1e-6),
    ``adjoint`` and ``max_steps``. ``root_cluster`` (a category of ``obs[cluster_key]``) starts the clock: the initial
    latent time is the kNN-graph distance from those cells, which training then refines; ``time_key`` (a numeric
    column of ``obs``: a pseudotime, the experiment's time points) gives the starting clock itself, its 1-99%
    quantiles mapped onto the clock's range; otherwise both directions of the first principal axis are tried
    and the better fit wins. With ``model={"freeze_clock": True}`` the starting clock is kept (as closely as
    the time encoder can follow it) and only the kinetics are fitted along it.

    Sets:
      ``layers["velocity"]`` (ds/dt, cells x genes), ``layers["velocity_u"]`` (du/dt),
      ``layers["fit_s"]``, ``layers["fit_u"]`` (fitted states), ``layers["projected_spliced"]`` (s at
      latent time + loss horizon), ``obs["latent_time"]`` (in [0, 1]),
      ``var["fit_alpha"|"fit_beta"|"fit_gamma"|"fit_scaling"|"fit_alpha0"|"fit_t_"|"fit_r2"]`` (and
      ``var["fit_t_on"]``, the onset of induction, with ``model={"onset": True}``),
      ``var["velocity_genes"]`` (fit R^2 > ``r2_min``), ``uns["velode"]`` (settings and training record).

    ``checkpoint_dir``: a checkpoint of the fit is written there every ``trainer["checkpoint_every"]``
    steps (``checkpoint.eqx``, ``checkpoint.json``); with ``trainer={"resume": True}`` the fit goes on
    from the checkpoint found there and ends as the uninterrupted fit would.

    Returns the :class:`FitResult` (model and training state), e.g. for saving the model.
    """
    model_cfg, loss_cfg, trainer_cfg = check_settings(
        kinetics=kinetics, model=model, loss=loss, trainer=trainer, max_steps=max_steps, n_grid=n_grid
    )
    if adata.n_obs < 2 or adata.n_vars < 1:
        raise InputError(f"cannot fit {adata.n_obs} cells x {adata.n_vars} genes: need at least 2 cells and 1 gene")
    obs_s = _check_layer(adata, spliced_key)
    obs_u = _check_layer(adata, unspliced_key)
    if obs_s.shape != obs_u.shape:
        raise InputError(f"layers {spliced_key!r} {obs_s.shape} and {unspliced_key!r} {obs_u.shape} differ in shape")
    root_mask, start_time = clock_start(adata, root_cluster, time_key, cluster_key)
    if solver is not None and stepsize_controller is None:
        stepsize_controller = diffrax.PIDController(rtol=1e-3, atol=1e-6)
    integrator = Integrator(
        solver=solver,
        stepsize_controller=stepsize_controller if stepsize_controller is not None else diffrax.ConstantStepSize(),
        adjoint=adjoint if adjoint is not None else diffrax.RecursiveCheckpointAdjoint(),
        max_steps=int(max_steps),
        dt0=dt0,
        n_grid=int(n_grid),
    )
    result = fit_arrays(
        obs_s, obs_u, model_cfg=model_cfg, integrator=integrator, loss_cfg=loss_cfg, trainer_cfg=trainer_cfg,
        seed=seed, root_mask=root_mask, start_time=start_time, checkpoint_dir=checkpoint_dir,
    )
    write_result(adata, result, obs_s, obs_u, r2_min=r2_min)
    return result


@eqx.filter_jit
def _kinetics_columns(kin) -> dict:
    return {"alpha": kin.alpha, "beta": kin.beta, "gamma": kin.gamma, "scale": kin.scale, "alpha0": kin.alpha0,
            "switch": kin.switch_time(), "onset": kin.onset_time()}


def write_kinetics(adata: AnnData, kin) -> None:
    """The gene-level keys of fitted kinetics: var["fit_alpha"|"fit_beta"|"fit_gamma"|"fit_scaling"|"fit_alpha0"|"fit_t_"|"fit_t_on"]."""
    f32 = lambda x: np.asarray(jax.device_get(x), dtype=np.float32)  # noqa: E731
    cols = _kinetics_columns(kin)  # one program, not one per operation
    adata.var["fit_alpha"] = f32(cols["alpha"])
    adata.var["fit_beta"] = f32(cols["beta"])
    adata.var["fit_gamma"] = f32(cols["gamma"])
    adata.var["fit_scaling"] = f32(cols["scale"])
    adata.var["fit_alpha0"] = f32(cols["alpha0"])
    t_sw = cols["switch"]
    adata.var["fit_t_"] = f32(t_sw) if t_sw is not None else np.full(adata.n_vars, np.inf, np.float32)
    t_on = cols["onset"]
    if t_on is not None:
        adata.var["fit_t_on"] = f32(t_on)
    elif "fit_t_on" in adata.var:
        del adata.var["fit_t_on"]


def write_result(adata: AnnData, result: FitResult, obs_s, obs_u, *, r2_min: float) -> None:
    """Write a fit's outputs into ``adata`` under scVelo's key names."""
    from ._predict import evaluate_cells

    # Every output in blocks of cells, into float32 arrays: JAX holds one block's temporaries at a time.
    layers, latent_time, cell_z, r2, ok = evaluate_cells(
        result.model, result.integrator, obs_s, obs_u, horizon=result.loss_cfg.horizon, project=True,
        batch_size=CELL_BLOCK,
    )
    if not ok:
        from .._train import solver_failure_message
        from .._errors import SolverError

        raise SolverError(solver_failure_message(result.integrator, "when evaluating the fitted model"))
    kin = result.model.kinetics
    np_ = lambda x: np.asarray(jax.device_get(x), dtype=np.float32)  # noqa: E731
    if not (np.all(np.isfinite(layers["velocity"])) and np.all(np.isfinite(layers["fit_s"]))):
        from .._errors import SolverError

        raise SolverError("the fitted model gives non-finite velocities: lower trainer.lr or check the input data")
    for key in ("velocity", "velocity_u", "fit_s", "fit_u"):
        adata.layers[key] = layers[key]
    # Each cell's spliced state carried forward by loss.horizon of latent time along the fitted kinetics.
    adata.layers["projected_spliced"] = layers["projected_spliced"]
    adata.obs["latent_time"] = latent_time
    write_kinetics(adata, kin)
    mod = result.model.modulator
    for key in ("velode_cell_z",):
        adata.obsm.pop(key, None)
    adata.varm.pop("velode_cell_loadings", None)
    if mod is not None:
        # Cell-specific transcription: alpha of cell c, gene g = fit_alpha_g * exp(b tanh(z_c . w_g / b))
        # (velode.tl.cell_alpha), b = uns["velode"]["cell_bound"].
        adata.obsm["velode_cell_z"] = cell_z
        adata.varm["velode_cell_loadings"] = np_(mod.loadings).T
    adata.var["fit_r2"] = r2.astype(np.float32)
    adata.var["velocity_genes"] = np.isfinite(r2) & (r2 > r2_min)
    st = result.state
    adata.uns["velode"] = {
        "kinetics": type(kin).__name__,
        "solver": "analytic" if result.integrator.solver is None else type(result.integrator.solver).__name__,
        "orientation": result.orientation,
        "switches_moved": int(result.switches_moved),  # genes the switch search moved (model.switch_search)
        "probe_losses": {k: float(v) for k, v in result.probe_losses.items()},
        "steps": int(st.step),
        "status": st.status,
        # Full-batch loss of the final parameters (the history holds minibatch losses).
        "final_loss": loss_value(result.model, result.data, result.integrator, result.loss_cfg),
        "horizon": float(result.loss_cfg.horizon),
        "fit_seconds": float(result.fit_seconds),
        "compile_seconds": float(result.compile_seconds),
        "n_velocity_genes": int(adata.var["velocity_genes"].sum()),
        "r2_min": float(r2_min),
        "history": {k: np.asarray(v, np.float32) for k, v in st.history.items()},
        "solver_stats": {k: int(v) for k, v in st.solver_stats.items()},
    }
    if mod is not None:
        adata.uns["velode"]["cell_bound"] = float(mod.bound)


def cell_alpha(adata: AnnData) -> np.ndarray:
    """Transcription rate of each cell and gene (cells x genes) of a fit.

    ``var["fit_alpha"]`` for every cell, times the cell-specific factor when the fit learned one
    (``model.cell_rank > 0``: ``obsm["velode_cell_z"]``, ``varm["velode_cell_loadings"]``).
    """
    if "fit_alpha" not in adata.var:
        raise InputError("no var['fit_alpha'] in this AnnData: run velode.tl.fit(adata) first")
    alpha = adata.var["fit_alpha"].to_numpy(np.float64)[None, :]
    if "velode_cell_z" not in adata.obsm:
        return np.broadcast_to(alpha, adata.shape).copy()
    from ..model._model import modulation

    z = np.asarray(adata.obsm["velode_cell_z"], np.float64)
    w = np.asarray(adata.varm["velode_cell_loadings"], np.float64).T
    return alpha * np.asarray(modulation(z, w, float(adata.uns["velode"]["cell_bound"])))


def fitted_curves(adata: AnnData, n_points: int = 200):
    """Trajectories of the fitted kinetics over latent time [0, 1], from the ``var["fit_*"]`` columns.

    These are the genes' own trajectories; with cell-specific transcription (``model.cell_rank > 0``)
    each cell follows its gene's trajectory with its own alpha (:func:`cell_alpha`), near these curves.

    Returns (t (points,), u (genes x points, observed unspliced units), s (genes x points)).
    """
    need = ["fit_alpha", "fit_beta", "fit_gamma", "fit_scaling", "fit_alpha0", "fit_t_"]
    missing = [k for k in need if k not in adata.var]
    if missing:
        raise InputError(f"no var{missing} in this AnnData: run velode.tl.fit(adata) first")
    v = {k: adata.var[k].to_numpy(np.float64) for k in need}
    rate_max = 1.01 * float(max(v["fit_beta"].max(), v["fit_gamma"].max())) + 1e-6
    common = dict(alpha=v["fit_alpha"], beta=v["fit_beta"], gamma=v["fit_gamma"], scale=v["fit_scaling"],
                  alpha0=v["fit_alpha0"], rate_max=rate_max)
    if np.all(np.isfinite(v["fit_t_"])):
        t_sw = v["fit_t_"]
        onset = {}
        if "fit_t_on" in adata.var:
            onset = dict(onset=adata.var["fit_t_on"].to_numpy(np.float64))
        kin = DynamicalKinetics(adata.n_vars, switch=t_sw, switch_max=1.01 * float(t_sw.max()) + 1e-6, **onset,
                                **common)
    else:
        kin = StandardKinetics(adata.n_vars, **common)
    t = np.linspace(0.0, 1.0, n_points)
    u, s, _ = evaluate(kin, jnp.asarray(t)[:, None], Integrator(), t_end=1.0)
    return t, np.asarray(u * kin.scale).T, np.asarray(s).T
