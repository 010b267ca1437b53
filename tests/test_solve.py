"""Numerical solves on the time grid against the closed form."""

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ALL_SOLVERS, FIXED_STEP_SOLVERS, random_kinetics
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from velode.model._kinetics import DynamicalKinetics, StandardKinetics
from velode.model._solve import Integrator, evaluate

N_GENES = 20
T_END = 1.05
N_GRID = 129
CLOSED = Integrator()

# Largest |numerical - exact| allowed (values are O(1)-O(10)), per solver, at the settings below.
TOLERANCE = {
    diffrax.Euler: 5e-3,
    diffrax.Heun: 2e-5,
    diffrax.Midpoint: 2e-5,
    diffrax.Bosh3: 1e-6,
    diffrax.Tsit5: 1e-6,
    diffrax.Dopri5: 1e-6,
    diffrax.Dopri8: 3e-6,
    diffrax.Kvaerno5: 1e-5,
}
FIXED_DT = T_END / (N_GRID - 1) / 8


def _integrator(solver_cls, **kw):
    if solver_cls in FIXED_STEP_SOLVERS:
        return Integrator(solver_cls(), dt0=FIXED_DT, max_steps=2048, **kw)
    return Integrator(solver_cls(), diffrax.PIDController(rtol=1e-8, atol=1e-8), **kw)


def _cell_times(n_cells, seed, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, T_END, n_cells)
    t[:3] = [0.0, T_END, 0.5]  # both ends of the grid
    return jnp.asarray(t[:, None], dtype)


@pytest.mark.parametrize("kind", ["standard", "dynamical"])
@pytest.mark.parametrize("solver_cls", ALL_SOLVERS, ids=lambda c: c.__name__)
def test_solver_matches_closed_form(x64, solver_cls, kind):
    kin = random_kinetics(kind, N_GENES, seed=11, dtype=jnp.float64)
    t = _cell_times(64, seed=5)
    u_ref, s_ref, info_ref = evaluate(kin, t, CLOSED, T_END)
    u, s, info = evaluate(kin, t, _integrator(solver_cls), T_END)
    assert bool(info_ref.ok)
    assert bool(info.ok)
    assert u.shape == s.shape == (64, N_GENES)
    assert u.dtype == s.dtype == jnp.float64
    tol = TOLERANCE[solver_cls]
    np.testing.assert_allclose(np.asarray(u), np.asarray(u_ref), rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(s), np.asarray(s_ref), rtol=tol, atol=tol)
    if solver_cls in FIXED_STEP_SOLVERS:
        # (n_grid - 1) * 8 constant steps per phase; switching kinetics solve two phases
        per_phase = (N_GRID - 1) * 8
        assert int(info.num_steps) == per_phase * (2 if kind == "dynamical" else 1)
        assert int(info.num_rejected_steps) == 0
    else:
        assert 0 < int(info.num_steps) <= 2 * 4096


