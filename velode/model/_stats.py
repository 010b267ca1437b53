"""Cost statistics of a Diffrax solver that the solution itself does not report."""

import diffrax


def vf_evals_per_step(solver) -> int | None:
    """Vector-field evaluations per step (accepted or rejected) of an explicit solver; ``None`` otherwise.

    Explicit Runge-Kutta: one per stage of the Butcher tableau, less one when the last stage is reused as
    the first of the next step (FSAL). Euler: one. Implicit solvers: the Newton iterations vary, so no
    fixed count is given.
    """
    if solver is None:
        return None
    if isinstance(solver, diffrax.Euler):
        return 1
    tableau = getattr(solver, "tableau", None)
    if tableau is None or getattr(tableau, "implicit", False):
        return None
    stages = len(tableau.c) + 1
    return stages - 1 if tableau.fsal else stages


def num_vf_evals(solver, num_steps: int) -> int | None:
    """Total vector-field evaluations over ``num_steps`` steps (see :func:`vf_evals_per_step`)."""
    per = vf_evals_per_step(solver)
    return None if per is None else int(per * num_steps)
