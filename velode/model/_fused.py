"""The training loss of switching kinetics in closed form, with its gradient computed in the same pass.

Reverse-mode differentiation of the reconstruction loss over a chunk of cells x genes reads and writes
dozens of cells x genes arrays: the forward pass is recomputed, each argument of the closed form gets
its own cotangent array, and each is then summed over cells or genes on its own. That backward pass
costs about five forward passes. Here one pass over each entry computes the state, the residual and
the partial derivatives of the squared residual, and sums them at once into what the gradient needs:
per gene (rates, starting state, switch state, switch and onset times, scale of u), per cell (its
latent time) and, with cell-specific transcription, the rank-k factors. The reverse pass then only
scales these sums by the incoming cotangent. The loss is the same function of the same parameters:
:func:`reconstruction_sum` agrees with differentiating the plain formula (tests/test_gradients.py).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._closed_form import solve_constant, state, weighted_partials
from ._kinetics import AbstractKinetics


class GeneTerms(NamedTuple):
    """Per-gene quantities the entries are computed from (each (genes,)); differentiable functions of the kinetics."""

    u0: jax.Array
    s0: jax.Array
    alpha: jax.Array
    beta: jax.Array
    gamma: jax.Array
    t_sw: jax.Array
    t_on: jax.Array  # zeros without an onset (then unused)
    u_sw: jax.Array  # state at the switch with transcription alpha
    s_sw: jax.Array
    u_off: jax.Array  # state at the switch with no transcription (cell-specific alpha only; else unused)
    s_off: jax.Array
    scale: jax.Array


def supported(kinetics: AbstractKinetics) -> bool:
    """Whether :func:`reconstruction_sum` applies: switching kinetics (with or without an onset)."""
    return kinetics.switch_time() is not None


def gene_terms(kinetics: AbstractKinetics, modulated: bool) -> GeneTerms:
    """The per-gene quantities of ``kinetics`` (computed once per step, outside the pass over the cells)."""
    kin = kinetics
    t_sw = kin.switch_time()
    t_on = kin.onset_time()
    dur = t_sw if t_on is None else t_sw - t_on
    u_sw, s_sw = solve_constant(kin.u0, kin.s0, kin.alpha, kin.beta, kin.gamma, dur)
    if modulated:  # the switch state is affine in alpha: the part without transcription, and alpha's part
        u_off, s_off = solve_constant(kin.u0, kin.s0, 0.0, kin.beta, kin.gamma, dur)
    else:
        u_off, s_off = jnp.zeros_like(u_sw), jnp.zeros_like(s_sw)
    return GeneTerms(kin.u0, kin.s0, kin.alpha, kin.beta, kin.gamma, t_sw,
                     jnp.zeros_like(t_sw) if t_on is None else t_on, u_sw, s_sw, u_off, s_off, kin.scale)


def _pass(onset: bool, bound: float | None, g: GeneTerms, t, z, loadings, obs_u, obs_s, mask, inv_u, inv_s, w,
          *, grads: bool):
    """The chunk's sum of mask * w * (squared scaled residuals of u and s), and, with ``grads``, its gradient."""
    tc = t[:, None]
    on = tc < g.t_sw
    if onset:
        started = tc > g.t_on
        t_ind = jnp.maximum(tc - g.t_on, 0.0)
    else:
        t_ind = tc
    if bound is not None:  # the cell factor of model._model.modulation, with tanh kept for its derivative
        th = jnp.tanh(z @ loadings / bound)
        mult = jnp.exp(bound * th)
        a_on = g.alpha * mult
        u_sw = g.u_off + mult * (g.u_sw - g.u_off)
        s_sw = g.s_off + mult * (g.s_sw - g.s_off)
    else:
        a_on, u_sw, s_sw = g.alpha, g.u_sw, g.s_sw
    u0 = jnp.where(on, g.u0, u_sw)
    s0 = jnp.where(on, g.s0, s_sw)
    alpha = jnp.where(on, a_on, 0.0)
    tau = jnp.where(on, t_ind, tc - g.t_sw)
    u, s, ebm, egm, diff = state(u0, s0, alpha, g.beta, g.gamma, tau)
    mw = mask[:, None] * w
    ru = (g.scale * u - obs_u) * inv_u
    rs = (s - obs_s) * inv_s
    value = jnp.sum(mw * (ru * ru + rs * rs))
    if not grads:
        return value
    cu_scaled = 2.0 * mw * ru * inv_u  # d value / d(scale * u)
    cu = cu_scaled * g.scale
    cs = 2.0 * mw * rs * inv_s
    d_u0, d_s0, d_a, d_beta, d_gamma, d_tau = weighted_partials(
        u0, s0, alpha, g.beta, g.gamma, tau, u, s, ebm, egm, diff, cu, cs)
    cols = lambda x: jnp.sum(x, axis=0)  # noqa: E731
    off_u = jnp.where(on, 0.0, d_u0)
    off_s = jnp.where(on, 0.0, d_s0)
    a_part = jnp.where(on, d_a, 0.0)
    zero = jnp.zeros_like(g.u0)
    d_z = d_loadings = None
    if bound is not None:
        d_usw, d_ssw = cols(off_u * mult), cols(off_s * mult)
        d_uoff, d_soff = cols(off_u) - d_usw, cols(off_s) - d_ssw
        d_alpha = cols(a_part * mult)
        d_mult = a_part * g.alpha + off_u * (g.u_sw - g.u_off) + off_s * (g.s_sw - g.s_off)
        d_y = d_mult * mult * (1.0 - th * th)  # d mult / d(z . w) = mult (1 - tanh^2)
        d_z = d_y @ loadings.T
        d_loadings = z.T @ d_y
    else:
        d_usw, d_ssw, d_uoff, d_soff = cols(off_u), cols(off_s), zero, zero
        d_alpha = cols(a_part)
    tau_off = jnp.where(on, 0.0, d_tau)
    if onset:
        tau_on = jnp.where(on & started, d_tau, 0.0)
        d_t = jnp.sum(tau_on + tau_off, axis=1)
        d_ton = -cols(tau_on)
    else:
        d_t = jnp.sum(d_tau, axis=1)
        d_ton = zero
    d_g = GeneTerms(cols(jnp.where(on, d_u0, 0.0)), cols(jnp.where(on, d_s0, 0.0)), d_alpha, cols(d_beta),
                    cols(d_gamma), -cols(tau_off), d_ton, d_usw, d_ssw, d_uoff, d_soff, cols(cu_scaled * u))
    return value, (d_g, d_t, d_z, d_loadings)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _chunk(onset, bound, g, t, z, loadings, obs_u, obs_s, mask, inv_u, inv_s, w):
    return _pass(onset, bound, g, t, z, loadings, obs_u, obs_s, mask, inv_u, inv_s, w, grads=False)


