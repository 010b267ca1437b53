"""Property tests (hypothesis) of the kinetics du/dt = alpha - beta u, ds/dt = beta u - gamma s.

- From non-negative starts, with alpha >= 0 and beta, gamma > 0, the states stay non-negative for any
  duration: the closed form, and every numerical solver.
- At long times the states reach the steady state (alpha / beta, alpha / gamma).
- The closed form solves the equations it claims to solve (its time derivative is the vector field).
- Every numerical solver offered in conf/solver/ matches the closed form in float64, within a
  tolerance that fits its order and step settings, over drawn rates, switch and onset times.

Parameters are drawn as array values of fixed shapes, so each solver is compiled once for all examples.
"""

from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra.utils import instantiate
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from omegaconf import OmegaConf

from velode.model._closed_form import solve_constant
from velode.model._kinetics import DynamicalKinetics
from velode.model._solve import Integrator, evaluate

SOLVER_CONF = Path(__file__).resolve().parents[1] / "conf" / "solver"
FIXTURE_OK = [HealthCheck.function_scoped_fixture]

# ---------------------------------------------------------------------------------------------------
# The closed form, entry by entry over wide ranges: rates from 1e-6 to 1e3, durations up to 1e300.

N = 32  # entries per example, each drawn on its own


def _floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def _powers(lo, hi):
    """Positive values over [10**lo, 10**hi], drawn as exponents (every scale as likely)."""
    return _array(np.float64, _floats(lo, hi)).map(lambda e: 10.0**e)


def _array(dtype, elements=None, n=N):
    return hnp.arrays(dtype, (n,), elements=elements, fill=st.nothing())  # no runs of one fill value


def _full(**values):
    """An explicit example: every entry of each array the same value (``rates``: a (beta, gamma) pair)."""
    out = {k: np.full(N, v, np.float64) for k, v in values.items() if k != "rates"}
    if "rates" in values:
        out["rates"] = tuple(np.full(N, v, np.float64) for v in values["rates"])
    return example(**out)


def _with_zeros(values):
    """``values`` with some entries set to zero."""
    return st.tuples(values, _array(np.bool_)).map(lambda vm: np.where(vm[1], 0.0, vm[0]))


def _signs():
    return _array(np.bool_).map(lambda b: np.where(b, -1.0, 1.0))


@st.composite
def _rates(draw, lo=-6.0, hi=3.0):
    """(beta, gamma): independent, equal, gamma = beta (1 + r) with |r| from 1e-12 to 0.5, or
    gamma = beta + d with |d| from 1e-12 to 1e-5: where the divided difference
    (e^-gamma t - e^-beta t) / (gamma - beta) of the closed form is delicate."""
    beta = draw(_powers(lo, hi))
    other = draw(_powers(lo, hi))
    near = beta * (1.0 + draw(_powers(-12.0, np.log10(0.5))) * draw(_signs()))
    d = draw(_powers(-12.0, -5.0)) * draw(_signs())
    close = np.where(beta + d > 0, beta + d, beta - d)
    mode = draw(_array(np.int8, st.integers(0, 3)))
    return beta, np.choose(mode, [other, beta, near, close])


def _non_negative(hi):
    """Values in {0} and [1e-8, hi]."""
    return _with_zeros(_powers(-8.0, np.log10(hi)))


_closed = jax.jit(solve_constant)


def _f64(*arrays):
    return [jnp.asarray(a, jnp.float64) for a in arrays]


def _first_failure(bad, **arrays):
    """The values of the first entry where ``bad``, for the assertion message."""
    i = int(np.flatnonzero(bad)[0])
    return ", ".join(f"{k}={v[i]!r}" for k, v in arrays.items())


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(u0=_non_negative(1e3), s0=_non_negative(1e3), alpha=_non_negative(1e3), rates=_rates(),
       tau=_with_zeros(_powers(-10.0, 300.0)))
