"""Implicit solvers integrate each gene as its own 2-dim system: same answers as the closed form and
as the joint solve, without factorising a dense Jacobian of the joint state."""

import dataclasses

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_kinetics

from velode.model._solve import Integrator, evaluate

T_END = 1.05
N_GENES = 24
CLOSED = Integrator()


def _kvaerno5(**kw):
    # A fine grid, so that the Hermite interpolation between grid points adds little to the solver's error.
    return Integrator(diffrax.Kvaerno5(), diffrax.PIDController(rtol=1e-8, atol=1e-10), n_grid=513, **kw)


def _times(n_cells=64, seed=2, dtype=jnp.float64):
    t = np.random.default_rng(seed).uniform(0.0, T_END, n_cells)
    t[:2] = [0.0, T_END]
    return jnp.asarray(t[:, None], dtype)


_evaluate = eqx.filter_jit(lambda kin, t, integ: evaluate(kin, t, integ, T_END))


def test_implicit_solvers_solve_per_gene_by_default():
    assert _kvaerno5().solves_per_gene
    assert not _kvaerno5(per_gene=False).solves_per_gene
    assert not Integrator(diffrax.Tsit5()).solves_per_gene
    assert Integrator(diffrax.Tsit5(), per_gene=True).solves_per_gene


def test_kvaerno5_per_gene_matches_closed_form_and_joint_solve(x64):
    kin = random_kinetics("dynamical", N_GENES, seed=7, dtype=jnp.float64, beta=(0.5, 40.0), gamma=(0.5, 40.0))
    t = _times()
    u_ref, s_ref, _ = _evaluate(kin, t, CLOSED)
    u, s, info = _evaluate(kin, t, _kvaerno5())
    assert bool(info.ok)
    assert 0 < int(info.num_steps) == int(info.num_accepted_steps) + int(info.num_rejected_steps) <= 2 * 4096
    np.testing.assert_allclose(np.asarray(u), np.asarray(u_ref), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(s), np.asarray(s_ref), rtol=1e-6, atol=1e-7)
    # The joint (2 x genes) solve, as implicit solvers ran before: the same values, to the tolerance.
    u_j, s_j, info_j = _evaluate(kin, t, _kvaerno5(per_gene=False))
    assert bool(info_j.ok)
    np.testing.assert_allclose(np.asarray(s), np.asarray(s_j), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(u), np.asarray(u_j), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_kvaerno5_gradient_matches_closed_form(x64):
    kin = random_kinetics("dynamical", 6, seed=3, dtype=jnp.float64)
    t = _times(32, seed=4)

    def loss(k, integ):
        u, s, _ = evaluate(k, t, integ, T_END)
        return jnp.sum(s**2 + u**2)

    want = eqx.filter_jit(eqx.filter_grad(loss))(kin, CLOSED)
    got = eqx.filter_jit(eqx.filter_grad(loss))(kin, _kvaerno5())
    for g, w in zip(jax.tree_util.tree_leaves(eqx.filter(got, eqx.is_inexact_array)),
                    jax.tree_util.tree_leaves(eqx.filter(want, eqx.is_inexact_array))):
        scale = float(np.max(np.abs(np.asarray(w))))
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=1e-5 * max(scale, 1e-12))


def test_per_gene_solve_reports_a_failed_gene():
    kin = random_kinetics("standard", 5, seed=1)
    u, s, info = _evaluate(kin, _times(dtype=jnp.float32), _kvaerno5(max_steps=3))
    assert not bool(info.ok)
    assert np.all(np.isfinite(np.asarray(u))) and np.all(np.isfinite(np.asarray(s)))


def test_explicit_solver_per_gene_matches_joint(x64):
    kin = random_kinetics("dynamical", N_GENES, seed=9, dtype=jnp.float64)
    t = _times()
    integ = Integrator(diffrax.Tsit5(), diffrax.PIDController(rtol=1e-9, atol=1e-11))
    _, s_j, _ = _evaluate(kin, t, integ)
    _, s_g, info = _evaluate(kin, t, dataclasses.replace(integ, per_gene=True))
    assert bool(info.ok)
    np.testing.assert_allclose(np.asarray(s_g), np.asarray(s_j), rtol=1e-7, atol=1e-9)