def _chunk_fwd(onset, bound, g, t, z, loadings, obs_u, obs_s, mask, inv_u, inv_s, w):
    return _pass(onset, bound, g, t, z, loadings, obs_u, obs_s, mask, inv_u, inv_s, w, grads=True)  # residuals: d


def _chunk_bwd(onset, bound, d, ct):
    d_g, d_t, d_z, d_loadings = jax.tree_util.tree_map(lambda x: ct * x, d)
    return d_g, d_t, d_z, d_loadings, None, None, None, None, None, None


_chunk.defvjp(_chunk_fwd, _chunk_bwd)


def reconstruction_sum(g: GeneTerms, t, obs_u, obs_s, mask, inv_u, inv_s, w, *, onset: bool, modulator=None, z=None):
    """sum over the chunk's cells and genes of mask * w * (((scale u - obs_u) inv_u)^2 + ((s - obs_s) inv_s)^2).

    ``g``: :func:`gene_terms`; ``t`` (cells,) latent times; ``modulator`` and ``z`` (cells, rank): cell-specific
    transcription (``velode.model._model.CellModulator`` and its embedding of the chunk's cells). Its reverse-mode
    derivative is computed with the value (see the module's docstring).
    """
    if modulator is None:
        return _chunk(onset, None, g, t, None, None, obs_u, obs_s, mask, inv_u, inv_s, w)
    return _chunk(onset, modulator.bound, g, t, z, modulator.loadings, obs_u, obs_s, mask, inv_u, inv_s, w)