# gamma - beta below 1e-6 but (gamma - beta) tau huge: a Taylor series in (gamma - beta) tau overflowed (NaN)
@_full(u0=1.0, s0=1.0, alpha=1.0, rates=(1.0, 1.0 + 1e-7), tau=1e108)
def test_closed_form_stays_non_negative(x64, u0, s0, alpha, rates, tau):
    """Any duration from 0 to 1e300."""
    beta, gamma = rates
    u, s = map(np.asarray, _closed(*_f64(u0, s0, alpha, beta, gamma, tau)))
    for name, got in (("u", u), ("s", s)):
        bad = ~(got >= 0.0)  # NaN too
        assert not bad.any(), _first_failure(bad, u0=u0, s0=s0, alpha=alpha, beta=beta, gamma=gamma, tau=tau,
                                             **{name: got})


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(u0=_non_negative(1e3), s0=_non_negative(1e3), alpha=_non_negative(1e3), rates=_rates(),
       k=_powers(2.0, 298.0))
@_full(u0=1.0, s0=1.0, alpha=1.0, rates=(1.0, 1.0 + 1e-7), k=1e108)
def test_closed_form_reaches_steady_state(x64, u0, s0, alpha, rates, k):
    """After k >= 100 time constants of the slower rate the start is forgotten (to e^-100)."""
    beta, gamma = rates
    tau = k / np.minimum(beta, gamma)
    u, s = map(np.asarray, _closed(*_f64(u0, s0, alpha, beta, gamma, tau)))
    # Rounding of alpha / beta, alpha / gamma and of the terms that cancel; the transients left are
    # below 1e-30 of (u0 + s0) for rates at most 1e9 apart.
    slack = 1e-20 * (u0 + s0)
    for name, got, want in (("u", u, alpha / beta), ("s", s, alpha / gamma)):
        bad = ~(np.abs(got - want) <= 1e-13 * want + slack)
        assert not bad.any(), _first_failure(bad, u0=u0, s0=s0, alpha=alpha, beta=beta, gamma=gamma, tau=tau,
                                             **{name: got, "steady": want})


def _time_derivative(u0, s0, alpha, beta, gamma, tau):
    return jax.jvp(lambda t: solve_constant(u0, s0, alpha, beta, gamma, t), (tau,), (jnp.ones_like(tau),))


_closed_and_derivative = jax.jit(_time_derivative)


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(u0=_non_negative(1e3), s0=_non_negative(1e3), alpha=_non_negative(1e3), rates=_rates(),
       x=_with_zeros(_powers(-10.0, 1.0)))
# Slow, nearly equal rates over a long time: the Taylor series was used at (gamma - beta) tau = 1.8
@_full(u0=0.0, s0=0.0, alpha=1.0, rates=(1e-6, 1.9e-6), x=3.8)
def test_closed_form_solves_the_kinetics(x64, u0, s0, alpha, rates, x):
    """d/dtau of the closed form is the vector field at the state it returns, while the state still
    moves (tau: x <= 10 time constants of the faster rate), and at tau = 0 it returns the start."""
    beta, gamma = rates
    tau = x / np.maximum(beta, gamma)
    (u, s), (du, ds) = jax.tree.map(np.asarray, _closed_and_derivative(*_f64(u0, s0, alpha, beta, gamma, tau)))
    want_du, want_ds = alpha - beta * u, beta * u - gamma * s
    # Rounding, relative to the size of the terms that cancel: those of the vector field (near the
    # steady state) and those of the closed form's derivative (e.g. alpha - alpha at tau = 0).
    scale_u = alpha + beta * (u + u0)
    scale_s = alpha + beta * (u + u0) + gamma * (s + s0)
    for name, got, want, scale in (("du", du, want_du, scale_u), ("ds", ds, want_ds, scale_s)):
        bad = ~(np.abs(got - want) <= 1e-9 * scale + 1e-300)
        assert not bad.any(), _first_failure(bad, u0=u0, s0=s0, alpha=alpha, beta=beta, gamma=gamma, tau=tau,
                                             **{name: got, "vector_field": want})
    start = tau == 0
    assert np.array_equal(u[start], u0[start]) and np.array_equal(s[start], s0[start])


