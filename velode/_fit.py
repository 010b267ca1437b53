"""Fitting the model to a cells x genes pair of (spliced, unspliced) matrices.

1. Project each cell's standardised [s, u] onto its principal axes (the encoder's input).
2. Start the clock along the first principal axis and pretrain the encoder to reproduce it.
3. The direction of time is decided before anything else: if root cells are given, the starting
   clock is the distance from them along the kNN graph of the cells; otherwise both directions of
   the first principal axis are fitted for a short probe and the lower loss wins.
4. Train encoder and kinetics together through the ODE until max_steps or a plateau.
"""

import dataclasses
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._checkpoint import PHASES, Checkpointer, fingerprint, position
from . import _matrix
from ._errors import ConfigError
from ._switch import search_switches
from ._train import LossConfig, Trainer, TrainerConfig, TrainData, TrainState, host_rng, loss_value
from .model._encoder import TimeEncoder, fit_feature_map, project_cells
from .model._kinetics import DynamicalKinetics, StandardKinetics
from .model._model import CellModulator, VelocityModel
from .model._solve import Integrator, evaluate

KINETICS = {"standard": StandardKinetics, "dynamical": DynamicalKinetics}


@dataclasses.dataclass
class ModelConfig:
    kinetics: str = "dynamical"
    n_components: int = 30
    encoder_width: int = 64
    encoder_depth: int = 2
    rate_max: float = 50.0
    init_rate: float = 5.0
    pretrain_steps: int = 300
    probe_steps: int = 100
    # Rounds of "place every cell at its best time on a grid, teach the encoder those times, train on":
    # a global move per cell that gradient steps alone cannot make (it unfolds a clock that folded).
    assign_rounds: int = 3
    assign_grid: int = 200
    # > 0: cells placed beyond an empty stretch of at least this length of the clock (above the median cell)
    # are placed again on a grid that ends where the stretch starts. After repression a gene returns towards
    # its starting state, so the earliest cells can fit an unused late end of the clock as well as its start.
    assign_gap: float = 0.1
    onset: bool = False  # dynamical kinetics: learn a per-gene onset of induction (rest at alpha0 before it)
    cell_rank: int = 4  # > 0: cell-specific transcription alpha_cg = alpha_g exp(z_c . w_g), z of this rank
    restart_after_probe: bool = True  # fresh optimiser moments once the direction of time is chosen
    cell_bound: float = 0.5  # |z_c . w_g| is softly bounded by this (alpha varies at most e^bound-fold)
    # > 0: the cell-specific transcription is learned after the clock, in this fraction of trainer.max_steps,
    # with the clock frozen; 0: learned with the clock from the start (it then bends the clock)
    cell_phase: float = 0.1667  # 100 of the default 600 steps
    # > 0: once fitted, genes that switch before this quantile of the cells' latent times have their switch
    # searched again on the fitted clock (velode._switch), each at a few candidate times with its other
    # parameters fitted again (switch_search_steps Adam steps at switch_search_lr)
    switch_search: float = 0.1
    switch_search_steps: int = 25
    switch_search_lr: float = 0.2
    # Keep the starting clock (a given start time, obs[time_key] in tl.fit; the root cells' distances; or the
    # chosen principal axis): the encoder is taught it and not trained further, and no assignment rounds run.
    # Only the kinetics (and the cell-specific transcription) are fitted, along that clock.
    freeze_clock: bool = False


@dataclasses.dataclass
class FitResult:
    model: VelocityModel
    state: TrainState
    data: TrainData
    integrator: Integrator
    loss_cfg: LossConfig
    orientation: str  # "forward" (first principal axis), "reversed", "root" (root cells) or "given" (start_time)
    probe_losses: dict
    fit_seconds: float
    setup_seconds: float
    compile_seconds: float
    train_seconds: float = 0.0  # optimiser steps (probes included), compilation excluded
    resumed_from: int | None = None  # the step of the checkpoint this fit went on from
    switches_moved: int = 0  # genes whose switch time the final search moved (model.switch_search)


