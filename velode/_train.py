"""Training: Optax, one jit-compiled step, full batch or minibatches, early stopping on a plateau."""

import collections
import dataclasses
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _loss, _matrix
from ._errors import ConfigError, SolverError
from ._settings import step_compiler_options
from .model import _fused
from .model._model import VelocityModel
from .model._solve import Integrator, prepare


@dataclasses.dataclass(frozen=True)
class LossConfig:
    reconstruction_weight: float = 1.0
    consistency_weight: float = 0.0
    horizon: float = 0.05
    time_prior_weight: float = 0.0  # pull the latent times towards an even spread over [0, 1]


@dataclasses.dataclass
class TrainerConfig:
    max_steps: int = 600
    optimizer: str = "adam"  # an optax optimiser taking a learning rate (see OPTIMIZERS)
    lr: float = 0.05
    encoder_lr: float = 3e-3
    schedule: str = "constant"  # "constant" or "cosine"
    warmup_steps: int = 0
    batch_size: int | None = 512  # cells per step; None: full batch
    patience: int = 200
    min_delta: float = 1e-4
    progress: bool = True
    log_every: int = 10
    chunk_size: int = 128  # cells per chunk of the loss (cache-sized; see loss_terms)
    checkpoint_every: int = 100  # steps between checkpoints (with a checkpoint directory; 0: none)
    # Devices the cells of each step are split over (data parallel, jax.sharding); None: every device JAX sees.
    devices: int | None = None
    resume: bool = False  # go on from the checkpoint in the checkpoint directory, if there is one


@dataclasses.dataclass
class TrainData:
    """Arrays the loss needs, passed to the jitted step as arguments (never closed over).

    The cells x genes data are held once, as given. Dense float32 numpy arrays are shared with JAX
    on the CPU, not copied, and a pass over the cells reads them through ``rows``, every cell's index
    padded to a multiple of the chunk size, with ``mask`` 0 on the padding. Sparse (CSR) data stay
    sparse on the host (``sparse`` is True): each pass gathers and densifies only its own cells
    (:meth:`gather`), so no dense copy of the data is ever made.
    """

    features: jax.Array
    obs_u: jax.Array  # or a scipy CSR matrix (sparse)
    obs_s: jax.Array
    rows: jax.Array
    mask: jax.Array
    inv_sd_u: jax.Array
    inv_sd_s: jax.Array
    gene_weight: jax.Array
    n_cells: int
    chunk: int
    sparse: bool = False

    @classmethod
    def build(cls, features, obs_u, obs_s, inv_sd_u, inv_sd_s, gene_weight, chunk: int = 128):
        n = features.shape[0]
        chunk = int(max(1, min(chunk, n)))
        rows, mask = padded_rows(np.arange(n), chunk)
        f32 = lambda a: jnp.asarray(a if isinstance(a, jax.Array) else np.asarray(a, np.float32), jnp.float32)  # noqa: E731
        sparse = _matrix.is_sparse(obs_u) or _matrix.is_sparse(obs_s)
        keep = (lambda a: _matrix.as_matrix(a)) if sparse else f32  # noqa: E731
        return cls(f32(features), keep(obs_u), keep(obs_s), rows, mask, f32(inv_sd_u), f32(inv_sd_s),
                   f32(gene_weight), n, chunk, sparse)

    def arrays(self):
        """The arguments of :func:`loss_terms` after the model, for a full pass over the cells.

        Sparse data: the cells x genes entries are None; take them from :meth:`gather`.
        """
        obs_u, obs_s = (None, None) if self.sparse else (self.obs_u, self.obs_s)
        return (self.features, obs_u, obs_s, self.rows, self.mask, self.inv_sd_u, self.inv_sd_s, self.gene_weight)

    def gather(self, rows, features=False):
        """(obs_u, obs_s, rows) for a pass over the cells ``rows`` (host indices), as :func:`loss_terms` reads them.

        Dense data: the whole matrices and ``rows`` itself. Sparse data: the cells of ``rows``, densified
        (float32, ``len(rows)`` x genes), and the rows 0..len(rows)-1 into them. With ``features``, the
        features to pass with them are returned first.
        """
        rows = np.asarray(rows)
        if not self.sparse:
            out = (self.obs_u, self.obs_s, jnp.asarray(rows, jnp.int32))
            return ((self.features,) + out) if features else out
        out = (jnp.asarray(_matrix.take(self.obs_u, rows)), jnp.asarray(_matrix.take(self.obs_s, rows)),
               jnp.arange(len(rows), dtype=jnp.int32))
        return ((self.features[jnp.asarray(rows)],) + out) if features else out