# ---------------------------------------------------------------------------------------------------
# The numerical solvers, through the model's own path (velode.model._solve.evaluate): a gene rests at
# its start (alpha0 / beta, alpha0 / gamma) until its onset, is induced (alpha) until its switch and
# repressed (alpha = 0) after it. Times run over [0, T_END]; with beta, gamma up to 50 a gene goes
# through up to 50 of its time constants in that interval, so short and long durations are both met.

T_END = 1.05  # latent time 1 plus the projection horizon
N_GENES = 8
N_TIMES = 48
RATE_MAX = 100.0  # the kinetics' bound on beta and gamma, above every rate drawn
SWITCH_MAX = 2.0  # switch times above T_END: no repression in the interval
N_GRID = 1025  # saved grid, read by Hermite interpolation: its error stays below 3e-8 at rate 50


def _offered_solvers() -> dict:
    """Name -> solver config of every numerical solver in conf/solver/ (the closed form aside)."""
    out = {}
    for path in sorted(SOLVER_CONF.glob("*.yaml")):
        cfg = OmegaConf.load(path)
        if cfg.method is not None:
            out[cfg.name] = cfg
    return out


OFFERED = _offered_solvers()

# How each solver is run here, and the largest error allowed against the closed form, relative to
# max(1, largest |state|) of the gene. Fixed steps: the error falls as (rate * dt)^order (Euler 1,
# Heun and Midpoint 2). Adaptive (PID rtol = atol = 1e-10): the global error is some 10-100 local
# tolerances, and the grid's interpolation adds up to 3e-8.
FIXED = {"euler": (2**14, 5e-4), "heun": (2**11, 3e-5), "midpoint": (2**11, 3e-5)}
ADAPTIVE_TOL = 1e-10
ADAPTIVE = {name: 1e-7 for name in ("bosh3", "tsit5", "dopri5", "dopri8", "kvaerno5")}
# Largest negative state allowed: none on fixed steps (at rate * dt <= 0.03 every step keeps the
# states non-negative), and 10 atol of an adaptive solver's error control near zero.
NEGATIVE_SLACK = {**{name: 0.0 for name in FIXED}, **{name: 10 * ADAPTIVE_TOL for name in ADAPTIVE}}


def test_every_offered_solver_is_covered():
    assert set(OFFERED) == set(FIXED) | set(ADAPTIVE)
    assert len(OFFERED) == 8


_INTEGRATORS: dict = {}


def _integrator(name: str) -> Integrator:
    if name not in _INTEGRATORS:
        solver = instantiate(OFFERED[name].method)  # as the command builds it
        if name in FIXED:
            steps = FIXED[name][0]
            integ = Integrator(solver, dt0=T_END / steps, max_steps=steps, n_grid=N_GRID)
        else:
            controller = diffrax.PIDController(rtol=ADAPTIVE_TOL, atol=ADAPTIVE_TOL)
            integ = Integrator(solver, controller, max_steps=OFFERED[name].max_steps, n_grid=N_GRID)
        _INTEGRATORS[name] = integ
    return _INTEGRATORS[name]


def _tolerance(name: str) -> float:
    return FIXED[name][1] if name in FIXED else ADAPTIVE[name]


CLOSED = Integrator()


@eqx.filter_jit
def _evaluate(params, t, integrator):
    """(u, s, info) of kinetics of per-gene params (alpha, beta, gamma, alpha0, switch, onset fraction)."""
    alpha, beta, gamma, alpha0, switch, onset_fraction = params
    kin = DynamicalKinetics(N_GENES, alpha=alpha, beta=beta, gamma=gamma, alpha0=alpha0, switch=switch,
                            rate_max=RATE_MAX, switch_max=SWITCH_MAX)
    kin = kin.with_onset(onset_fraction * kin.switch_time())
    u, s, info = evaluate(kin, t, integrator, T_END)
    return u, s, info.ok, (kin.alpha, kin.beta, kin.gamma)


