"""The training loop: one compiled step per model structure, and a learning-rate schedule that goes on
across runs of one trainer."""

import dataclasses

import jax
import numpy as np
import optax

import velode
from velode import _train

SMALL = dict(pretrain_steps=20, probe_steps=5, assign_rounds=0, cell_rank=0)


def _fitted(seed=0):
    a = velode.pp.preprocess(velode.datasets.simulation(n_cells=300, n_genes=10, seed=seed), method="none")
    r = velode.tl.fit(a, seed=seed, model=SMALL, trainer={"progress": False, "max_steps": 30, "batch_size": 64})
    return r


def _cfg(**kw):
    kw.setdefault("schedule", "cosine")  # the schedule these tests are about (the default is constant)
    return _train.TrainerConfig(max_steps=200, batch_size=64, progress=False, patience=0, checkpoint_every=0, **kw)


def test_schedule_step_equals_an_optimiser_built_with_that_offset():
    """Fresh moments with the schedule at step k (Trainer.init(schedule_step=k)) train exactly as an
    optimiser whose schedule is shifted by k: same losses and parameters, bit for bit."""
    r = _fitted()
    k = 37
    runs = []
    for offset, start in ((k, 0), (0, k)):
        tr = _train.Trainer(r.model, r.integrator, r.loss_cfg, _cfg(), step_offset=offset)
        state = tr.init(r.model, jax.random.PRNGKey(1), schedule_step=start)
        state = tr.run(state, r.data, until=25)
        runs.append(state)
    assert runs[0].history["total"] == runs[1].history["total"]
    for x, y in zip(jax.tree_util.tree_leaves(runs[0].model), jax.tree_util.tree_leaves(runs[1].model)):
        if isinstance(x, jax.Array):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # ... and the schedule did move: starting at step 0 instead trains differently.
    tr = _train.Trainer(r.model, r.integrator, r.loss_cfg, _cfg())
    other = tr.run(tr.init(r.model, jax.random.PRNGKey(1)), r.data, until=25)
    assert other.history["total"][1:] != runs[0].history["total"][1:]


def test_at_schedule_step_sets_only_the_schedule_counts():
    r = _fitted()
    tr = _train.Trainer(r.model, r.integrator, r.loss_cfg, _cfg())
    fresh = tr.init(r.model, jax.random.PRNGKey(0)).opt_state
    moved = _train.at_schedule_step(fresh, 123)
    is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
    scheds = [x for x in jax.tree_util.tree_leaves(moved, is_leaf=is_sched) if is_sched(x)]
    assert len(scheds) == 2  # the kinetics' and the encoder's schedules
    assert all(int(s.count) == 123 for s in scheds)
    rest = lambda st: [x for x in jax.tree_util.tree_leaves(st, is_leaf=is_sched) if not is_sched(x)]  # noqa: E731
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(rest(fresh), rest(moved)))


def test_one_compiled_step_per_model_structure():
    """Runs on models of one structure (two directions of time, a restart) share one compiled step;
    a model with other parameters gets its own."""
    r = _fitted()
    tr = _train.Trainer(r.model, r.integrator, r.loss_cfg, _cfg())
    reversed_model = jax.tree_util.tree_map(lambda x: x * 0.5 if isinstance(x, jax.Array) else x, r.model)
    s1 = tr.run(tr.init(r.model, jax.random.PRNGKey(0)), r.data, until=5)
    tr.run(tr.init(reversed_model, jax.random.PRNGKey(0)), r.data, until=5)
    tr.run(tr.init(s1.model, jax.random.PRNGKey(0), schedule_step=5), r.data, until=10)
    assert len(tr._compiled) == 1 and tr.compiled
    onset = dataclasses.replace(r.model)  # same structure: no new step
    tr.run(tr.init(onset, jax.random.PRNGKey(0)), r.data, until=3)
    assert len(tr._compiled) == 1
    kin = r.model.kinetics.with_onset(np.full(r.model.kinetics.n_genes, 0.05, np.float32))
    with_onset = _train.VelocityModel(r.model.features, r.model.encoder, kin, r.model.modulator)
    tr2 = _train.Trainer(with_onset, r.integrator, r.loss_cfg, _cfg())
    tr2.run(tr2.init(with_onset, jax.random.PRNGKey(0)), r.data, until=3)
    tr2.run(tr2.init(with_onset, jax.random.PRNGKey(0)), r.data, until=3)
    assert len(tr2._compiled) == 1
    assert _train._CompiledStep.key(with_onset) != _train._CompiledStep.key(r.model)


def test_step_compiler_options_are_used_where_xla_knows_them(monkeypatch):
    from velode import _settings

    monkeypatch.setattr(_settings, "_checked", {})
    assert _settings.step_compiler_options() == _settings.CPU_STEP_OPTIONS  # the CPU's XLA knows them
    # An option this XLA does not know: the step compiles with XLA's defaults instead of failing.
    monkeypatch.setattr(_settings, "_checked", {})
    monkeypatch.setattr(_settings, "CPU_STEP_OPTIONS", {"xla_cpu_no_such_option_here": True})
    assert _settings.step_compiler_options() is None