def test_per_gene_query_times(x64):
    """Times of shape (cells, genes): each gene read at its own time."""
    kin = random_kinetics("dynamical", N_GENES, seed=3, dtype=jnp.float64)
    rng = np.random.default_rng(0)
    t = jnp.asarray(rng.uniform(0, T_END, (64, N_GENES)))
    u_ref, s_ref, _ = evaluate(kin, t, CLOSED, T_END)
    u, s, info = evaluate(kin, t, _integrator(diffrax.Tsit5), T_END)
    assert bool(info.ok)
    np.testing.assert_allclose(np.asarray(u), np.asarray(u_ref), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s), np.asarray(s_ref), atol=1e-6, rtol=1e-6)
    # Column g of the per-gene answer equals gene g of a shared-time query at those times.
    for g in (0, 7):
        for integ in (CLOSED, _integrator(diffrax.Tsit5)):
            u_all, s_all, _ = evaluate(kin, t, integ, T_END)
            u_col, s_col, _ = evaluate(kin, t[:, g : g + 1], integ, T_END)
            np.testing.assert_allclose(np.asarray(u_all[:, g]), np.asarray(u_col[:, g]), rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(np.asarray(s_all[:, g]), np.asarray(s_col[:, g]), rtol=1e-13, atol=1e-15)


def test_closed_form_starts_at_steady_state_of_alpha0(x64):
    kin = random_kinetics("dynamical", N_GENES, seed=4, dtype=jnp.float64)
    u, s, _ = evaluate(kin, jnp.zeros((64, 1), jnp.float64), CLOSED, T_END)
    np.testing.assert_allclose(np.asarray(u[0]), np.asarray(kin.u0), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(s[0]), np.asarray(kin.s0), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(kin.u0), np.asarray(kin.alpha0 / kin.beta), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(kin.s0), np.asarray(kin.alpha0 / kin.gamma), rtol=1e-14)


def test_closed_form_switch_is_continuous(x64):
    """At the switch time the induction and repression branches meet."""
    kin = random_kinetics("dynamical", N_GENES, seed=6, dtype=jnp.float64)
    t_sw = kin.switch_time()
    eps = 1e-9
    u_lo, s_lo, _ = evaluate(kin, jnp.broadcast_to(t_sw - eps, (64, N_GENES)), CLOSED, T_END)
    u_hi, s_hi, _ = evaluate(kin, jnp.broadcast_to(t_sw + eps, (64, N_GENES)), CLOSED, T_END)
    np.testing.assert_allclose(np.asarray(u_lo), np.asarray(u_hi), atol=1e-7)
    np.testing.assert_allclose(np.asarray(s_lo), np.asarray(s_hi), atol=1e-7)
    # du/dt jumps by -alpha at the switch; ds/dt is continuous.
    assert np.all(np.asarray(kin.alpha_at(t_sw - eps)) == np.asarray(kin.alpha))
    assert np.all(np.asarray(kin.alpha_at(t_sw + eps)) == 0.0)


def test_standard_kinetics_never_switch(x64):
    kin = random_kinetics("standard", 5, seed=0, dtype=jnp.float64)
    assert kin.switch_time() is None
    a = kin.alpha_at(jnp.linspace(0, 1, 7)[:, None])
    assert a.shape == (7, 5)
    np.testing.assert_array_equal(np.asarray(a), np.broadcast_to(np.asarray(kin.alpha), (7, 5)))


def test_constructor_round_trips_rates(x64):
    rng = np.random.default_rng(0)
    vals = {k: jnp.asarray(rng.uniform(0.5, 9.0, 7)) for k in ("alpha", "beta", "gamma", "scale", "alpha0")}
    sw = jnp.asarray(rng.uniform(0.2, 0.8, 7))
    kin = DynamicalKinetics(7, **vals, switch=sw)
    for k, v in vals.items():
        np.testing.assert_allclose(np.asarray(getattr(kin, k)), np.asarray(v), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(kin.switch_time()), np.asarray(sw), rtol=1e-10)
    assert kin.alpha.dtype == jnp.float64
    std = StandardKinetics(3, alpha=2.0, beta=3.0, gamma=4.0)
    assert std.n_genes == 3
    np.testing.assert_allclose(np.asarray(std.gamma), 4.0, rtol=1e-6)


@pytest.mark.parametrize(
    "solver_cls, order", [(diffrax.Euler, 1), (diffrax.Heun, 2), (diffrax.Midpoint, 2)],
    ids=["Euler", "Heun", "Midpoint"],
)
def test_convergence_order(x64, solver_cls, order):
    """Halving the constant step divides the error by 2**order. Read at grid points, where the
    Hermite interpolation returns the solver's values, so only the solver's error is seen."""
    kin = random_kinetics("standard", N_GENES, seed=12, dtype=jnp.float64)
    h = T_END / (N_GRID - 1)
    t = jnp.asarray(np.linspace(0.0, 64 * h, 64))[:, None]  # every other grid point over [0, T_END / 2]
    u_ref, s_ref, _ = evaluate(kin, t, CLOSED, T_END)
    errors = []
    for dt0 in (FIXED_DT, FIXED_DT / 2):
        integ = Integrator(solver_cls(), dt0=dt0, max_steps=2048)
        u, s, info = evaluate(kin, t, integ, T_END)
        assert bool(info.ok)
        errors.append(max(float(jnp.max(jnp.abs(u - u_ref))), float(jnp.max(jnp.abs(s - s_ref)))))
    assert errors[1] < errors[0]
    assert np.log2(errors[0] / errors[1]) == pytest.approx(order, abs=0.1)


# Far too few steps for a tight tolerance (but enough for a solve that stays at its steady state).
TIGHT_FEW_STEPS = Integrator(diffrax.Tsit5(), diffrax.PIDController(rtol=1e-10, atol=1e-10), max_steps=4)


@pytest.mark.parametrize("kind, jit", [("standard", False), ("dynamical", False), ("dynamical", True)])
def test_too_few_steps_reports_failure(x64, kind, jit):
    kin = random_kinetics(kind, N_GENES, seed=2, dtype=jnp.float64)
    t = _cell_times(64, seed=1)
    fn = eqx.filter_jit(evaluate) if jit else evaluate
    u, s, info = fn(kin, t, TIGHT_FEW_STEPS, T_END)
    assert not bool(info.ok)
    # The failure is reported, not raised and not turned into NaN/inf.
    assert bool(jnp.all(jnp.isfinite(u))) and bool(jnp.all(jnp.isfinite(s)))


def test_failure_of_repression_phase_alone_is_reported(x64):
    """Only the second (repression) phase runs out of steps: the combined info must still say so."""
    t = _cell_times(64, seed=0)
    rng = np.random.default_rng(8)
    # alpha0 == alpha: induction stays at its steady state (a few steps); repression decays (many).
    alpha = jnp.asarray(rng.uniform(0.5, 5.0, N_GENES))
    rates = dict(alpha=alpha, alpha0=alpha, beta=jnp.asarray(rng.uniform(0.5, 10.0, N_GENES)),
                 gamma=jnp.asarray(rng.uniform(0.5, 10.0, N_GENES)))
    _, _, induction = evaluate(StandardKinetics(N_GENES, **rates), t, TIGHT_FEW_STEPS, T_END)
    assert bool(induction.ok)
    kin = DynamicalKinetics(N_GENES, **rates, switch=jnp.asarray(rng.uniform(0.2, 0.8, N_GENES)))
    u, s, info = evaluate(kin, t, TIGHT_FEW_STEPS, T_END)
    assert not bool(info.ok)
    assert int(info.num_steps) > int(induction.num_steps)
    assert bool(jnp.all(jnp.isfinite(u))) and bool(jnp.all(jnp.isfinite(s)))


@pytest.mark.parametrize("kind", ["standard", "dynamical"])
@pytest.mark.parametrize("solver", [None, diffrax.Tsit5], ids=["closed", "tsit5"])
def test_long_time_approaches_steady_state(x64, kind, solver):
    """Long compared with every gene's time scales 1/beta and 1/gamma (at least 28 of them)."""
    kin = random_kinetics(kind, N_GENES, seed=9, dtype=jnp.float64, beta=(30.0, 45.0), gamma=(30.0, 45.0),
                          switch=(0.02, 0.1))
    integ = CLOSED if solver is None else _integrator(solver)
    t = jnp.full((64, 1), T_END, jnp.float64)
    u, s, info = evaluate(kin, t, integ, T_END)
    assert bool(info.ok)
    if kind == "standard":
        target_u, target_s = kin.alpha / kin.beta, kin.alpha / kin.gamma
    else:  # transcription is off after the switch: everything decays to zero
        target_u, target_s = jnp.zeros(N_GENES), jnp.zeros(N_GENES)
    atol = 1e-10 if solver is None else 1e-7  # the solver's absolute tolerance is 1e-8
    np.testing.assert_allclose(np.asarray(u[0]), np.asarray(target_u), rtol=1e-7, atol=atol)
    np.testing.assert_allclose(np.asarray(s[0]), np.asarray(target_s), rtol=1e-7, atol=atol)


_PROP_T = np.concatenate([np.linspace(0.0, T_END, 33), np.random.default_rng(0).uniform(0, T_END, 31)])[:, None]


def _gene_values(lo, hi):
    return st.lists(st.floats(lo, hi, allow_nan=False), min_size=N_GENES, max_size=N_GENES)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    alpha=_gene_values(0.0, 10.0),
    beta=_gene_values(0.05, 45.0),
    gamma=_gene_values(0.05, 45.0),
    alpha0=_gene_values(0.0, 5.0),
    switch=_gene_values(0.01, 1.4),
    dynamical=st.booleans(),
)
# Tiny states decaying fast (alpha = alpha0 = 1e-6 after clipping, beta = 30): Tsit5 undershoots zero by
# about its absolute tolerance (-1.3e-8 here), which its error control allows.
@example(alpha=[0.0] * N_GENES, beta=[1.0] * (N_GENES - 1) + [30.0], gamma=[1.0] * N_GENES, alpha0=[0.0] * N_GENES,
         switch=[1.0] * N_GENES, dynamical=True)