def _genes(lo, hi):
    return _array(np.float64, _floats(lo, hi), n=N_GENES)


@st.composite
def _kinetics(draw, rate_lo=-2.0, rate_hi=np.log10(50.0), switch=(0.01, 1.9), onset=(0.0, 0.9)):
    """Per-gene parameters (6, genes): alpha in [0, 10], beta, gamma in [10**rate_lo, 10**rate_hi] (at
    times equal), alpha0 in [0, 5], switch times and onsets (a fraction of the switch time)."""
    beta = 10.0 ** draw(_genes(rate_lo, rate_hi))
    gamma = 10.0 ** draw(_genes(rate_lo, rate_hi))
    gamma = np.where(draw(_array(np.bool_, n=N_GENES)), beta, gamma)
    params = [draw(_genes(0.0, 10.0)), beta, gamma, draw(_genes(0.0, 5.0)), draw(_genes(*switch)),
              draw(_genes(*onset))]
    return jnp.asarray(np.stack(params), jnp.float64)


def _times(lo=0.0, hi=T_END):
    """Cell times (cells, 1): drawn, and both ends of the interval."""
    return _array(np.float64, _floats(lo, hi), n=N_TIMES).map(
        lambda t: jnp.asarray(np.concatenate([[lo, hi], t])[:, None], jnp.float64)
    )


SOLVERS = sorted(OFFERED)


@pytest.mark.parametrize("name", SOLVERS)
@settings(max_examples=6, deadline=None, suppress_health_check=FIXTURE_OK)
@given(params=_kinetics(), t=_times())
def test_solver_matches_closed_form(x64, name, params, t):
    u, s, ok, _ = _evaluate(params, t, _integrator(name))
    u_ref, s_ref, ok_ref, _ = _evaluate(params, t, CLOSED)
    assert bool(ok) and bool(ok_ref)
    assert u.dtype == s.dtype == jnp.float64
    scale = np.maximum(1.0, np.maximum(np.abs(u_ref).max(0), np.abs(s_ref).max(0)))
    err = np.maximum(np.abs(np.asarray(u - u_ref)), np.abs(np.asarray(s - s_ref))).max(0) / scale
    assert err.max() <= _tolerance(name), (name, err.max(), np.asarray(params)[:, err.argmax()])


@pytest.mark.parametrize("name", SOLVERS)
@settings(max_examples=6, deadline=None, suppress_health_check=FIXTURE_OK)
@given(params=_kinetics(rate_lo=-3.0), t=_times())
def test_solver_states_stay_non_negative(x64, name, params, t):
    """alpha0 >= 0 starts every gene at a non-negative state; induction and repression keep it so."""
    params = params.at[0].set(params[0] * (params[0] > 5.0))  # alpha = 0 (softplus floor) for some genes
    u, s, ok, _ = _evaluate(params, t, _integrator(name))
    assert bool(ok)
    low = min(float(u.min()), float(s.min()))
    assert low >= -NEGATIVE_SLACK[name], (name, low)


@pytest.mark.parametrize("name", SOLVERS)
@settings(max_examples=4, deadline=None, suppress_health_check=FIXTURE_OK)
@given(params=_kinetics(rate_lo=np.log10(25.0), switch=(1.5, 1.9), onset=(0.0, 0.0)),
       t=_times(T_END - 0.05, T_END))
def test_solver_reaches_steady_state(x64, name, params, t):
    """No switch before T_END and beta, gamma >= 25: after 25 time constants (to e^-25) the states are
    alpha / beta, alpha / gamma."""
    u, s, ok, (alpha, beta, gamma) = _evaluate(params, t, _integrator(name))
    assert bool(ok)
    tol = _tolerance(name)
    for got, want in ((u, alpha / beta), (s, alpha / gamma)):
        scale = np.maximum(1.0, np.asarray(want))
        err = np.abs(np.asarray(got - want[None, :])).max(0) / scale
        assert err.max() <= tol, (name, err.max())
