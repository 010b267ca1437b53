"""Exact solution of the linear splicing system with constant transcription.

du/dt = a - beta*u,  ds/dt = beta*u - gamma*s, from (u0, s0) over a duration tau >= 0:
  u = u0 e^{-beta tau} + a/beta (1 - e^{-beta tau})
  s = s0 e^{-gamma tau} + a/gamma (1 - e^{-gamma tau}) + (a - beta u0) (e^{-gamma tau} - e^{-beta tau}) / (gamma - beta)
"""

import jax.numpy as jnp


def solve_constant(u0, s0, alpha, beta, gamma, tau):
    """State (u, s) after a duration tau at constant rates; all arguments broadcast together.

    Three transcendental evaluations per entry: expm1(-beta tau), expm1(-gamma tau) and
    expm1(-|gamma - beta| tau). The divided difference (e^{-gamma tau} - e^{-beta tau}) / (gamma - beta)
    is e^{-min(beta, gamma) tau} * expm1(-|gamma - beta| tau) / |gamma - beta|, in which no factor
    overflows however large the rates or the duration; where |gamma - beta| tau is small (equal or
    nearly equal rates, or a short duration) a Taylor series in the signed (gamma - beta) tau takes
    over, so values and gradients stay finite, accurate and smooth there. The switch is on the
    dimensionless (gamma - beta) tau, not on gamma - beta alone: the series is accurate only while
    that product is small, whatever the rates and the duration.
    """
    z = gamma - beta
    d = jnp.abs(z)
    x = z * tau
    tiny = jnp.abs(x) < 1e-6  # truncation of the series below: |x|^3 / 24 < 1e-19, relative
    d_safe = jnp.where(tiny, 1.0, d)  # not tiny: d > 0
    ebm = jnp.expm1(-beta * tau)
    egm = jnp.expm1(-gamma * tau)
    eb = 1.0 + ebm
    eg = 1.0 + egm
    x = jnp.where(tiny, x, 0.0)  # no overflow (nor NaN gradient) from the branch not taken
    series = -tau * (1.0 - 0.5 * x + x * x / 6.0)  # expm1(-z tau) / z, times e^{-beta tau} below
    ratio = jnp.where(tiny, series, jnp.expm1(-d_safe * tau) / d_safe)
    diff = jnp.where(tiny | (gamma > beta), eb, eg) * ratio
    u = u0 * eb - alpha / beta * ebm
    s = s0 * eg - alpha / gamma * egm + (alpha - beta * u0) * diff
    return u, s
