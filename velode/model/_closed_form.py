"""Exact solution of the linear splicing system with constant transcription.

du/dt = a - beta*u,  ds/dt = beta*u - gamma*s, from (u0, s0) over a duration tau >= 0:
  u = u0 e^{-beta tau} + a/beta (1 - e^{-beta tau})
  s = s0 e^{-gamma tau} + a/gamma (1 - e^{-gamma tau}) + (a - beta u0) (e^{-gamma tau} - e^{-beta tau}) / (gamma - beta)

:func:`solve_constant` is differentiable in every mode. :func:`solve_constant_vjp` returns the same
values with its reverse-mode derivative written out (what training uses): it reuses the forward
pass's exponentials instead of differentiating each operation of the formula, which roughly halves
the cost of a gradient; it has no forward-mode derivative.
"""

import jax
import jax.numpy as jnp


def state(u0, s0, alpha, beta, gamma, tau):
    """(u, s) and the pieces the derivatives reuse: expm1(-beta tau), expm1(-gamma tau) and the divided
    difference D = (e^{-gamma tau} - e^{-beta tau}) / (gamma - beta)."""
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
    return u, s, ebm, egm, diff


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
    u, s, *_ = state(u0, s0, alpha, beta, gamma, tau)
    return u, s


def _sum_to(g, shape):
    """``g`` summed over the axes along which an argument of shape ``shape`` was broadcast to it."""
    shape = tuple(shape)
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    return (jnp.sum(g, axis=axes) if axes else g).reshape(shape)


@jax.custom_vjp
def solve_constant_vjp(u0, s0, alpha, beta, gamma, tau):
    """:func:`solve_constant` (the same values) with a hand-written reverse-mode derivative."""
    u, s, *_ = state(u0, s0, alpha, beta, gamma, tau)
    return u, s


def _vjp_fwd(u0, s0, alpha, beta, gamma, tau):
    u, s, ebm, egm, diff = state(u0, s0, alpha, beta, gamma, tau)
    return (u, s), ((u0, s0, alpha, beta, gamma, tau), u, s, ebm, egm, diff)


def weighted_partials(u0, s0, alpha, beta, gamma, tau, u, s, ebm, egm, diff, cu, cs):
    """The partial derivatives of (u, s) in closed form, weighted by the cotangents (cu, cs): for each
    argument x of :func:`solve_constant`, cu du/dx + cs ds/dx, entry by entry (nothing summed).

    With eb = e^{-beta tau}, eg = e^{-gamma tau}, D the divided difference and c = alpha - beta u0:
      du/du0 = eb, du/dalpha = (1 - eb)/beta, du/dbeta = -tau eb u0 + alpha/beta (tau eb - (1 - eb)/beta),
      ds/ds0 = eg, ds/du0 = -beta D, ds/dalpha = (1 - eg)/gamma + D,
      ds/dbeta = c dD/dbeta - u0 D, ds/dgamma = -tau eg s0 + alpha/gamma (tau eg - (1 - eg)/gamma) + c dD/dgamma,
      d(u, s)/dtau = the vector field (alpha - beta u, beta u - gamma s).
    dD/dbeta = (tau eb + D) / (gamma - beta) = tau^2 eb psi(x), x = (gamma - beta) tau and
    psi(x) = (e^{-x} - 1 + x) / x^2, from its Taylor series where |x| < 1/2 (so nothing cancels) and
    as (eg - eb + x eb) / (gamma - beta)^2 elsewhere (no factor overflows); dD/dgamma = -tau D - dD/dbeta.
    ``u, s, ebm, egm, diff`` are what the forward pass computed (:func:`state`).
    """
    eb, eg = 1.0 + ebm, 1.0 + egm
    z = gamma - beta
    x = z * tau
    small = jnp.abs(x) < 0.5
    xs = jnp.where(small, x, 0.0)
    # sum_k (-x)^k / (k + 2)!, k <= 7: truncation below x^8 / 10! < 1e-8 of psi(0) = 1/2.
    psi = 0.5 + xs * (-1 / 6 + xs * (1 / 24 + xs * (-1 / 120 + xs * (1 / 720 + xs * (-1 / 5040 + xs * (
        1 / 40320 - xs / 362880))))))
    z_safe = jnp.where(small, 1.0, z)
    d_beta = jnp.where(small, tau * tau * eb * psi, (eg - eb + x * eb) / (z_safe * z_safe))
    d_gamma = -tau * diff - d_beta
    c = alpha - beta * u0
    return (
        cu * eb - cs * (beta * diff),
        cs * eg,
        cs * (diff - egm / gamma) - cu * (ebm / beta),
        cu * (alpha / beta * (tau * eb + ebm / beta) - tau * eb * u0) + cs * (c * d_beta - u0 * diff),
        cs * (alpha / gamma * (tau * eg + egm / gamma) - tau * s0 * eg + c * d_gamma),
        cu * (alpha - beta * u) + cs * (beta * u - gamma * s),
    )


def _vjp_bwd(res, cotangents):
    """:func:`weighted_partials`, each summed to the shape of its argument."""
    args, u, s, ebm, egm, diff = res
    grads = weighted_partials(*args, u, s, ebm, egm, diff, *cotangents)
    return tuple(_sum_to(g, jnp.shape(a)).astype(jnp.result_type(a)) for g, a in zip(grads, args))


solve_constant_vjp.defvjp(_vjp_fwd, _vjp_bwd)
