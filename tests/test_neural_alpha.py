"""The neural transcription of scripts/neural_alpha.py: its Diffrax solve against the closed form, its
gradient against finite differences, and its training and time assignment on a known trajectory."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from helpers import load_script

from velode.model._closed_form import solve_constant

N_GENES = 5


def _rates(na, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    beta, gamma = f(rng.uniform(1.0, 20.0, N_GENES)), f(rng.uniform(0.5, 10.0, N_GENES))
    alpha = f(rng.uniform(0.5, 5.0, N_GENES))
    alpha0 = f(rng.uniform(0.01, 0.2, N_GENES))
    rates = na.Rates(beta, gamma, f(rng.uniform(0.5, 2.0, N_GENES)), alpha0 / beta, alpha0 / gamma)
    return rates, alpha


def test_without_a_switch_the_solve_is_the_closed_form():
    """Transcription on throughout (switch beyond the clock), MLP at its start: constant alpha (1 + basal)."""
    na = load_script("scripts/neural_alpha.py")
    rates, alpha = _rates(na)
    tr = na.NeuralTranscription(alpha, jnp.full(N_GENES, 10.0), key=jax.random.PRNGKey(0))
    a_eff = alpha * (1.0 + jax.nn.softplus(na.MLP_BASAL))
    np.testing.assert_allclose(tr(0.3), a_eff, rtol=1e-6)
    n_grid = 256
    ug, sg = na.solve_grid(tr, rates, n_grid)
    ts = jnp.linspace(0.0, 1.0, n_grid + 1)[:, None]
    u, s = solve_constant(rates.u0, rates.s0, a_eff, rates.beta, rates.gamma, ts)
    np.testing.assert_allclose(ug, u, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sg, s, rtol=1e-4, atol=1e-6)
    # between grid points: linear interpolation, accurate to O(h^2) of the rates' time scales
    t = jnp.asarray(np.random.default_rng(1).uniform(0, 1, 50), jnp.float32)
    u, s = solve_constant(rates.u0, rates.s0, a_eff, rates.beta, rates.gamma, t[:, None])
    np.testing.assert_allclose(na.at_times(sg, t), s, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(na.velocity(tr, rates, t, n_grid), rates.beta * u - rates.gamma * s, rtol=5e-3,
                               atol=1e-4)


def test_with_a_switch_the_solve_is_piecewise_closed_form():
    """A sharp switch at t_sw: induction before it, repression from the switch state after it."""
    na = load_script("scripts/neural_alpha.py")
    rates, alpha = _rates(na, seed=3)
    sw = jnp.asarray([0.2, 0.35, 0.5, 0.65, 0.8], jnp.float32)
    tr = na.NeuralTranscription(alpha, sw, width=1e-4, key=jax.random.PRNGKey(0))
    n_grid = 2000
    ug, sg = na.solve_grid(tr, rates, n_grid)
    # the basal transcription (3.4e-4 of alpha) stays on after the switch
    basal = alpha * jax.nn.softplus(na.MLP_BASAL)
    a_on = alpha + basal
    u_sw, s_sw = solve_constant(rates.u0, rates.s0, a_on, rates.beta, rates.gamma, sw)
    ts = jnp.linspace(0.0, 1.0, n_grid + 1)[:, None]
    on = ts < sw
    u, s = solve_constant(jnp.where(on, rates.u0, u_sw), jnp.where(on, rates.s0, s_sw), jnp.where(on, a_on, basal),
                          rates.beta, rates.gamma, jnp.where(on, ts, ts - sw))
    far = jnp.abs(ts - sw) > 5e-3  # away from the smoothed step itself
    np.testing.assert_allclose(np.where(far, ug, 0), np.where(far, u, 0), rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(np.where(far, sg, 0), np.where(far, s, 0), rtol=2e-3, atol=1e-4)


def test_gradient_through_the_solver_matches_finite_differences(x64):
    na = load_script("scripts/neural_alpha.py")
    rates, alpha = _rates(na, jnp.float64, seed=5)
    rng = np.random.default_rng(6)
    tr = na.NeuralTranscription(alpha, jnp.asarray(rng.uniform(0.3, 0.7, N_GENES)), width=0.05,
                                key=jax.random.PRNGKey(1))
    # a non-zero last layer, so every parameter of the MLP takes part
    last = tr.mlp.layers[-1]
    tr = eqx.tree_at(lambda m: m.mlp.layers[-1].weight, tr, jnp.asarray(rng.normal(0, 0.5, last.weight.shape)))
    t = jnp.asarray(rng.uniform(0, 1, 40))
    ms = jnp.asarray(rng.uniform(0, 1, (40, N_GENES)))
    mu = jnp.asarray(rng.uniform(0, 1, (40, N_GENES)))
    inv = jnp.ones(N_GENES, jnp.float64)
    params, static = eqx.partition(tr, eqx.is_inexact_array)

    @jax.jit
    def f(p):
        return na.reconstruction(eqx.combine(p, static), rates, t, ms, mu, inv, inv, 64)

    grad = jax.grad(f)(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    gleaves = jax.tree_util.tree_leaves(grad)
    checked = 0
    for i, (leaf, g) in enumerate(zip(leaves, gleaves)):
        flat = np.asarray(leaf).ravel()
        for j in rng.choice(flat.size, min(3, flat.size), replace=False):
            eps = 1e-6
            bump = lambda d: jax.tree_util.tree_unflatten(  # noqa: E731
                treedef, [jnp.asarray((flat + d * (np.arange(flat.size) == j)).reshape(leaf.shape)) if k == i else x
                          for k, x in enumerate(leaves)])
            fd = (f(bump(eps)) - f(bump(-eps))) / (2 * eps)
            np.testing.assert_allclose(np.asarray(g).ravel()[j], fd, rtol=1e-5, atol=1e-9)
            checked += 1
    assert checked >= 3 * 5  # a_g, t_sw and the MLP's layers
    assert any(np.abs(np.asarray(g)).max() > 0 for g in gleaves[2:])  # the MLP gets a gradient


def test_training_reduces_the_loss_and_times_are_recovered():
    """Data from a pulse that velode's single switch cannot express: the MLP fits it; best_times finds the clock."""
    na = load_script("scripts/neural_alpha.py")
    rates, alpha = _rates(na, seed=8)
    truth = na.NeuralTranscription(alpha, jnp.full(N_GENES, 0.6), key=jax.random.PRNGKey(2))
    # the truth: velode's switch at 0.6, then a second wave of transcription of every gene late in the clock
    pulse = lambda t: 4.0 * jnp.exp(-((t - 0.85) / 0.05) ** 2)  # noqa: E731

    class Pulsed(eqx.Module):
        inner: object

        def __call__(self, t):
            return self.inner(t) + self.inner.alpha * pulse(t)

    n_grid = 128
    t = jnp.asarray(np.random.default_rng(9).uniform(0, 1, 300), jnp.float32)
    ug, sg = na.solve_grid(Pulsed(truth), rates, n_grid)
    mu, ms = rates.scale * na.at_times(ug, t), na.at_times(sg, t)
    inv_s, inv_u = 1.0 / ms.std(0), 1.0 / mu.std(0)
    start = na.NeuralTranscription(alpha, jnp.full(N_GENES, 0.6), key=jax.random.PRNGKey(3))
    before = float(na.reconstruction(start, rates, t, ms, mu, inv_s, inv_u, n_grid))
    fitted, losses = na.train(start, rates, t, ms, mu, inv_s, inv_u, steps=200, lr=2e-2, n_grid=n_grid,
                              log=lambda _: None)
    after = float(na.reconstruction(fitted, rates, t, ms, mu, inv_s, inv_u, n_grid))
    assert np.isfinite(losses).all()
    assert after < 0.2 * before
    # on the true trajectories each cell's best grid time is its own time
    t_best = na.best_times(Pulsed(truth), rates, ms, mu, inv_s, inv_u, n_grid)
    assert np.median(np.abs(np.asarray(t_best) - np.asarray(t))) <= 1.0 / n_grid