def _scaled_time(x):
    lo, hi = np.quantile(x, [0.01, 0.99])
    return np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * 0.9 + 0.05


def graph_distance(features, sources, n_neighbors: int = 15):
    """Shortest-path distance of every cell from the nearest source cell along a kNN graph."""
    from scipy.sparse.csgraph import dijkstra
    from sklearn.neighbors import NearestNeighbors

    k = int(min(n_neighbors, features.shape[0] - 1))
    graph = NearestNeighbors(n_neighbors=k).fit(features).kneighbors_graph(mode="distance")
    d = dijkstra(graph, directed=False, indices=np.flatnonzero(sources), min_only=True)
    finite = np.isfinite(d)
    return np.where(finite, d, d[finite].max() if finite.any() else 0.0)


#: Genes per block of the per-gene statistics of the data (bounded temporaries whatever the number of cells).
GENE_BLOCK = 256


def by_genes(fn, *arrays, block: int | None = None):
    """``fn`` of cells x genes arrays, applied to blocks of genes (columns) and joined along the last axis.

    For per-gene statistics: the temporaries are cells x ``block``, not cells x genes.
    ``arrays`` may be sparse: each block of genes is densified on its own.
    """
    block = GENE_BLOCK if block is None else block
    n_genes = arrays[0].shape[1]
    if n_genes <= block:
        return fn(*(_matrix.dense(a) for a in arrays))
    return np.concatenate([fn(*(_matrix.dense(a[:, j : j + block]) for a in arrays)) for j in range(0, n_genes, block)],
                          axis=-1)


def _high_quantiles(obs_s, obs_u):
    """Per gene, the 98% quantiles of unspliced and spliced (floored at 1e-3): (u_hi, s_hi)."""
    q = lambda x: np.quantile(x, 0.98, axis=0)  # noqa: E731
    return np.maximum(by_genes(q, obs_u), 1e-3), np.maximum(by_genes(q, obs_s), 1e-3)


def _init_kinetics(kind: str, t, obs_s, obs_u, cfg: ModelConfig, high=None):
    """Rates from the data at a given clock t (numpy): steady-state ratios, early states, peak times.

    ``high``: :func:`_high_quantiles` of the same data, if already computed (they do not depend on t).
    """
    n_genes = obs_s.shape[1]
    early = t <= np.quantile(t, 0.05)
    u0 = _matrix.take(obs_u, early).mean(0)
    u_hi, s_hi = _high_quantiles(obs_s, obs_u) if high is None else high
    beta = np.full(n_genes, cfg.init_rate)
    # Observed unspliced is modelled as scale * u. Unspliced counts are often far below spliced ones
    # (hormone genes: 1/100 and less); with scale 1, u and s could only be reconciled by gamma << beta,
    # a gene that never degrades its spliced mRNA and so never turns down. u starts on the scale of s
    # instead (their 98% quantiles equal; scVelo starts its scaling at the ratio of their spreads), so the
    # rates start comparable.
    scale = np.clip(u_hi / s_hi, 1e-3, 1e3)
    u_hi, u0 = u_hi / scale, u0 / scale
    gamma = np.clip(beta * u_hi / s_hi, 0.05, 0.9 * cfg.rate_max)
    alpha = beta * u_hi
    alpha0 = np.maximum(beta * u0, 1e-3)
    common = dict(alpha=alpha, beta=beta, gamma=gamma, scale=scale, alpha0=alpha0, rate_max=cfg.rate_max)
    if kind == "standard":
        return build(StandardKinetics, n_genes, **common)
    def peak_time(x):  # mean time of the cells with the top 10% unspliced of each gene
        top = x >= np.quantile(x, 0.9, axis=0, keepdims=True)
        return (top * t[:, None]).sum(0) / np.maximum(top.sum(0), 1)

    peak = by_genes(peak_time, obs_u)
    return build(DynamicalKinetics, n_genes, switch=np.clip(peak, 0.1, 0.95), **common)


