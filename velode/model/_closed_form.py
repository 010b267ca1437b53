"""Exact solution of the linear splicing system with constant transcription.

du/dt = a - beta*u,  ds/dt = beta*u - gamma*s, from (u0, s0) over a duration tau >= 0:
  u = u0 e^{-beta tau} + a/beta (1 - e^{-beta tau})
  s = s0 e^{-gamma tau} + a/gamma (1 - e^{-gamma tau}) + (a - beta u0) (e^{-gamma tau} - e^{-beta tau}) / (gamma - beta)
"""

import jax.numpy as jnp


def solve_constant(u0, s0, alpha, beta, gamma, tau):
    """State (u, s) after a duration tau at constant rates; all arguments broadcast together.

    The divided difference (e^{-gamma tau} - e^{-beta tau}) / (gamma - beta) is computed as
    e^{-min(beta, gamma) tau} * expm1(-|gamma - beta| tau) / |gamma - beta|: no factor overflows
    however large the rates or the duration, and the symmetric series -tau e^{-(beta + gamma) tau / 2} sinh(y) / y takes over as gamma -> beta, so
    values and gradients stay finite and accurate there.
    """
    d = jnp.abs(gamma - beta)
    tiny = d < 1e-6
    d_safe = jnp.where(tiny, 1.0, d)
    direct = jnp.exp(-jnp.minimum(beta, gamma) * tau) * (jnp.expm1(-d_safe * tau) / d_safe)
    # Near gamma = beta: diff = -tau e^{-c tau} sinh(y) / y with c the mean rate and y = (gamma - beta) tau / 2,
    # smooth and even in gamma - beta (no kink from the absolute value or the minimum).
    y = 0.5 * (gamma - beta) * tau
    series = -tau * jnp.exp(-0.5 * (beta + gamma) * tau) * (1.0 + y * y / 6.0)
    diff = jnp.where(tiny, series, direct)
    eb = jnp.exp(-beta * tau)
    eg = jnp.exp(-gamma * tau)
    u = u0 * eb - alpha / beta * jnp.expm1(-beta * tau)
    s = s0 * eg - alpha / gamma * jnp.expm1(-gamma * tau) + (alpha - beta * u0) * diff
    return u, s
