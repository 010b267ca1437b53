"""Evaluating the kinetics at each cell's latent time: closed form, or a Diffrax solve on a time grid.

The ODE of all genes is solved once over [0, t_end] (state: (u, s), each (genes,)) and saved on a
uniform grid; each cell-gene value is then a cubic Hermite interpolation between grid points, with
the slopes taken from the vector field itself (fourth-order accurate in the grid spacing). A
per-gene switch of transcription would put a kink in the joint solve, so each phase is solved from
its own start: induction from t = 0, repression from each gene's switch time (time shifted, so both
solves are smooth).
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from ._closed_form import solve_constant
from ._kinetics import AbstractKinetics, vector_field


class Integrator(eqx.Module):
    """How the kinetics are integrated. ``solver=None`` means the exact closed form."""

    solver: diffrax.AbstractSolver | None = None
    stepsize_controller: diffrax.AbstractStepSizeController = diffrax.ConstantStepSize()
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint()
    max_steps: int = eqx.field(static=True, default=4096)
    dt0: float | None = eqx.field(static=True, default=None)
    n_grid: int = eqx.field(static=True, default=129)

    @property
    def analytic(self) -> bool:
        return self.solver is None


class SolveInfo(eqx.Module):
    """Whether every solve succeeded, and the solver's step counts (summed over phases)."""

    ok: jax.Array
    num_steps: jax.Array
    num_accepted_steps: jax.Array
    num_rejected_steps: jax.Array


def _no_info():
    zero = jnp.zeros((), jnp.int32)
    return SolveInfo(jnp.asarray(True), zero, zero, zero)


class _Grid(eqx.Module):
    h: float
    u: jax.Array  # (grid, genes)
    s: jax.Array
    du: jax.Array
    ds: jax.Array


def _solve_on_grid(integrator: Integrator, u0, s0, args, t_end: float):
    ts = jnp.linspace(0.0, t_end, integrator.n_grid)
    dt0 = integrator.dt0
    if dt0 is None and isinstance(integrator.stepsize_controller, diffrax.ConstantStepSize):
        dt0 = t_end / (integrator.n_grid - 1)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        integrator.solver,
        t0=0.0,
        t1=t_end,
        dt0=dt0,
        y0=(u0, s0),
        args=args,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=integrator.stepsize_controller,
        adjoint=integrator.adjoint,
        max_steps=integrator.max_steps,
        throw=False,
    )
    u, s = sol.ys
    du, ds = vector_field(None, (u, s), args)
    ok = (sol.result == diffrax.RESULTS.successful) & jnp.all(jnp.isfinite(u)) & jnp.all(jnp.isfinite(s))
    info = SolveInfo(
        ok,
        jnp.asarray(sol.stats["num_steps"], jnp.int32),
        jnp.asarray(sol.stats["num_accepted_steps"], jnp.int32),
        jnp.asarray(sol.stats["num_rejected_steps"], jnp.int32),
    )
    # Failed solves fill ys with inf; keep the arithmetic finite so the failure is reported, not NaN'd.
    clean = lambda a: jnp.where(jnp.isfinite(a), a, 0.0)  # noqa: E731
    return _Grid(t_end / (integrator.n_grid - 1), clean(u), clean(s), clean(du), clean(ds)), info


def _hermite(grid: _Grid, q):
    """Values (u, s) at query times q (rows, genes), each gene reading its own column of the grid."""
    n = grid.u.shape[0]
    x = jnp.clip(q / grid.h, 0.0, n - 1.0)
    k = jnp.minimum(jnp.floor(jax.lax.stop_gradient(x)), n - 2).astype(jnp.int32)
    th = x - k
    th2, th3 = th * th, th * th * th
    h00, h10, h01, h11 = 2 * th3 - 3 * th2 + 1, th3 - 2 * th2 + th, -2 * th3 + 3 * th2, th3 - th2
    take = lambda a, idx: jnp.take_along_axis(a, idx, axis=0)  # noqa: E731

    def interp(y, dy):
        return h00 * take(y, k) + h10 * grid.h * take(dy, k) + h01 * take(y, k + 1) + h11 * grid.h * take(dy, k + 1)

    return interp(grid.u, grid.du), interp(grid.s, grid.ds)


def evaluate(kinetics: AbstractKinetics, t, integrator: Integrator, t_end: float):
    """(u, s) of every gene at times t (cells, 1) or (cells, genes); returns (u, s, SolveInfo).

    ``t_end`` bounds the times asked for (latent time 1 plus the projection horizon).
    """
    alpha, beta, gamma = kinetics.alpha, kinetics.beta, kinetics.gamma
    u0, s0 = kinetics.u0, kinetics.s0
    t_sw = kinetics.switch_time()
    if integrator.analytic:
        if t_sw is None:
            u, s = solve_constant(u0, s0, alpha, beta, gamma, t)
            return u, s, _no_info()
        u1, s1 = solve_constant(u0, s0, alpha, beta, gamma, jnp.minimum(t, t_sw))
        u, s = solve_constant(u1, s1, 0.0, beta, gamma, jnp.maximum(t - t_sw, 0.0))
        return u, s, _no_info()

    grid_on, info_on = _solve_on_grid(integrator, u0, s0, (alpha, beta, gamma), t_end)
    t = jnp.broadcast_to(t, t.shape[:-1] + (kinetics.n_genes,))
    if t_sw is None:
        u, s = _hermite(grid_on, t)
        return u, s, info_on
    u_sw, s_sw = _hermite(grid_on, t_sw[None, :])
    grid_off, info_off = _solve_on_grid(integrator, u_sw[0], s_sw[0], (jnp.zeros_like(alpha), beta, gamma), t_end)
    u_a, s_a = _hermite(grid_on, jnp.minimum(t, t_sw))
    u_b, s_b = _hermite(grid_off, jnp.maximum(t - t_sw, 0.0))
    on = t < t_sw
    info = SolveInfo(
        info_on.ok & info_off.ok,
        info_on.num_steps + info_off.num_steps,
        info_on.num_accepted_steps + info_off.num_accepted_steps,
        info_on.num_rejected_steps + info_off.num_rejected_steps,
    )
    return jnp.where(on, u_a, u_b), jnp.where(on, s_a, s_b), info