def host_rng(key, *salt: int) -> np.random.Generator:
    """A NumPy generator determined by a JAX key (and ``salt``), for draws on the host.

    JAX's random functions compile a program for each kind of draw and shape (~0.1-0.3 s each in a fresh process).
    """
    return np.random.default_rng([*np.asarray(jax.random.key_data(key)).ravel().tolist(), *salt])


def padded_rows(rows, chunk: int):
    """``rows`` (cell indices) padded with index 0 to a multiple of ``chunk``, and the mask of the real ones."""
    rows = np.asarray(rows, np.int32)
    pad = (-len(rows)) % chunk
    mask = np.concatenate([np.ones(len(rows), np.float32), np.zeros(pad, np.float32)])
    return jnp.asarray(np.concatenate([rows, np.zeros(pad, np.int32)])), jnp.asarray(mask)


def loss_terms(model, features, obs_u, obs_s, rows, mask, inv_sd_u, inv_sd_s, gene_weight, integrator, loss_cfg,
               chunk, n_cells=None):
    """Weighted loss and its terms over the cells ``rows`` (weighted by ``mask``), in chunks of cells.

    ``features``, ``obs_u``, ``obs_s`` hold every cell; ``rows`` (a multiple of ``chunk`` long) picks
    the cells of this pass. The step is memory-bound: a scan over chunks of ``chunk`` cells, each
    gathered and rematerialised in the backward pass (jax.checkpoint), keeps the cells x genes
    temporaries in cache instead of writing dozens of full-size arrays, and never copies the data.

    ``n_cells``: the number of cells the terms are averaged over (default: ``sum(mask)``); a device
    holding part of a batch passes the whole batch's, so the parts' losses add up to the batch's.
    """
    project = loss_cfg.consistency_weight != 0
    h = loss_cfg.horizon
    kin = model.kinetics
    f = features[rows]
    t = model.encoder(f)
    ev = prepare(kin, integrator, t_end=1.0 + (h if project else 0.0))
    n_rows = rows.shape[0]
    n_chunks = n_rows // chunk

    mod = model.modulator
    z = None if mod is None else mod.embed(f)
    fused = integrator.analytic and not project and _fused.supported(kin)
    if fused:
        # The closed form of switching kinetics: each chunk's gradient is computed with its value (model._fused).
        genes = _fused.gene_terms(kin, mod is not None)
        onset = kin.onset_time() is not None

        def fused_body(carry, xs):
            t_c, r_c, m_c, z_c = xs
            rec = _fused.reconstruction_sum(genes, t_c, obs_u[r_c], obs_s[r_c], m_c, inv_sd_u, inv_sd_s,
                                            gene_weight, onset=onset, modulator=mod, z=z_c)
            return (carry[0] + rec, carry[1]), None

    def body(carry, xs):
        t_c, r_c, m_c, z_c = xs
        u_c, s_c = obs_u[r_c], obs_s[r_c]
        mult = None if mod is None else mod.scale(z_c)
        u, s = ev(t_c[:, None], mult)
        r = ((kin.scale * u - u_c) * inv_sd_u) ** 2 + ((s - s_c) * inv_sd_s) ** 2
        rec = jnp.sum(m_c * (r @ gene_weight))
        cons = jnp.zeros(())
        if project:
            _, s_next = ev(t_c[:, None] + h, mult)
            vel = kin.beta * u - kin.gamma * s
            cons = jnp.sum(m_c * _loss.consistency_per_cell(vel, s, s_next, h, inv_sd_s))
        return (carry[0] + rec, carry[1] + cons), None

    xs = (
        t.reshape(n_chunks, chunk),
        rows.reshape(n_chunks, chunk),
        mask.reshape(n_chunks, chunk),
        None if z is None else z.reshape(n_chunks, chunk, z.shape[1]),
    )
    (rec, cons), _ = jax.lax.scan(fused_body if fused else jax.checkpoint(body), (jnp.zeros(()), jnp.zeros(())), xs)
    n_cells = jnp.sum(mask) if n_cells is None else n_cells
    terms = {"reconstruction": 0.5 * rec / (n_cells * jnp.maximum(jnp.sum(gene_weight), 1e-8))}
    if project:
        terms["consistency"] = cons / n_cells
    if loss_cfg.time_prior_weight:
        terms["time_prior"] = _loss.time_uniformity(t, mask)
    weights = {"reconstruction": loss_cfg.reconstruction_weight, "consistency": loss_cfg.consistency_weight,
               "time_prior": loss_cfg.time_prior_weight}
    return _loss.weighted_sum(terms, weights), (terms, ev.info)


