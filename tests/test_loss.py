"""Loss terms on cases with a known answer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from velode import _loss


def test_time_uniformity_is_zero_for_evenly_spread_times_and_ignores_padding():
    n = 50
    t = (jnp.arange(n) + 0.5) / n
    perm = jax.random.permutation(jax.random.PRNGKey(0), n)
    assert float(_loss.time_uniformity(t[perm], jnp.ones(n))) == pytest.approx(0.0, abs=1e-12)
    padded = jnp.concatenate([t[perm], jnp.asarray([0.9, 0.1, 0.3])])
    mask = jnp.concatenate([jnp.ones(n), jnp.zeros(3)])
    assert float(_loss.time_uniformity(padded, mask)) == pytest.approx(0.0, abs=1e-12)


def test_time_uniformity_of_a_collapsed_clock():
    # every cell at 0: mean of q^2 over the uniform quantiles, -> 1/3 for many cells
    n = 1000
    value = float(_loss.time_uniformity(jnp.zeros(n), jnp.ones(n)))
    q = (np.arange(n) + 0.5) / n
    assert value == pytest.approx(np.mean(q**2), rel=1e-5)
    # the gradient pushes the latest-ranked cells up, i.e. it spreads the clock
    t = jnp.linspace(0.0, 0.1, 20)
    g = jax.grad(_loss.time_uniformity)(t, jnp.ones(20))
    assert np.all(np.isfinite(g)) and float(g[-1]) < 0 < float(-g[-1])
