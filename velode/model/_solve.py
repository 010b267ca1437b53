"""Evaluating the kinetics at each cell's latent time: closed form, or a Diffrax solve on a time grid.

The ODE of all genes is solved once over [0, t_end] (state: (u, s), each (genes,)) and saved on a
uniform grid; each cell-gene value is then a cubic Hermite interpolation between grid points, with
the slopes taken from the vector field itself (fourth-order accurate in the grid spacing). A
per-gene switch of transcription would put a kink in the joint solve, so each phase is solved from
its own start: induction from t = 0, repression from each gene's switch time (time shifted, so both
solves are smooth). Implicit solvers integrate each gene as its own 2-dim system (vmapped over genes),
so their Newton steps factorise 2 x 2 blocks, not a dense Jacobian of the joint state.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from ._closed_form import solve_constant, solve_constant_vjp
from ._kinetics import AbstractKinetics, vector_field


class Integrator(eqx.Module):
    """How the kinetics are integrated. ``solver=None`` means the exact closed form."""

    solver: diffrax.AbstractSolver | None = None
    stepsize_controller: diffrax.AbstractStepSizeController = diffrax.ConstantStepSize()
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint()
    max_steps: int = eqx.field(static=True, default=4096)
    dt0: float | None = eqx.field(static=True, default=None)
    n_grid: int = eqx.field(static=True, default=129)
    # Solve each gene as its own 2-dim system (vmapped) rather than all genes as one state; None: only
    # for implicit solvers, which on the joint state would factorise a dense (2 genes)^2 Jacobian at
    # every step although the system is block-diagonal (2 x 2 per gene).
    per_gene: bool | None = eqx.field(static=True, default=None)

    @property
    def analytic(self) -> bool:
        return self.solver is None

    @property
    def solves_per_gene(self) -> bool:
        if self.per_gene is None:
            return isinstance(self.solver, diffrax.AbstractImplicitSolver)
        return self.per_gene


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
    u: jax.Array  # (grid, genes), or several grids stacked along the first axis
    s: jax.Array
    du: jax.Array
    ds: jax.Array
    n: int = eqx.field(static=True)  # points per grid


def _diffeqsolve(integrator: Integrator, y0, args, ts, t_end: float, dt0):
    return diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        integrator.solver,
        t0=0.0,
        t1=t_end,
        dt0=dt0,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=integrator.stepsize_controller,
        adjoint=integrator.adjoint,
        max_steps=integrator.max_steps,
        throw=False,
    )


def _solve_on_grid(integrator: Integrator, u0, s0, args, t_end: float):
    ts = jnp.linspace(0.0, t_end, integrator.n_grid)
    dt0 = integrator.dt0
    if dt0 is None and isinstance(integrator.stepsize_controller, diffrax.ConstantStepSize):
        dt0 = t_end / (integrator.n_grid - 1)
    if integrator.solves_per_gene:
        sol = jax.vmap(lambda y0, a: _diffeqsolve(integrator, y0, a, ts, t_end, dt0))((u0, s0), args)
        u, s = (y.T for y in sol.ys)  # (genes, grid) -> (grid, genes)
        succeeded = jnp.all(sol.result == diffrax.RESULTS.successful)
        # The counts of the gene that took most steps: the loop iterations the vmapped solve ran.
        slowest = jnp.argmax(sol.stats["num_steps"])
        stats = {k: sol.stats[k][slowest] for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")}
    else:
        sol = _diffeqsolve(integrator, (u0, s0), args, ts, t_end, dt0)
        u, s = sol.ys
        succeeded = sol.result == diffrax.RESULTS.successful
        stats = sol.stats
    du, ds = vector_field(None, (u, s), args)
    ok = succeeded & jnp.all(jnp.isfinite(u)) & jnp.all(jnp.isfinite(s))
    info = SolveInfo(
        ok,
        jnp.asarray(stats["num_steps"], jnp.int32),
        jnp.asarray(stats["num_accepted_steps"], jnp.int32),
        jnp.asarray(stats["num_rejected_steps"], jnp.int32),
    )
    # Failed solves fill ys with inf; keep the arithmetic finite so the failure is reported, not NaN'd.
    clean = lambda a: jnp.where(jnp.isfinite(a), a, 0.0)  # noqa: E731
    grid = _Grid(t_end / (integrator.n_grid - 1), clean(u), clean(s), clean(du), clean(ds), integrator.n_grid)
    return grid, info


def _hermite(grid: _Grid, q, offset=None):
    """Values (u, s) at query times q (rows, genes), each gene reading its own column of the grid.

    ``offset`` (rows, genes) of ints, if given, selects a block of a grid made of stacked grids.
    """
    n = grid.n
    x = jnp.clip(q / grid.h, 0.0, n - 1.0)
    k = jnp.minimum(jnp.floor(jax.lax.stop_gradient(x)), n - 2).astype(jnp.int32)
    th = x - k
    if offset is not None:
        k = k + offset
    th2, th3 = th * th, th * th * th
    h00, h10, h01, h11 = 2 * th3 - 3 * th2 + 1, th3 - 2 * th2 + th, -2 * th3 + 3 * th2, th3 - th2
    take = lambda a, idx: jnp.take_along_axis(a, idx, axis=0)  # noqa: E731

    def interp(y, dy):
        return h00 * take(y, k) + h10 * grid.h * take(dy, k) + h01 * take(y, k + 1) + h11 * grid.h * take(dy, k + 1)

    return interp(grid.u, grid.du), interp(grid.s, grid.ds)


def _stack(a: _Grid, b: _Grid) -> _Grid:
    cat = lambda x, y: jnp.concatenate([x, y], axis=0)  # noqa: E731
    return _Grid(a.h, cat(a.u, b.u), cat(a.s, b.s), cat(a.du, b.du), cat(a.ds, b.ds), a.n)


class Evaluator(eqx.Module):
    """The kinetics made ready to be read at any times in [0, t_end]: grids solved once per step."""

    kinetics: AbstractKinetics
    analytic: bool = eqx.field(static=True)
    grid: _Grid | None  # induction grid, with the repression grid stacked after it for switching kinetics
    info: SolveInfo

    def __call__(self, t, alpha_scale=None):
        """(u, s) at times t of shape (rows, 1) or (rows, genes); u in model (unscaled) units.

        ``alpha_scale`` (rows, genes), closed form only: a per-cell factor on the induction rate alpha.
        """
        kin = self.kinetics
        if alpha_scale is not None and not self.analytic:
            raise ValueError("a cell-specific transcription rate needs the closed form (solver=analytic)")
        alpha = kin.alpha if alpha_scale is None else kin.alpha * alpha_scale
        t_sw = kin.switch_time()
        t_on = kin.onset_time()
        # Time since the onset of induction (the state rests at its start before it).
        t_ind = t if t_on is None else jnp.maximum(t - t_on, 0.0)
        if self.analytic:
            if t_sw is None:
                return solve_constant_vjp(kin.u0, kin.s0, alpha, kin.beta, kin.gamma, t_ind)
            # One closed-form pass per entry: from the start before the switch, from the switch state after.
            dur = t_sw if t_on is None else t_sw - t_on
            u_sw, s_sw = solve_constant(kin.u0, kin.s0, kin.alpha, kin.beta, kin.gamma, dur)
            if alpha_scale is not None:
                # The state is affine in alpha: per gene, the switch state without transcription plus
                # the scaled contribution of alpha (no closed-form pass per cell and gene).
                u_0, s_0 = solve_constant(kin.u0, kin.s0, 0.0, kin.beta, kin.gamma, dur)
                u_sw = u_0 + alpha_scale * (u_sw - u_0)
                s_sw = s_0 + alpha_scale * (s_sw - s_0)
            on = t < t_sw
            return solve_constant_vjp(
                jnp.where(on, kin.u0, u_sw),
                jnp.where(on, kin.s0, s_sw),
                jnp.where(on, alpha, 0.0),
                kin.beta,
                kin.gamma,
                jnp.where(on, t_ind, t - t_sw),
            )
        t = jnp.broadcast_to(t, t.shape[:-1] + (kin.n_genes,))
        t_ind = jnp.broadcast_to(t_ind, t.shape)
        if t_sw is None:
            return _hermite(self.grid, t_ind)
        # One interpolation per entry: on the induction grid (time since onset) before the switch,
        # after it on the repression grid (stacked below) at the time since the switch.
        on = t < t_sw
        return _hermite(self.grid, jnp.where(on, t_ind, t - t_sw), jnp.where(on, 0, self.grid.n))


def prepare(kinetics: AbstractKinetics, integrator: Integrator, t_end: float) -> Evaluator:
    """Solve what must be solved (nothing for the closed form) so the kinetics can be read at any time."""
    if integrator.analytic:
        return Evaluator(kinetics, True, None, _no_info())
    alpha, beta, gamma = kinetics.alpha, kinetics.beta, kinetics.gamma
    grid_on, info = _solve_on_grid(integrator, kinetics.u0, kinetics.s0, (alpha, beta, gamma), t_end)
    t_sw = kinetics.switch_time()
    grid = grid_on
    if t_sw is not None:
        t_on = kinetics.onset_time()
        dur = t_sw if t_on is None else t_sw - t_on
        u_sw, s_sw = _hermite(grid_on, dur[None, :])
        grid_off, info_off = _solve_on_grid(
            integrator, u_sw[0], s_sw[0], (jnp.zeros_like(alpha), beta, gamma), t_end
        )
        info = SolveInfo(
            info.ok & info_off.ok,
            info.num_steps + info_off.num_steps,
            info.num_accepted_steps + info_off.num_accepted_steps,
            info.num_rejected_steps + info_off.num_rejected_steps,
        )
        grid = _stack(grid_on, grid_off)
    return Evaluator(kinetics, False, grid, info)


def evaluate(kinetics: AbstractKinetics, t, integrator: Integrator, t_end: float):
    """(u, s) of every gene at times t (cells, 1) or (cells, genes); returns (u, s, SolveInfo).

    ``t_end`` bounds the times asked for (latent time 1 plus the projection horizon).
    """
    ev = prepare(kinetics, integrator, t_end)
    u, s = ev(t)
    return u, s, ev.info