# Optax optimisers whose first argument is the learning rate (trainer.optimizer).
OPTIMIZERS = ("adam", "adamw", "adabelief", "amsgrad", "lion", "nadam", "radam", "rmsprop", "sgd", "yogi")


def check_trainer(cfg: TrainerConfig) -> None:
    """ConfigError for an optimiser, a learning-rate schedule or a number of devices velode cannot use."""
    if cfg.devices is not None and not 1 <= cfg.devices <= jax.device_count():
        raise ConfigError(
            f"trainer.devices={cfg.devices}, but JAX sees {jax.device_count()} device(s): give a number from 1 to "
            f"{jax.device_count()}, or null for all of them"
        )
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown trainer.optimizer {cfg.optimizer!r}: choose one of {list(OPTIMIZERS)}")
    if cfg.schedule not in ("cosine", "constant"):
        raise ConfigError(f"unknown trainer.schedule {cfg.schedule!r}: use 'cosine' or 'constant'")


def make_optimizer(model: VelocityModel, cfg: TrainerConfig, step_offset: int = 0, *, freeze_encoder: bool = False):
    """Optax optimiser with its learning-rate schedule; ``step_offset``: the schedule resumes at that step.

    ``freeze_encoder``: the time encoder (the clock) is not updated.
    """

    def schedule(lr):
        if cfg.schedule == "constant":
            return lr
        if cfg.schedule == "cosine":
            if cfg.warmup_steps <= 0:
                sched = optax.cosine_decay_schedule(lr, max(cfg.max_steps, 1), alpha=0.05)
            else:
                sched = optax.warmup_cosine_decay_schedule(
                    0.0, lr, cfg.warmup_steps, max(cfg.max_steps, cfg.warmup_steps + 1), lr * 0.05
                )
            return sched if not step_offset else (lambda count: sched(count + step_offset))
        raise ConfigError(f"unknown trainer.schedule {cfg.schedule!r}: use 'cosine' or 'constant'")

    check_trainer(cfg)
    opt = getattr(optax, cfg.optimizer)
    labels = jax.tree_util.tree_map(lambda _: "kinetics", eqx.filter(model, eqx.is_inexact_array))
    enc_label = "frozen" if freeze_encoder else "encoder"
    labels = eqx.tree_at(lambda m: m.encoder, labels, jax.tree_util.tree_map(lambda _: enc_label, labels.encoder))
    labels = eqx.tree_at(lambda m: m.features, labels, jax.tree_util.tree_map(lambda _: "frozen", labels.features))
    if model.modulator is not None:  # cell-specific transcription: learned at the encoder's pace
        labels = eqx.tree_at(lambda m: m.modulator, labels,
                             jax.tree_util.tree_map(lambda _: "encoder", labels.modulator))
    return optax.multi_transform(
        {
            "kinetics": opt(schedule(cfg.lr)),
            "encoder": opt(schedule(cfg.encoder_lr)),
            "frozen": optax.set_to_zero(),
        },
        labels,
    )


def _step(model, opt_state, rows, mask, data_arrays, optimizer, integrator, loss_cfg, chunk):
    """One optimiser step on the cells ``rows`` (weighted by ``mask``): the new model and optimiser state, the loss,
    its terms and the solve's info."""
    features, obs_u, obs_s, _, _, inv_sd_u, inv_sd_s, gene_weight = data_arrays
    (loss, (terms, info)), grads = eqx.filter_value_and_grad(loss_terms, has_aux=True)(
        model, features, obs_u, obs_s, rows, mask, inv_sd_u, inv_sd_s, gene_weight, integrator, loss_cfg, chunk
    )
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    model = eqx.apply_updates(model, updates)
    return model, opt_state, loss, terms, info