def _onset_init(t, obs_u, switch):
    """Onset of induction: a little before the earliest cells with high unspliced (10% quantile of their times)."""
    def first_time(x):
        top = x >= np.quantile(x, 0.9, axis=0, keepdims=True)
        return np.nan_to_num(np.nanquantile(np.where(top, t[:, None], np.nan), 0.1, axis=0), nan=0.0)

    first = by_genes(first_time, obs_u)
    return np.clip(first - 0.1, 0.02, 0.8 * np.asarray(switch))


#: Learning rates of the cell-specific phase, as factors of trainer.lr (the kinetics, which the phase only
#: refines) and of trainer.encoder_lr (the cell-specific factor; the encoder itself is frozen). The phase is
#: short (model.cell_phase, 100 of the default 600 steps), so its steps are 3x those of a 300-step phase.
CELL_LR = 0.6
CELL_MODULATION_LR = 3.0

_PRETRAIN_OPT = optax.adam(1e-2)
#: After a time assignment the encoder is taught the new times in this fraction of model.pretrain_steps (it
#: starts from the clock it had, not from scratch).
ROUND_PRETRAIN = 1 / 3


@eqx.filter_jit
def _pretrain_loop(encoder: TimeEncoder, features, target, steps):
    # ``steps`` is traced (a loop of any length is one program: the first pretraining and the shorter ones
    # after each time assignment share their compilation).
    params, static = eqx.partition(encoder, eqx.is_inexact_array)
    target = jnp.clip(target.astype(features.dtype), 0.01, 0.99)
    logit = jnp.log(target) - jnp.log1p(-target)

    def loss(p):
        z = jax.vmap(eqx.combine(p, static).mlp)(features)
        return jnp.mean((z - logit) ** 2)

    def body(_, carry):
        p, st = carry
        upd, st = _PRETRAIN_OPT.update(jax.grad(loss)(p), st, p)
        return optax.apply_updates(p, upd), st

    params, _ = jax.lax.fori_loop(0, steps, body, (params, _PRETRAIN_OPT.init(params)))
    return eqx.combine(params, static)


#: ``cls(*args, **kwargs)`` as one compiled program: building a module eagerly compiles one small program per
#: operation and shape (random initialisations, parameter transforms), seconds in a fresh process.
build = eqx.filter_jit(lambda cls, *args, **kwargs: cls(*args, **kwargs))


#: The encoder is taught a clock on at most this many cells (a fixed random subset of larger data): the clock
#: is a smooth function of 30 features, and the full-batch steps cost in proportion to the cells.
PRETRAIN_MAX_CELLS = 2048
#: Starting rates are read off at most this many cells (a fixed random subset of larger data).
INIT_MAX_CELLS = 30_000


def _subset(n: int, most: int, seed: int):
    """Sorted indices of a random subset of ``most`` of ``n`` cells, or None (every cell) if n <= most."""
    if n <= most:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, most, replace=False))


def _pretrain_encoder(encoder: TimeEncoder, features, target, steps: int) -> TimeEncoder:
    """Fit the encoder to a given clock (in logit space): a starting ordering, or times found on a grid."""
    if steps <= 0:
        return encoder
    cells = _subset(features.shape[0], PRETRAIN_MAX_CELLS, 0)
    if cells is not None:  # full-batch steps on a bounded number of cells: the cost does not grow with the data
        features, target = np.asarray(features)[cells], np.asarray(target)[cells]  # on the host: no program
    return _pretrain_loop(encoder, jnp.asarray(features), jnp.asarray(np.asarray(target, np.float32)), np.int32(steps))


@eqx.filter_jit
def _reverse(encoder: TimeEncoder) -> TimeEncoder:
    """The same encoder with time reversed: sigmoid(-z) = 1 - sigmoid(z)."""
    last = encoder.mlp.layers[-1]
    return eqx.tree_at(lambda e: (e.mlp.layers[-1].weight, e.mlp.layers[-1].bias), encoder, (-last.weight, -last.bias))


