"""Exact solution of the linear splicing system with constant transcription.

du/dt = a - beta*u,  ds/dt = beta*u - gamma*s, from (u0, s0) over a duration tau >= 0.
"""

import jax.numpy as jnp


def _exp_diff(beta, gamma, tau):
    """(e^{-gamma tau} - e^{-beta tau}) / (gamma - beta), finite (and with finite gradients) at gamma == beta.

    Written as -tau * e^{-beta tau} * phi((gamma - beta) tau) with phi(d) = (1 - e^{-d}) / d, phi(0) = 1.
    """
    d = (gamma - beta) * tau
    small = jnp.abs(d) < 1e-4
    d_safe = jnp.where(small, 1.0, d)
    phi = jnp.where(small, 1.0 - d / 2 + d * d / 6, -jnp.expm1(-d_safe) / d_safe)
    return -tau * jnp.exp(-beta * tau) * phi


def solve_constant(u0, s0, alpha, beta, gamma, tau):
    """State (u, s) after a duration tau at constant rates; all arguments broadcast together."""
    eb = jnp.exp(-beta * tau)
    eg = jnp.exp(-gamma * tau)
    u = u0 * eb + alpha / beta * (1.0 - eb)
    s = s0 * eg + alpha / gamma * (1.0 - eg) + (alpha - beta * u0) * _exp_diff(beta, gamma, tau)
    return u, s