def device_mesh(cfg: TrainerConfig):
    """The mesh of devices the cells of a step are split over, or None for one device."""
    n = jax.device_count() if cfg.devices is None else int(cfg.devices)
    if n <= 1:
        return None
    return jax.sharding.Mesh(np.asarray(jax.devices()[:n]), ("cells",))


def _step_sharded(model, opt_state, rows, mask, data_arrays, optimizer, integrator, loss_cfg, chunk, mesh):
    """:func:`_step` with the step's cells split over the devices of ``mesh`` (data parallel).

    Every device holds the model and the data and takes its contiguous share of ``rows``; the
    shares' losses and gradients (each averaged over the whole batch) are summed across devices,
    so the update is the one-device update up to the order of floating-point sums.
    """
    from jax.sharding import PartitionSpec as P

    features, obs_u, obs_s, _, _, inv_sd_u, inv_sd_s, gene_weight = data_arrays
    params, static = eqx.partition(model, eqx.is_array)

    def share(params, rows, mask, features, obs_u, obs_s, inv_sd_u, inv_sd_s, gene_weight):
        n_cells = jax.lax.psum(jnp.sum(mask), "cells")

        def loss(p):
            return loss_terms(eqx.combine(p, static), features, obs_u, obs_s, rows, mask, inv_sd_u, inv_sd_s,
                              gene_weight, integrator, loss_cfg, chunk, n_cells)

        (value, (terms, info)), grads = jax.value_and_grad(loss, has_aux=True)(params)
        total = lambda x: jax.lax.psum(x, "cells")  # noqa: E731
        # Every device solves the same genes' ODE: its step counts are the solve's, not a share of them.
        info = type(info)(jax.lax.pmin(info.ok.astype(jnp.int32), "cells").astype(bool),
                          *(jax.lax.pmax(getattr(info, k), "cells")
                            for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")))
        return total(value), jax.tree_util.tree_map(total, terms), info, jax.tree_util.tree_map(total, grads)

    rep = P()
    loss, terms, info, grads = jax.shard_map(
        share, mesh=mesh, in_specs=(rep, P("cells"), P("cells"), rep, rep, rep, rep, rep, rep),
        out_specs=(rep, rep, rep, rep), check_vma=False,
    )(params, rows, mask, features, obs_u, obs_s, inv_sd_u, inv_sd_s, gene_weight)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    model = eqx.apply_updates(model, updates)
    return model, opt_state, loss, terms, info


class _CompiledStep:
    """The training step for one model structure, jitted over the flat list of the model's arrays.

    Equinox's filter_jit splits and rebuilds the whole model on every call, which on this small
    model costs about as much as a tenth of the step's arithmetic; here the model is split once, the
    loop carries its arrays, and the step's scalars (loss, terms, solve info) come back as one array.
    """

    def __init__(self, model, optimizer, integrator, loss_cfg, chunk, mesh):
        leaves, self.treedef = jax.tree_util.tree_flatten(model)
        self.where = [i for i, x in enumerate(leaves) if eqx.is_array(x)]
        self.static = [None if eqx.is_array(x) else x for x in leaves]
        self.term_names = None
        self.shapes = set()  # the shapes of the arguments it has been compiled for

        def step(arrays, opt_state, rows, mask, data_arrays):
            args = (self.build(arrays), opt_state, rows, mask, data_arrays, optimizer, integrator, loss_cfg, chunk)
            model, opt_state, loss, terms, info = _step(*args) if mesh is None else _step_sharded(*args, mesh)
            self.term_names = tuple(terms)
            scalars = jnp.stack([loss, *terms.values(), info.ok, info.num_steps, info.num_accepted_steps,
                                 info.num_rejected_steps]).astype(jnp.float32)
            return self.split(model), opt_state, scalars

        self.fn = jax.jit(step, compiler_options=step_compiler_options())

    @staticmethod
    def key(model):
        """What must match for a model to reuse this step: its structure and its non-array leaves."""
        leaves, treedef = jax.tree_util.tree_flatten(model)
        return treedef, tuple(None if eqx.is_array(x) else x for x in leaves)

    def split(self, model):
        leaves = jax.tree_util.tree_leaves(model)
        return [leaves[i] for i in self.where]

    def build(self, arrays):
        leaves = list(self.static)
        for i, a in zip(self.where, arrays):
            leaves[i] = a
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    @property
    def compiled(self) -> bool:
        """Whether it has been compiled (for some shapes)."""
        return bool(self.shapes)

    def read(self, out):
        """The outputs of ``fn``: (arrays, opt_state, loss, terms, info) with loss a float, terms a dict of
        floats, info a dict (waits for the step)."""
        arrays, opt_state, scalars = out
        values = np.asarray(scalars, np.float64)
        n = len(self.term_names)
        terms = dict(zip(self.term_names, (float(v) for v in values[1 : 1 + n])))
        ok, *counts = values[1 + n :]
        info = {"ok": bool(ok), **dict(zip(("num_steps", "num_accepted_steps", "num_rejected_steps"),
                                              (int(c) for c in counts)))}
        return arrays, opt_state, float(values[0]), terms, info


def solver_failure_message(integrator: Integrator, where: str) -> str:
    name = type(integrator.solver).__name__
    return (
        f"the {name} solve failed {where} (it hit solver.max_steps={integrator.max_steps} or produced a "
        "non-finite state): raise solver.max_steps, loosen stepsize.rtol/atol, or use solver=analytic"
    )


@dataclasses.dataclass
class TrainState:
    """Everything a run needs to continue: model, optimiser state, RNG key, step and history."""

    model: VelocityModel
    opt_state: object
    key: jax.Array
    step: int = 0
    history: dict = dataclasses.field(default_factory=dict)
    solver_stats: dict = dataclasses.field(
        default_factory=lambda: {"num_steps": 0, "num_accepted_steps": 0, "num_rejected_steps": 0}
    )
    status: str = "ok"  # "ok" or "diverged"
    message: str = ""
    stopped_early: bool = False
    train_seconds: float = 0.0
    smoothed_loss: float = math.inf  # plateau detection (see Trainer.run)
    best_loss: float = math.inf
    since_best: int = 0
    # The minibatch order within one run() call: set only while a run is checkpointed or resumed.
    batch_perm: jax.Array | None = None
    batch_pos: int = 0


def at_schedule_step(opt_state, step: int):
    """``opt_state`` with every learning-rate schedule's step count set to ``step`` (the rest untouched).

    Fresh optimiser moments whose schedule goes on where an earlier run left it: the same step as an
    optimiser built with that offset, without building (and compiling) another one.
    """
    is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
    return jax.tree_util.tree_map(
        lambda x: x._replace(count=jnp.full_like(x.count, step)) if is_schedule(x) else x, opt_state, is_leaf=is_schedule
    )


#: Optimisers and compiled training steps kept for later trainers of the same settings (most recent last).
_OPTIMIZERS: "collections.OrderedDict" = collections.OrderedDict()
_STEPS: "collections.OrderedDict" = collections.OrderedDict()
#: How many of each are kept: a compiled step holds its programs (a few MB) for every shape it has seen.
CACHE_SIZE = 8


def _cached(cache, key, make):
    """``cache[key]``, made with ``make()`` if missing; the least recently used entry goes past CACHE_SIZE.

    A key that cannot be hashed (settings holding a dict, e.g. Diffrax's BacksolveAdjoint) is not cached.
    """
    if CACHE_SIZE <= 0:
        return make()
    try:
        hash(key)
    except TypeError:
        return make()
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return value


def _optimizer_and_init(optimizer):
    return optimizer, eqx.filter_jit(optimizer.init)


def clear_caches() -> None:
    """Forget the optimisers and compiled steps kept for later fits (the next fit traces and compiles anew)."""
    _OPTIMIZERS.clear()
    _STEPS.clear()


#: Dispatch each training step before reading the previous one's loss (see Trainer.run); results are the same.
PIPELINE = True


class Trainer:
    """Owns the optimiser and the jitted step (built once per model structure, so it compiles once)."""

    def __init__(self, model: VelocityModel, integrator: Integrator, loss_cfg: LossConfig, cfg: TrainerConfig,
                 step_offset: int = 0, *, freeze_encoder: bool = False):
        self.integrator = integrator
        self.loss_cfg = loss_cfg
        self.cfg = cfg
        check_trainer(cfg)  # every setting, also where the optimiser below comes from the cache
        self.mesh = device_mesh(cfg)
        # What the optimiser's update depends on: its settings and the model's structure (its labels).
        self._opt_key = (cfg.optimizer, cfg.lr, cfg.encoder_lr, cfg.schedule, cfg.warmup_steps,
                         cfg.max_steps if cfg.schedule != "constant" else None, step_offset, freeze_encoder,
                         _CompiledStep.key(model))
        self.optimizer, self._init_opt = _cached(_OPTIMIZERS, self._opt_key, lambda: _optimizer_and_init(
            make_optimizer(model, cfg, step_offset, freeze_encoder=freeze_encoder)))
        if self.mesh is not None and loss_cfg.time_prior_weight:
            raise ConfigError(
                "loss.time_prior_weight compares the times of a whole batch, which is split over "
                f"{self.mesh.size} devices: set trainer.devices=1 to use it"
            )
        self.compile_seconds = 0.0  # wall time of the first step of each compiled step (compilation and one step)
        self.run_seconds = 0.0  # wall time of every run() of this trainer, compilation included
        self._compiled = {}  # (model structure, chunk) -> _CompiledStep

    @property
    def compiled(self) -> bool:
        return any(c.compiled for c in self._compiled.values())

    def _compiled_step(self, model, chunk: int) -> "_CompiledStep":
        key = (_CompiledStep.key(model), chunk)
        if key not in self._compiled:
            # Shared by every trainer of the process with the same settings: a later fit of the same kind
            # (another seed, another dataset) neither traces nor compiles its steps again.
            options = step_compiler_options()
            shared = (key, self._opt_key, self.integrator, self.loss_cfg, self.mesh,
                      None if options is None else tuple(sorted(options.items())))
            self._compiled[key] = _cached(_STEPS, shared, lambda: _CompiledStep(
                model, self.optimizer, self.integrator, self.loss_cfg, chunk, self.mesh))
        return self._compiled[key]

    def _stop_diverged(self, state: TrainState, prev) -> None:
        """Stop at a non-finite loss, keeping the last parameters whose loss was finite."""
        if prev is not None:  # the non-finite loss is that of the last update's parameters: undo the update
            state.model, state.opt_state = prev
            state.step -= 1
            for values in state.history.values():
                del values[-1:]
        state.status = "diverged"
        state.message = (
            f"the loss became non-finite at step {state.step + 1}: training stopped with the parameters of step "
            f"{state.step}, the last with a finite loss; lower trainer.lr (or trainer.encoder_lr)"
        )

    def init(self, model: VelocityModel, key, *, schedule_step: int = 0) -> TrainState:
        """A fresh state; ``schedule_step``: the learning-rate schedules start at that step."""
        opt_state = self._init_opt(eqx.filter(model, eqx.is_inexact_array))  # one program
        if schedule_step:
            opt_state = at_schedule_step(opt_state, schedule_step)
        state = TrainState(model, opt_state, key)
        state.history = {"total": [], "reconstruction": []}
        if self.loss_cfg.consistency_weight:
            state.history["consistency"] = []
        if self.loss_cfg.time_prior_weight:
            state.history["time_prior"] = []
        return state

    def run(self, state: TrainState, data: TrainData, *, until: int | None = None, desc: str = "fitting",
            checkpoint=None) -> TrainState:
        """Advance ``state`` up to step ``until`` (default trainer.max_steps), a plateau, or a non-finite loss.

        ``checkpoint``: called with the state every trainer.checkpoint_every steps.
        """
        cfg = self.cfg
        until = cfg.max_steps if until is None else min(until, cfg.max_steps)
        arrays = data.arrays()
        n = data.n_cells
        batch = None if cfg.batch_size is None or cfg.batch_size >= n else int(cfg.batch_size)
        chunk = data.chunk if batch is None else int(min(data.chunk, batch))
        mesh, n_dev = self.mesh, 1 if self.mesh is None else self.mesh.size
        # Each device takes an equal share of the step's cells, a whole number of chunks.
        pad = 0 if batch is None else (-batch) % (chunk * n_dev)
        batch_mask = None if batch is None else jnp.asarray(np.repeat(np.float32([1, 0]), [batch, pad]))
        all_rows, all_mask = data.rows, data.mask
        if mesh is not None and batch is None:
            all_rows, all_mask = padded_rows(np.arange(n), chunk * n_dev)
        if data.sparse and batch is None:  # sparse data, full batch: the batch is every cell, densified once
            gathered = data.gather(np.asarray(all_rows), features=True)
            arrays, all_rows = gathered[:3] + arrays[3:], gathered[3]
        if mesh is not None:
            from jax.sharding import NamedSharding, PartitionSpec

            arrays = jax.device_put(arrays, NamedSharding(mesh, PartitionSpec()))  # once, on every device
        hist = state.history["total"]
        # Plateau detection on an exponential average over about one epoch of minibatch losses
        # (the raw loss itself with full batches), so minibatch noise does not stop a fit early.
        smooth_w = 1.0 if batch is None else batch / n
        smooth = state.smoothed_loss
        best, since_best = state.best_loss, state.since_best
        perm, pos = (None, n) if state.batch_perm is None else (state.batch_perm, state.batch_pos)
        every = cfg.checkpoint_every if checkpoint is not None else 0
        bar = None
        if cfg.progress and until > state.step:
            from tqdm.auto import tqdm

            # disable=None: a bar on a terminal, nothing in a log file or a CI run.
            bar = tqdm(total=until, initial=state.step, desc=desc, leave=False, dynamic_ncols=True, disable=None)
        t_start = time.perf_counter()
        compiled = self._compiled_step(state.model, chunk)
        params = compiled.split(state.model)  # the model's arrays, carried through the loop
        prev = None  # the model's arrays and optimiser state before the last update: their loss was finite

        def undo_to(prev):  # the model and optimiser state to go back to after a non-finite loss
            return None if prev is None else (compiled.build(prev[0]), prev[1])

        try:
            def draw(key, perm, pos):
                """The cells of the step after (key, perm, pos): the new (key, perm, pos), its rows, mask and arrays.

                Pure: the cells of a step dispatched ahead are the ones the step would draw.
                """
                if batch is None:
                    return key, perm, pos, all_rows, all_mask, arrays
                if pos + batch > n:
                    key, sub = jax.random.split(key)
                    # Drawn on the host from the step's key (JAX's permutation compiles a sort, ~0.2 s).
                    perm, pos = host_rng(sub).permutation(n).astype(np.int32), 0  # int32, as JAX's indices
                order = np.asarray(perm)
                rows = np.concatenate([order[pos : pos + batch], np.zeros(pad, order.dtype)])
                step_arrays = arrays
                if data.sparse:  # sparse data: this batch's cells, densified
                    gathered = data.gather(rows, features=True)
                    step_arrays, rows = gathered[:3] + arrays[3:], gathered[3]
                return key, perm, pos + batch, jnp.asarray(rows), batch_mask, step_arrays

            shapes = (batch, pad, tuple(getattr(x, "shape", None) for x in arrays))
            # The step dispatched ahead: its output and the (key, perm, pos) after drawing its cells. It is
            # taken up at the next iteration, or dropped (uncommitted) if the loop stops first.
            pending = None
            while state.step < until and state.status != "diverged":  # a diverged fit takes no more steps
                t0 = time.perf_counter()
                if pending is None:
                    state.key, perm, pos, rows, mask, step_arrays = draw(state.key, perm, pos)
                    out = compiled.fn(params, state.opt_state, rows, mask, step_arrays)
                else:
                    out, (state.key, perm, pos) = pending
                    pending = None
                if PIPELINE and state.step + 1 < until:
                    # The next step goes to the device on this step's outputs before they are read, so it
                    # computes while the host reads this loss and draws (for sparse data, densifies) the
                    # cells after it: the host's share of a step no longer adds to the device's.
                    key_, perm_, pos_, rows, mask, step_arrays = draw(state.key, perm, pos)
                    pending = (compiled.fn(out[0], out[1], rows, mask, step_arrays), (key_, perm_, pos_))
                new_params, opt_state, loss, terms, info = compiled.read(out)
                if shapes not in compiled.shapes:  # this call compiled the step (for these shapes)
                    self.compile_seconds += time.perf_counter() - t0
                    compiled.shapes.add(shapes)
                if not info["ok"]:
                    raise SolverError(solver_failure_message(self.integrator, f"at training step {state.step + 1}"))
                if not math.isfinite(loss):
                    self._stop_diverged(state, undo_to(prev))
                    params = compiled.split(state.model)
                    break
                prev = params, state.opt_state
                params, state.opt_state = new_params, opt_state
                state.step += 1
                for k in state.solver_stats:
                    state.solver_stats[k] += info[k]
                hist.append(loss)
                for k, v in terms.items():
                    state.history[k].append(v)
                if bar is not None and (state.step % cfg.log_every == 0 or state.step == until):
                    bar.set_postfix(loss=f"{loss:.4g}")
                    bar.update(state.step - bar.n)
                smooth = loss if not math.isfinite(smooth) else smooth + smooth_w * (loss - smooth)
                if smooth < best - cfg.min_delta * abs(best if math.isfinite(best) else smooth):
                    best, since_best = smooth, 0
                else:
                    since_best += 1
                    if cfg.patience and since_best >= cfg.patience:
                        state.stopped_early = True
                        break
                if every and state.step % every == 0:
                    state.model = compiled.build(params)
                    state.smoothed_loss, state.best_loss, state.since_best = smooth, best, since_best
                    state.batch_perm, state.batch_pos = perm, pos
                    checkpoint(state)
        finally:
            state.model = compiled.build(params)
            if bar is not None:
                bar.close()
            state.smoothed_loss, state.best_loss, state.since_best = smooth, best, since_best
            state.batch_perm, state.batch_pos = None, 0  # the next run() draws a fresh order, as without checkpoints
        # Each loss above is that of the parameters before an update: the last update's are checked here.
        if prev is not None and state.status != "diverged":
            if not math.isfinite(loss_value(state.model, data, self.integrator, self.loss_cfg)):
                self._stop_diverged(state, undo_to(prev))
        elapsed = time.perf_counter() - t_start
        state.train_seconds += elapsed
        self.run_seconds += elapsed
        return state


_loss_jit = eqx.filter_jit(loss_terms)


#: Cells per block of a full-batch loss on sparse data (each block densified on its own).
LOSS_BLOCK = 2048


def loss_value(model, data: TrainData, integrator: Integrator, loss_cfg: LossConfig) -> float:
    """Full-batch training loss of ``model`` (float)."""
    if not data.sparse:
        loss, _ = _loss_jit(model, *data.arrays(), integrator, loss_cfg, data.chunk)
        return float(loss)
    # Sparse data: the per-cell terms are summed over blocks of cells (each term is a sum over cells
    # divided by the number of cells); the time prior compares all the cells' times at once.
    size = int(-(-min(LOSS_BLOCK, data.n_cells) // data.chunk) * data.chunk)
    per_cell = dataclasses.replace(loss_cfg, time_prior_weight=0.0)
    n = jnp.asarray(float(data.n_cells))
    rest = data.arrays()[5:]
    total = 0.0
    for lo in range(0, data.n_cells, size):
        cells = np.arange(lo, min(lo + size, data.n_cells))
        rows, mask = padded_rows(cells, size)
        features, obs_u, obs_s, local = data.gather(np.asarray(rows), features=True)
        loss, _ = _loss_jit(model, features, obs_u, obs_s, local, mask, *rest, integrator, per_cell, data.chunk, n)
        total += float(loss)
    if loss_cfg.time_prior_weight:
        t = model.encoder(data.features)
        total += loss_cfg.time_prior_weight * float(_loss.time_uniformity(t, jnp.ones(data.n_cells)))
    return total


def as_numpy(x):
    return np.asarray(jax.device_get(x))


def to_device(x, dtype=jnp.float32):
    return jnp.asarray(np.asarray(x), dtype)