def fit_arrays(
    obs_s,
    obs_u,
    *,
    model_cfg: ModelConfig,
    integrator: Integrator,
    loss_cfg: LossConfig,
    trainer_cfg: TrainerConfig,
    seed: int = 0,
    root_mask=None,
    start_time=None,
    gene_weight=None,
    checkpoint_dir=None,
) -> FitResult:
    """Fit on cells x genes matrices (numpy arrays, or scipy sparse ones, which are densified one batch of
    cells at a time); ``root_mask`` (cells,) marks cells that come first; ``start_time`` (cells,), a starting
    clock in any units (its 1-99% quantiles are mapped onto the clock's range), takes the place of both.

    ``checkpoint_dir``: write a checkpoint there every trainer.checkpoint_every steps and, with
    trainer.resume, go on from the one found there (velode._checkpoint).
    """
    if model_cfg.kinetics not in KINETICS:
        raise ConfigError(f"unknown model kinetics {model_cfg.kinetics!r}: choose one of {sorted(KINETICS)}")
    if not 0.0 <= model_cfg.cell_phase < 1.0:
        raise ConfigError(f"model.cell_phase={model_cfg.cell_phase} must be in [0, 1): a fraction of trainer.max_steps")
    if not 0.0 <= model_cfg.switch_search < 1.0:
        raise ConfigError(f"model.switch_search={model_cfg.switch_search} must be in [0, 1): a quantile of the "
                          "cells' latent times (0: no search)")
    cell_steps = 0
    if model_cfg.cell_rank > 0 and model_cfg.cell_phase > 0:
        if integrator.analytic:
            cell_steps = int(round(model_cfg.cell_phase * trainer_cfg.max_steps))
        else:
            warnings.warn(
                "cell-specific transcription (model.cell_rank > 0) needs the closed form: skipped with a numerical "
                "solver (set model.cell_rank=0 to fit without it everywhere)",
                UserWarning, stacklevel=2,
            )
    elif model_cfg.cell_rank > 0 and not integrator.analytic:
        raise ConfigError("model.cell_rank > 0 (cell-specific transcription) needs solver=analytic")
    clock_cfg = dataclasses.replace(trainer_cfg, max_steps=trainer_cfg.max_steps - cell_steps)
    t_setup = time.perf_counter()
    # Dense float32 arrays are used in place; sparse ones stay sparse (densified one batch at a time).
    obs_s = _matrix.as_matrix(obs_s)
    obs_u = _matrix.as_matrix(obs_u)
    key = jax.random.PRNGKey(seed)
    k_enc, k_train = jax.random.split(key)
    fmap = fit_feature_map((obs_s, obs_u), model_cfg.n_components)
    features = project_cells(fmap, (obs_s, obs_u))
    t_pc = _scaled_time(np.asarray(features)[:, 0])
    sd_u, sd_s = by_genes(lambda x: x.std(0), obs_u), by_genes(lambda x: x.std(0), obs_s)
    inv = lambda sd: jnp.asarray(np.where(sd > 0, 1.0 / np.maximum(sd, 1e-12), 0.0), jnp.float32)  # noqa: E731
    gw = np.ones(obs_s.shape[1], np.float32) if gene_weight is None else np.asarray(gene_weight, np.float32)
    data = TrainData.build(features, obs_u, obs_s, inv(sd_u), inv(sd_s), gw, chunk=trainer_cfg.chunk_size)
    ckpt, resume = _checkpointer(checkpoint_dir, model_cfg, integrator, loss_cfg, trainer_cfg, seed, obs_s, obs_u, gw,
                                 root_mask, start_time)
    at = position(resume)

    def here(phase, r=0):  # the checkpoint being resumed was written in this phase
        return resume is not None and at == (PHASES.index(phase), r)

    def done(phase, r=0):  # ... or in a later one
        return at > (PHASES.index(phase), r)

    def saver(phase, r=0, **extra):
        if ckpt is None or not ckpt.every:
            return None
        return lambda st: ckpt.save(st, {"phase": phase, "round": r, **where, **extra})

    # Starting rates and onsets come from the data of (at most INIT_MAX_CELLS) cells.
    init_cells = _subset(data.n_cells, INIT_MAX_CELLS, seed)
    sub = (lambda x: x) if init_cells is None else (lambda x: x[init_cells])  # noqa: E731
    init_s, init_u = sub(obs_s), sub(obs_u)
    high = _high_quantiles(init_s, init_u)  # they do not depend on the clock: computed once

    def kinetics_at(t):  # starting rates read off the data at the clock t (cells,)
        return _init_kinetics(model_cfg.kinetics, sub(t), init_s, init_u, model_cfg, high)

    encoder = TimeEncoder(fmap.n_features, width=model_cfg.encoder_width, depth=model_cfg.encoder_depth,
                          key=host_rng(k_enc))
    encoder = _pretrain_encoder(encoder, features, jnp.asarray(t_pc, jnp.float32), model_cfg.pretrain_steps)
    candidates = {
        "forward": VelocityModel(fmap, encoder, kinetics_at(t_pc)),
        "reversed": VelocityModel(fmap, _reverse(encoder), kinetics_at(1.0 - t_pc)),
    }
    freeze = model_cfg.freeze_clock
    trainer = Trainer(candidates["forward"], integrator, loss_cfg, clock_cfg, freeze_encoder=freeze)
    setup_seconds = time.perf_counter() - t_setup
    t_fit = time.perf_counter()
    probe_losses = {}
    if start_time is not None or (root_mask is not None and np.any(root_mask)):
        if start_time is not None:  # the clock given
            t_root, orientation = _scaled_time(np.asarray(start_time, np.float64)), "given"
        else:  # the clock starts at the root cells: distance from them along the cells' kNN graph
            t_root = _scaled_time(graph_distance(np.asarray(features[: data.n_cells]), np.asarray(root_mask, bool)))
            orientation = "root"
        enc_root = _pretrain_encoder(encoder, features[: data.n_cells], t_root, model_cfg.pretrain_steps)
        model = VelocityModel(fmap, enc_root, kinetics_at(t_root))
        state = trainer.init(model, k_train)
    elif resume is not None:
        # The probe finished before the checkpoint: its outcome is read, not recomputed. The state is
        # a template of the right structure (restored below or in the phase the checkpoint belongs to).
        orientation, probe_losses = resume["orientation"], resume["probe_losses"]
        state = trainer.init(candidates[orientation], k_train)
        state.step = resume["probe_step"]
    else:
        states = {}
        for name, model in candidates.items():
            states[name] = trainer.run(
                trainer.init(model, k_train), data, until=model_cfg.probe_steps, desc=f"probe {name}"
            )
            # Compared on the full-batch loss: minibatch losses are too noisy to rank the two directions.
            lv = loss_value(states[name].model, data, integrator, loss_cfg)
            probe_losses[name] = lv if np.isfinite(lv) else float("inf")
        orientation = min(probe_losses, key=probe_losses.get)
        state = states[orientation]
    where = {"orientation": orientation, "probe_losses": probe_losses, "probe_step": state.step}
    if here("probe"):
        state = ckpt.restore(state, resume)
    elif resume is None and orientation not in ("root", "given") and (save := saver("probe")) is not None:
        save(state)  # the direction of time is settled: a resumed fit does not probe again
    compile_seconds, run_seconds = 0.0, 0.0
    # After a non-finite loss the fit stops (the phases below are skipped) with the last finite parameters.
    if state.status != "diverged" and (
        model_cfg.restart_after_probe or model_cfg.onset or (model_cfg.cell_rank > 0 and not model_cfg.cell_phase)
    ):
        # The direction of time is chosen with the plain model (onsets or cell-specific transcription
        # would let a reversed clock fit as well); then training goes on, with the richer model if
        # asked, from fresh optimiser moments (the probe's moments belong to a clock still settling)
        # and the learning-rate schedule where it was.
        model = state.model
        if model_cfg.onset and model_cfg.kinetics == "dynamical":
            t_now = np.asarray(model.encoder(features[: data.n_cells]))
            kin = model.kinetics.with_onset(_onset_init(sub(t_now), init_u, np.asarray(model.kinetics.switch_time())))
            model = eqx.tree_at(lambda m: m.kinetics, model, kin)
        if model_cfg.cell_rank > 0 and not model_cfg.cell_phase:
            mod = CellModulator(fmap.n_features, obs_s.shape[1], model_cfg.cell_rank, bound=model_cfg.cell_bound,
                                key=host_rng(k_enc, 1))
            model = VelocityModel(model.features, model.encoder, model.kinetics, mod)
        if jax.tree_util.tree_structure(model) != jax.tree_util.tree_structure(state.model):
            # New parameters (onsets, cell-specific transcription): an optimiser that knows them.
            compile_seconds, run_seconds = trainer.compile_seconds, trainer.run_seconds
            trainer = Trainer(model, integrator, loss_cfg, clock_cfg, freeze_encoder=freeze)
        new_state = trainer.init(model, state.key, schedule_step=state.step)  # the schedule goes on
        new_state.step, new_state.history = state.step, state.history
        state = new_state
    if model_cfg.assign_rounds > 0 and not freeze:
        per_round = max(1, (clock_cfg.max_steps - state.step) // (model_cfg.assign_rounds + 1))
        # the encoder's teaching after each assignment (at least one step, unless teaching is off)
        round_steps = max(1, round(model_cfg.pretrain_steps * ROUND_PRETRAIN)) if model_cfg.pretrain_steps > 0 else 0
        for r in range(model_cfg.assign_rounds):
            if done("round", r):
                continue
            until = state.step + per_round
            if here("round", r):
                state, until = ckpt.restore(state, resume), resume["until"]
            state = trainer.run(state, data, until=until, desc=f"round {r + 1}",
                                checkpoint=saver("round", r, until=until))
            if state.status == "diverged":
                break
            t_best = assign_times(state.model.kinetics, data, integrator, model_cfg.assign_grid)
            if model_cfg.assign_gap > 0:
                t_max = _gap_start(np.asarray(t_best), model_cfg.assign_gap)
                if t_max is not None:
                    t_best = assign_times(state.model.kinetics, data, integrator, model_cfg.assign_grid, t_max=t_max)
            enc = _pretrain_encoder(state.model.encoder, data.features[: data.n_cells], t_best, round_steps)
            state.model = eqx.tree_at(lambda m: m.encoder, state.model, enc)
            # New times, new loss level: plateau detection starts afresh.
            state.smoothed_loss, state.best_loss, state.since_best = float("inf"), float("inf"), 0
    if not done("main"):
        if here("main"):
            state = ckpt.restore(state, resume)
        state = trainer.run(state, data, checkpoint=saver("main"))
    if cell_steps > 0 and state.status != "diverged":
        # The clock is fitted; now each cell may transcribe a gene more or less than the gene's alpha
        # (lineage-specific genes at one latent time), with the clock frozen so it cannot bend it.
        model = state.model
        mod = CellModulator(fmap.n_features, obs_s.shape[1], model_cfg.cell_rank, bound=model_cfg.cell_bound,
                            key=host_rng(k_enc, 1))
        model = VelocityModel(model.features, model.encoder, model.kinetics, mod)
        compile_seconds += trainer.compile_seconds
        run_seconds += trainer.run_seconds
        start = resume["start"] if here("cell") else state.step
        cell_cfg = dataclasses.replace(trainer_cfg, max_steps=start + cell_steps, lr=trainer_cfg.lr * CELL_LR,
                                       encoder_lr=trainer_cfg.encoder_lr * CELL_MODULATION_LR, schedule="constant")
        trainer = Trainer(model, integrator, loss_cfg, cell_cfg, freeze_encoder=True)
        new_state = trainer.init(model, state.key)
        new_state.step, new_state.history = state.step, state.history
        if here("cell"):
            new_state = ckpt.restore(new_state, resume)
        state = trainer.run(new_state, data, desc="cell-specific", checkpoint=saver("cell", start=start))
    moved = 0
    if state.status != "diverged":
        state.model, moved = search_switches(state.model, data, integrator, loss_cfg, quantile=model_cfg.switch_search,
                                             steps=model_cfg.switch_search_steps, lr=model_cfg.switch_search_lr,
                                             seed=seed)
    fit_seconds = time.perf_counter() - t_fit + setup_seconds
    return FitResult(
        state.model, state, data, integrator, loss_cfg, orientation, probe_losses, fit_seconds, setup_seconds,
        compile_seconds + trainer.compile_seconds,
        run_seconds + trainer.run_seconds - compile_seconds - trainer.compile_seconds,
        None if resume is None else int(resume["step"]), moved,
    )


def _checkpointer(checkpoint_dir, model_cfg, integrator, loss_cfg, trainer_cfg, seed, obs_s, obs_u, gw, root_mask,
                  start_time=None):
    """The fit's Checkpointer (None without a directory) and the header of the checkpoint to resume (or None)."""
    if checkpoint_dir is None or not (trainer_cfg.checkpoint_every > 0 or trainer_cfg.resume):
        return None, None
    # What the result depends on; how often checkpoints are written or progress shown does not count.
    trainer = {k: v for k, v in dataclasses.asdict(trainer_cfg).items()
               if k not in ("progress", "log_every", "resume", "checkpoint_every")}
    key = fingerprint(dataclasses.asdict(model_cfg), dataclasses.asdict(loss_cfg), trainer, seed,
                      eqx.tree_pformat(integrator, short_arrays=False), obs_s, obs_u, gw,
                      None if root_mask is None else np.asarray(root_mask, bool),
                      *(() if start_time is None else (np.asarray(start_time, np.float64),)))
    ckpt = Checkpointer(checkpoint_dir, max(trainer_cfg.checkpoint_every, 0), key)
    if not trainer_cfg.resume:
        return ckpt, None
    resume = ckpt.header()
    if resume is None:
        warnings.warn(f"trainer.resume: no checkpoint in {checkpoint_dir}, so the fit starts from the beginning",
                      UserWarning, stacklevel=3)
    return ckpt, resume


@eqx.filter_jit
def _assign(kinetics, obs_u, obs_s, rows, inv_u, inv_s, w, integrator, n_grid: int, t_max):
    grid = jnp.linspace(0.0, 1.0, n_grid) * t_max
    u, s, _ = evaluate(kinetics, grid[:, None], integrator, t_end=1.0)
    u = u * kinetics.scale
    wu, ws = w * inv_u**2, w * inv_s**2
    # ||x - p_k||^2_w = x.wx - 2 x.w p_k + p_k.w p_k, as matrix products (cells x grid).
    cross = (obs_u[rows] * wu) @ u.T + (obs_s[rows] * ws) @ s.T
    norm = (u**2) @ wu + (s**2) @ ws
    return grid[jnp.argmin(norm[None, :] - 2 * cross, axis=1)]


def _gap_start(t, gap: float):
    """Where the first empty stretch of at least ``gap`` above the median of the times ``t`` starts, or None."""
    ts = np.sort(t)
    upper = ts[len(ts) // 2 :]
    steps = np.diff(upper)
    wide = np.flatnonzero(steps >= gap)
    return None if wide.size == 0 else float(upper[wide[0]])


#: Cells per block of a pass over every cell outside training (time assignment, outputs).
CELL_BLOCK = 2048


def assign_times(kinetics, data: TrainData, integrator: Integrator, n_grid: int, block: int | None = None,
                 t_max: float = 1.0):
    """Each cell's best time on a uniform grid of [0, t_max] given the kinetics (weighted least squares).

    Computed for blocks of ``block`` cells (the last one padded, so one compilation serves all).
    """
    n = data.n_cells
    size = min(CELL_BLOCK if block is None else block, n)
    out = []
    for lo in range(0, n, size):
        rows = np.minimum(np.arange(lo, lo + size), n - 1).astype(np.int32)
        obs_u, obs_s, rows = data.gather(rows)
        t = _assign(kinetics, obs_u, obs_s, rows, data.inv_sd_u, data.inv_sd_s, data.gene_weight, integrator, n_grid,
                    jnp.float32(t_max))
        out.append(np.asarray(t)[: min(size, n - lo)])
    return np.concatenate(out)
