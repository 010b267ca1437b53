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
    kw = {"max_steps": 200, "batch_size": 64, "progress": False, "patience": 0, "checkpoint_every": 0, **kw}
    return _train.TrainerConfig(**kw)


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


def _leaves_equal(m1, m2):
    for x, y in zip(jax.tree_util.tree_leaves(m1), jax.tree_util.tree_leaves(m2)):
        if isinstance(x, jax.Array):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_dispatching_the_next_step_early_changes_nothing(monkeypatch):
    """Each step is dispatched before the previous one's loss is read (PIPELINE); minibatches, full
    batches and a fit stopped early on a plateau give the same losses and parameters, bit for bit, as
    reading every loss first. The step dispatched after the last one read is dropped, RNG state included."""
    r = _fitted()
    for kw, until in ((dict(), 23), (dict(batch_size=None), 17), (dict(patience=3, min_delta=1.0), 40)):
        runs = []
        for pipeline in (True, False):
            monkeypatch.setattr(_train, "PIPELINE", pipeline)
            tr = _train.Trainer(r.model, r.integrator, r.loss_cfg, _cfg(**kw))
            state = tr.run(tr.init(r.model, jax.random.PRNGKey(3)), r.data, until=until)
            state = tr.run(state, r.data, until=until + 9)  # a second run goes on from the same RNG state
            runs.append(state)
        a, b = runs
        assert len(a.history["total"]) == len(b.history["total"]) and a.step == b.step
        assert a.history["total"] == b.history["total"]
        assert a.stopped_early == b.stopped_early
        np.testing.assert_array_equal(np.asarray(a.key), np.asarray(b.key))
        _leaves_equal(a.model, b.model)
        _leaves_equal(a.opt_state, b.opt_state)
    assert a.stopped_early and a.step < 49  # the plateau case did stop early


def test_a_later_fit_reuses_the_compiled_steps_of_an_earlier_one(monkeypatch):
    """Trainers with the same settings share their optimiser and compiled steps across fits: a second
    fit compiles nothing and gives what a fit with nothing shared gives."""
    monkeypatch.setattr(_train, "CACHE_SIZE", 8)
    _train.clear_caches()
    r1 = _fitted(seed=1)
    steps = dict(_train._STEPS)
    assert steps and r1.compile_seconds > 0
    r2 = _fitted(seed=1)
    assert r2.compile_seconds == 0.0  # no step compiled again
    assert dict(_train._STEPS).keys() == steps.keys()
    assert all(_train._STEPS[k] is v for k, v in steps.items())
    monkeypatch.setattr(_train, "CACHE_SIZE", 0)  # nothing shared
    r3 = _fitted(seed=1)
    assert r3.compile_seconds > 0
    _leaves_equal(r2.model, r1.model)
    _leaves_equal(r3.model, r1.model)
    # Other settings (a learning rate) get their own optimiser and step; the cache keeps at most CACHE_SIZE.
    monkeypatch.setattr(_train, "CACHE_SIZE", 2)
    for lr in (0.01, 0.02, 0.03):
        tr = _train.Trainer(r1.model, r1.integrator, r1.loss_cfg, _cfg(lr=lr))
        tr.run(tr.init(r1.model, jax.random.PRNGKey(0)), r1.data, until=2)
    assert len(_train._STEPS) == 2 and len(_train._OPTIMIZERS) == 2
    assert {k[1][1] for k in _train._STEPS} == {0.02, 0.03}  # the least recently used went first
    _train.clear_caches()


def test_settings_that_cannot_be_hashed_train_without_the_cache():
    """An integrator holding a dict (Diffrax's BacksolveAdjoint) cannot key the cache: its trainer
    builds its own optimiser and step, and trains."""
    import diffrax

    r = _fitted()
    integrator = _train.Integrator(solver=diffrax.Tsit5(), adjoint=diffrax.BacksolveAdjoint(),
                                   stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-3))
    model = dataclasses.replace(r.model, modulator=None) if r.model.modulator is not None else r.model
    before = dict(_train._STEPS)
    tr = _train.Trainer(model, integrator, r.loss_cfg, _cfg(max_steps=4))
    state = tr.run(tr.init(model, jax.random.PRNGKey(0)), r.data)
    assert state.step == 4 and np.isfinite(state.history["total"]).all()
    assert dict(_train._STEPS).keys() == before.keys()