def test_states_stay_non_negative(x64, alpha, beta, gamma, alpha0, switch, dynamical):
    f64 = lambda v: jnp.asarray(v, jnp.float64)  # noqa: E731
    kw = dict(alpha=f64(alpha), beta=f64(beta), gamma=f64(gamma), alpha0=f64(alpha0))
    if dynamical:
        kin = DynamicalKinetics(N_GENES, **kw, switch=f64(switch))
    else:
        kin = StandardKinetics(N_GENES, **kw)
    t = f64(_PROP_T)
    # the closed form to rounding; a solver to its error control (ten times its absolute tolerance of 1e-8)
    for integ, floor in ((CLOSED, -1e-9), (_integrator(diffrax.Tsit5), -1e-7)):
        u, s, info = evaluate(kin, t, integ, T_END)
        assert bool(info.ok)
        assert float(jnp.min(u)) >= floor, integ.solver
        assert float(jnp.min(s)) >= floor, integ.solver


@pytest.mark.parametrize("solver", [diffrax.Tsit5(), diffrax.Dopri5()], ids=["tsit5", "dopri5"])
def test_onset_of_induction_closed_form_and_solvers_agree(x64, solver):
    """With an onset, genes rest at their start until it, then follow the same kinetics shifted in time."""
    from helpers import random_kinetics

    kin = random_kinetics("dynamical", 6, seed=5, dtype=jnp.float64)
    onset = 0.5 * kin.switch_time()
    with_on = kin.with_onset(onset)
    np.testing.assert_allclose(np.asarray(with_on.onset_time()), np.asarray(onset), rtol=1e-9)
    t = jnp.linspace(0.0, 1.0, 101)[:, None]
    u, s, _ = evaluate(with_on, t, Integrator(), t_end=1.0)
    before = np.asarray(t < onset)
    np.testing.assert_allclose(np.asarray(u)[before], np.broadcast_to(np.asarray(kin.u0), u.shape)[before], rtol=1e-12)
    # after the onset: the kinetics without onset, at the time since the onset
    u_ref, s_ref, _ = evaluate(kin, jnp.maximum(t - onset, 0.0), Integrator(), t_end=1.0)
    on = np.asarray((t >= onset) & (t < kin.switch_time()))
    np.testing.assert_allclose(np.asarray(s)[on], np.asarray(s_ref)[on], rtol=1e-10)
    integ = Integrator(solver=solver, stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10), n_grid=257)
    u_n, s_n, info = evaluate(with_on, t, integ, t_end=1.0)
    assert bool(info.ok)
    np.testing.assert_allclose(np.asarray(s_n), np.asarray(s), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(u_n), np.asarray(u), rtol=1e-5, atol=1e-7)


def test_per_cell_alpha_scale_equals_kinetics_with_that_alpha(x64):
    """A cell-specific factor on alpha gives the state of kinetics whose alpha is scaled by it."""
    from velode.model._kinetics import _inv_softplus
    from velode.model._solve import prepare

    kin = random_kinetics("dynamical", 5, seed=2, dtype=jnp.float64)
    kin = kin.with_onset(0.3 * kin.switch_time())
    t = jnp.linspace(0.0, 1.0, 41)[:, None]
    ev = prepare(kin, Integrator(), t_end=1.0)
    for m in (0.4, 1.0, 2.5):
        u, s = ev(t, jnp.full((41, 5), m))
        scaled = eqx.tree_at(lambda k: k.raw_alpha, kin, _inv_softplus(m * kin.alpha))
        u_ref, s_ref, _ = evaluate(scaled, t, Integrator(), t_end=1.0)
        np.testing.assert_allclose(np.asarray(u), np.asarray(u_ref), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(s), np.asarray(s_ref), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="closed form"):
        prepare(kin, Integrator(solver=diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-6)),
                t_end=1.0)(t, jnp.ones((41, 5)))
