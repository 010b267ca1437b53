"""Exact solution of the linear splicing system with constant transcription.

du/dt = a - beta*u,  ds/dt = beta*u - gamma*s, from (u0, s0) over a duration tau >= 0:
  u = u0 e^{-beta tau} + a/beta (1 - e^{-beta tau})
  s = s0 e^{-gamma tau} + a/gamma (1 - e^{-gamma tau}) + (a - beta u0) (e^{-gamma tau} - e^{-beta tau}) / (gamma - beta)
"""

import jax.numpy as jnp


def solve_constant(u0, s0, alpha, beta, gamma, tau):
    """State (u, s) after a duration tau at constant rates; all arguments broadcast together.

    Two transcendental evaluations per entry: e^{-beta tau} and expm1(-(gamma - beta) tau), from which
    e^{-gamma tau} and the divided difference follow; the divided difference stays accurate (and its
    gradient finite) as gamma -> beta.
    """
    d = gamma - beta
    tiny = jnp.abs(d) < 1e-6
    d_safe = jnp.where(tiny, 1.0, d)
    eb = jnp.exp(-beta * tau)
    em = jnp.expm1(-d * tau)
    eg = eb + eb * em
    diff = eb * jnp.where(tiny, tau * (0.5 * d * tau - 1.0), em / d_safe)  # (e^{-gamma tau} - e^{-beta tau}) / (gamma - beta)
    u = u0 * eb + alpha / beta * (1.0 - eb)
    s = s0 * eg + alpha / gamma * (1.0 - eg) + (alpha - beta * u0) * diff
    return u, s
