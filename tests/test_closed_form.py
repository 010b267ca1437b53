"""The exact solution of du/dt = alpha - beta u, ds/dt = beta u - gamma s at constant rates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from velode.model._closed_form import solve_constant, solve_constant_vjp


def _reference(u0, s0, alpha, beta, gamma, tau):
    if tau == 0:
        return np.array([u0, s0])
    sol = solve_ivp(
        lambda t, y: [alpha - beta * y[0], beta * y[0] - gamma * y[1]],
        (0.0, tau),
        [u0, s0],
        method="DOP853",
        rtol=1e-11,
        atol=1e-11,
    )
    assert sol.success
    return sol.y[:, -1]


def _gamma_for(mode, beta, rng):
    if mode == "random":
        return rng.uniform(0.5, 10.0)
    if mode == "equal":
        return beta
    if mode == "near":
        return beta * (1 + 1e-7)
    if mode == "below_switchover":  # |gamma - beta| just under the series/direct switchover
        return beta + 0.9e-6
    if mode == "above_switchover":
        return beta - 1.1e-6
    raise ValueError(mode)


GAMMA_MODES = ["random", "equal", "near", "below_switchover", "above_switchover"]


@pytest.mark.parametrize("mode", GAMMA_MODES)
def test_matches_numerical_integration(x64, mode):
    rng = np.random.default_rng(GAMMA_MODES.index(mode))
    for _ in range(12):
        u0, s0 = rng.uniform(0.0, 3.0, 2)
        alpha = rng.uniform(0.0, 5.0)
        beta = rng.uniform(0.5, 10.0)
        gamma = _gamma_for(mode, beta, rng)
        tau = rng.uniform(0.0, 3.0)
        u, s = solve_constant(
            *(jnp.asarray(v, jnp.float64) for v in (u0, s0, alpha, beta, gamma, tau))
        )
        assert u.dtype == jnp.float64 and s.dtype == jnp.float64
        ref = _reference(u0, s0, alpha, beta, gamma, tau)
        np.testing.assert_allclose([float(u), float(s)], ref, rtol=1e-9, atol=1e-10)


def test_broadcasts_cells_against_genes(x64):
    rng = np.random.default_rng(0)
    n_cells, n_genes = 7, 5
    genes = [jnp.asarray(rng.uniform(lo, hi, n_genes)) for lo, hi in [(0, 2), (0, 2), (0, 5), (0.5, 10), (0.5, 10)]]
    genes[4] = genes[4].at[0].set(genes[3][0])  # one gene with gamma == beta
    tau = jnp.asarray(rng.uniform(0, 2, (n_cells, 1)))
    u, s = solve_constant(*genes, tau)
    assert u.shape == s.shape == (n_cells, n_genes)
    for i in range(n_cells):
        for g in range(n_genes):
            ui, si = solve_constant(*(a[g] for a in genes), tau[i, 0])
            np.testing.assert_allclose([u[i, g], s[i, g]], [ui, si], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("mode", GAMMA_MODES)
def test_zero_duration_returns_start(x64, mode):
    rng = np.random.default_rng(1)
    beta = 3.7
    gamma = _gamma_for(mode, beta, rng)
    u, s = solve_constant(*(jnp.asarray(v, jnp.float64) for v in (0.8, 1.3, 2.5, beta, gamma, 0.0)))
    assert float(u) == pytest.approx(0.8, rel=1e-15)
    assert float(s) == pytest.approx(1.3, rel=1e-15)


@pytest.mark.parametrize("mode", GAMMA_MODES)
def test_long_duration_reaches_steady_state(x64, mode):
    rng = np.random.default_rng(2)
    for _ in range(5):
        alpha, beta = rng.uniform(0.0, 5.0), rng.uniform(0.5, 10.0)
        gamma = _gamma_for(mode, beta, rng)
        u, s = solve_constant(*(jnp.asarray(v, jnp.float64) for v in (2.0, 0.1, alpha, beta, gamma, 60.0)))
        np.testing.assert_allclose([float(u), float(s)], [alpha / beta, alpha / gamma], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "dtype, beta, gamma, tau",
    [("float64", 8.0, 1.0, 200.0), ("float32", 60.0, 0.5, 1.5), ("float32", 100.0, 1.0, 1.0)],
)
def test_large_rate_times_duration_stays_finite(x64, dtype, beta, gamma, tau):
    dt = jnp.dtype(dtype)
    u, s = solve_constant(*(jnp.asarray(v, dt) for v in (1.0, 0.1, 1.0, beta, gamma, tau)))
    assert s.dtype == dt
    assert bool(jnp.isfinite(s))
    # Exact value, computed without the overflowing intermediate.
    eb, eg = np.exp(-beta * tau), np.exp(-gamma * tau)
    expected = 0.1 * eg + 1.0 / gamma * (1 - eg) + (1.0 - beta * 1.0) * (eg - eb) / (gamma - beta)
    assert float(s) == pytest.approx(expected, rel=1e-5)


def test_steady_state_is_fixed_point(x64):
    alpha, beta, gamma = 2.0, 3.0, 0.7
    for tau in [0.1, 1.0, 10.0]:
        u, s = solve_constant(alpha / beta, alpha / gamma, alpha, beta, gamma, jnp.asarray(tau, jnp.float64))
        np.testing.assert_allclose([float(u), float(s)], [alpha / beta, alpha / gamma], rtol=1e-13)


def test_semigroup_property(x64):
    """Solving for tau1 then tau2 equals solving for tau1 + tau2."""
    args = dict(alpha=1.7, beta=2.2, gamma=2.2 * (1 + 1e-7))
    for gamma in [args["gamma"], 0.9, 6.0]:
        a, b = args["alpha"], args["beta"]
        u1, s1 = solve_constant(0.3, 0.4, a, b, gamma, jnp.asarray(0.37, jnp.float64))
        u2, s2 = solve_constant(u1, s1, a, b, gamma, jnp.asarray(0.81, jnp.float64))
        u, s = solve_constant(0.3, 0.4, a, b, gamma, jnp.asarray(1.18, jnp.float64))
        np.testing.assert_allclose([float(u2), float(s2)], [float(u), float(s)], rtol=1e-13)


_NAMES = ["u0", "s0", "alpha", "beta", "gamma", "tau"]


def _s_of(p):
    return solve_constant(p[0], p[1], p[2], p[3], p[4], p[5])[1]


def _u_of(p):
    return solve_constant(p[0], p[1], p[2], p[3], p[4], p[5])[0]


def _central_fd(f, p, rel_step=1e-5):
    out = []
    for k in range(p.shape[0]):
        h = rel_step * max(1.0, abs(float(p[k])))
        e = jnp.zeros_like(p).at[k].set(h)
        out.append((float(f(p + e)) - float(f(p - e))) / (2 * h))
    return np.array(out)


@pytest.mark.parametrize("mode", GAMMA_MODES)
@pytest.mark.parametrize("fn", [_s_of, _u_of], ids=["s", "u"])
def test_gradients_match_finite_differences(x64, mode, fn):
    rng = np.random.default_rng(3)
    # Finite differences of step 1e-5 straddle the series branch for |gamma - beta| < 1e-6, so they
    # carry ~1e-7 of truncation there; everything else is held to 1e-9.
    series = mode in ("near", "below_switchover")
    for _ in range(4):
        u0, s0, alpha = rng.uniform(0.1, 2.0), rng.uniform(0.1, 2.0), rng.uniform(0.2, 4.0)
        beta = rng.uniform(0.5, 8.0)
        gamma = _gamma_for(mode, beta, rng)
        tau = rng.uniform(0.1, 1.5)
        p = jnp.asarray([u0, s0, alpha, beta, gamma, tau], jnp.float64)
        grad = np.asarray(jax.grad(fn)(p))
        assert np.all(np.isfinite(grad))
        fd = _central_fd(fn, p)
        for name, g, f in zip(_NAMES, grad, fd):
            abs_tol = 1e-7 if series and name in ("beta", "gamma") else 1e-9
            assert g == pytest.approx(f, rel=1e-6, abs=abs_tol), (name, mode)


def test_gradients_near_equal_rates_are_accurate(x64):
    p = jnp.asarray([0.1, 0.5, 4.0, 2.0, 2.0 + 0.9e-6, 1.5], jnp.float64)
    grad = np.asarray(jax.grad(_s_of)(p))
    fd = _central_fd(_s_of, p)  # steps of 1e-5 leave the series branch: the direct formula is accurate there
    np.testing.assert_allclose(grad, fd, rtol=1e-8)


def test_gradient_continuous_across_switchover(x64):
    """The small-|gamma - beta| expansion and the direct formula agree on values and gradients."""
    beta, tau = 2.5, 1.3
    # the series is used while |gamma - beta| tau < 1e-6
    ps = [jnp.asarray([0.4, 0.6, 1.9, beta, beta + d / tau, tau], jnp.float64) for d in (0.999e-6, 1.001e-6)]
    vals = [float(_s_of(p)) for p in ps]
    grads = [np.asarray(jax.grad(_s_of)(p)) for p in ps]
    assert vals[0] == pytest.approx(vals[1], rel=1e-9)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6, atol=1e-10)


def test_gradient_at_equal_rates_in_single_precision():
    p = jnp.asarray([0.4, 0.6, 1.9, 2.5, 2.5, 0.7], jnp.float32)
    for fn in (_s_of, _u_of):
        g = jax.jit(jax.grad(fn))(p)
        assert g.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(g)))
    # vector arguments with some equal-rate genes
    beta = jnp.asarray([1.0, 2.0, 3.0], jnp.float32)
    gamma = jnp.asarray([1.0, 2.5, 3.0], jnp.float32)
    g = jax.jit(jax.grad(lambda b, c: jnp.sum(solve_constant(0.1, 0.2, 1.0, b, c, 0.8)[1]), argnums=(0, 1)))(beta, gamma)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in g)


# --------------------------------------------------------------------- the hand-written reverse mode

# (gamma - beta) tau from 0 through the series switchover (|x| = 1/2) to both large signs.
_X_VALUES = [0.0, 1e-9, -3e-7, 1e-3, -0.2, 0.49, 0.51, -0.51, 2.0, -2.0, 15.0, -15.0, 60.0, -60.0]


def _vjp_cases(rng, dtype):
    """Cells x genes arguments spanning the regimes of the divided difference, broadcast as in training."""
    genes = len(_X_VALUES)
    beta = rng.uniform(0.2, 8.0, genes)
    tau = rng.uniform(0.0, 1.5, (9, 1))
    tau[0] = 0.0  # no time elapsed
    t_ref = np.maximum(tau.mean(), 0.3)
    gamma = np.maximum(beta + np.asarray(_X_VALUES) / t_ref, 1e-3)
    u0, s0, alpha = rng.uniform(0.0, 2.0, genes), rng.uniform(0.0, 2.0, genes), rng.uniform(0.0, 4.0, genes)
    return tuple(jnp.asarray(v, dtype) for v in (u0, s0, alpha, beta, gamma, tau))


def test_hand_written_gradient_equals_autodiff(x64):
    """solve_constant_vjp: the same values as solve_constant, and gradients equal to automatic
    differentiation of the formula (float64) in every regime of gamma - beta, for per-gene arguments
    broadcast against per-cell durations."""
    rng = np.random.default_rng(5)
    args = _vjp_cases(rng, jnp.float64)
    w_u, w_s = (jnp.asarray(rng.normal(size=(9, len(_X_VALUES)))) for _ in range(2))

    def loss(f):
        return lambda *a: jnp.sum(w_u * f(*a)[0]) + jnp.sum(w_s * f(*a)[1])

    for got, want in zip(solve_constant_vjp(*args), solve_constant(*args)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    auto = jax.grad(loss(solve_constant), argnums=range(6))(*args)
    hand = jax.grad(loss(solve_constant_vjp), argnums=range(6))(*args)
    for name, a, h in zip(_NAMES, auto, hand):
        assert h.shape == a.shape and h.dtype == a.dtype, name
        scale = float(np.max(np.abs(np.asarray(a)))) + 1e-300
        np.testing.assert_allclose(np.asarray(h), np.asarray(a), rtol=1e-9, atol=1e-9 * scale, err_msg=name)


@pytest.mark.parametrize("mode", GAMMA_MODES)
def test_hand_written_gradient_matches_finite_differences(x64, mode):
    rng = np.random.default_rng(7)
    series = mode in ("near", "below_switchover")
    for _ in range(4):
        beta = rng.uniform(0.5, 8.0)
        p = jnp.asarray([rng.uniform(0.1, 2.0), rng.uniform(0.1, 2.0), rng.uniform(0.2, 4.0), beta,
                         _gamma_for(mode, beta, rng), rng.uniform(0.1, 1.5)], jnp.float64)
        for which in (0, 1):
            f = lambda q: solve_constant_vjp(*q)[which]  # noqa: E731
            grad, fd = np.asarray(jax.grad(f)(p)), _central_fd(f, p)
            for name, g, d in zip(_NAMES, grad, fd):
                abs_tol = 1e-7 if series and name in ("beta", "gamma") else 1e-9
                assert g == pytest.approx(d, rel=1e-6, abs=abs_tol), (name, mode, which)


def test_hand_written_gradient_in_single_precision(x64):
    """float32, as in training: finite, and within single-precision rounding of the float64 gradient."""
    rng = np.random.default_rng(11)
    args64 = _vjp_cases(rng, jnp.float64)
    args32 = tuple(a.astype(jnp.float32) for a in args64)
    loss = lambda *a: jnp.sum(solve_constant_vjp(*a)[1] ** 2 + solve_constant_vjp(*a)[0] ** 2)  # noqa: E731
    g32 = jax.jit(jax.grad(loss, argnums=range(6)))(*args32)
    g64 = jax.grad(loss, argnums=range(6))(*args64)
    for name, a, b in zip(_NAMES, g32, g64):
        assert a.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(a))), name
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-3, atol=1e-4 * (np.max(np.abs(b)) + 1e-12), err_msg=name)
