"""Gradients through the kinetics solves, the time encoder and the chunked training loss."""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_kinetics, tree_allclose

from velode import _loss
from velode._train import LossConfig, TrainData, loss_terms
from velode.model._encoder import TimeEncoder, fit_feature_map
from velode.model._kinetics import DynamicalKinetics
from velode.model._model import VelocityModel, predict
from velode.model._solve import Integrator, evaluate

# 1.05 = latent time 1 plus the default projection horizon: the same solve as the training loss.
T_END = 1.05
N_GENES = 8
CLOSED = Integrator()


def _tsit5(adjoint=diffrax.RecursiveCheckpointAdjoint(), tol=1e-9):
    return Integrator(diffrax.Tsit5(), diffrax.PIDController(rtol=tol, atol=tol), adjoint=adjoint)


def _times(kin, n_cells, seed, margin=0.01):
    """Random cell times in [0, T_END], none within ``margin`` of any gene's switch (where u has a kink)."""
    rng = np.random.default_rng(seed)
    t_sw = kin.switch_time()
    t = rng.uniform(0.0, T_END, 4 * n_cells)
    if t_sw is not None:
        far = np.min(np.abs(t[:, None] - np.asarray(t_sw)[None, :]), axis=1) > margin
        t = t[far]
    return jnp.asarray(t[:n_cells, None], jnp.float64)


def _loss_fn(kin, t, integrator):
    u, s, _ = evaluate(kin, t, integrator, T_END)
    return jnp.sum((kin.scale * u) ** 2 + s)


# Numerical solves are differentiated op by op, so that Diffrax's own compiled solves are shared between
# tests (and between the two phases of switching kinetics); the closed form compiles fastest as a whole.
_grad = eqx.filter_grad(_loss_fn)
_grad_t = jax.grad(_loss_fn, argnums=1)
_loss_closed = eqx.filter_jit(_loss_fn)
_grad_closed = eqx.filter_jit(_grad)
_grad_t_closed = eqx.filter_jit(_grad_t)


def _assert_close_by_leaf(got, want, rtol):
    """Every leaf agrees to ``rtol`` relative to that leaf's largest entry."""
    got_leaves = jax.tree_util.tree_leaves(eqx.filter(got, eqx.is_inexact_array))
    want_leaves = jax.tree_util.tree_leaves(eqx.filter(want, eqx.is_inexact_array))
    assert len(got_leaves) == len(want_leaves) > 0
    for i, (g, w) in enumerate(zip(got_leaves, want_leaves)):
        g, w = np.asarray(g), np.asarray(w)
        assert np.all(np.isfinite(g)), i
        scale = np.max(np.abs(w))
        assert scale > 0, i
        np.testing.assert_allclose(g, w, rtol=0, atol=rtol * scale, err_msg=f"leaf {i}")


def _directional_fd(f, kin, leaf_index, direction, eps):
    params, static = eqx.partition(kin, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)

    def shifted(sign):
        moved = list(leaves)
        moved[leaf_index] = leaves[leaf_index] + sign * eps * direction
        return eqx.combine(jax.tree_util.tree_unflatten(treedef, moved), static)

    return (float(f(shifted(1))) - float(f(shifted(-1)))) / (2 * eps)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dynamical", "standard"])
def test_tsit5_gradient_matches_finite_differences_and_closed_form(x64, kind):
    kin = random_kinetics(kind, N_GENES, seed=21, dtype=jnp.float64)
    t = _times(kin, 16, seed=0)
    integ = _tsit5()
    grads = _grad(kin, t, integ)
    grads_closed = _grad_closed(kin, t, CLOSED)
    _assert_close_by_leaf(grads, grads_closed, rtol=1e-4)

    rng = np.random.default_rng(1)
    leaves = jax.tree_util.tree_leaves(eqx.filter(kin, eqx.is_inexact_array))
    grad_leaves = jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert len(leaves) == (6 if kind == "dynamical" else 5)
    for i, (leaf, g) in enumerate(zip(leaves, grad_leaves)):
        v = jnp.asarray(rng.normal(size=leaf.shape))
        analytic = float(jnp.sum(g * v))
        fd = _directional_fd(lambda k: _loss_fn(k, t, integ), kin, i, v, eps=1e-5)
        assert analytic == pytest.approx(fd, rel=1e-4), i
        fd_closed = _directional_fd(lambda k: _loss_closed(k, t, CLOSED), kin, i, v, eps=1e-5)
        assert analytic == pytest.approx(fd_closed, rel=1e-4), i


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dynamical", "standard"])
@pytest.mark.parametrize(
    "adjoint", [diffrax.BacksolveAdjoint(), diffrax.DirectAdjoint()], ids=lambda a: type(a).__name__
)
def test_adjoints_agree(x64, kind, adjoint):
    kin = random_kinetics(kind, N_GENES, seed=22, dtype=jnp.float64)
    t = _times(kin, 16, seed=2)
    ref = _grad(kin, t, _tsit5(diffrax.RecursiveCheckpointAdjoint()))
    got = _grad(kin, t, _tsit5(adjoint))
    _assert_close_by_leaf(got, ref, rtol=1e-4)
    assert tree_allclose(
        eqx.filter(got, eqx.is_inexact_array), eqx.filter(ref, eqx.is_inexact_array), rtol=1e-4, atol=1e-8
    )


@pytest.mark.parametrize("kind", ["dynamical", "standard"])
def test_gradient_with_respect_to_time(x64, kind):
    """d loss / d t drives the encoder; it must match finite differences and the closed form."""
    kin = random_kinetics(kind, N_GENES, seed=23, dtype=jnp.float64)
    t = _times(kin, 16, seed=3)
    integ = _tsit5()
    g = _grad_t(kin, t, integ)
    g_closed = _grad_t_closed(kin, t, CLOSED)
    assert g.shape == t.shape
    scale = float(jnp.max(jnp.abs(g_closed)))
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_closed), rtol=0, atol=1e-4 * scale)
    rng = np.random.default_rng(4)
    eps = 1e-6  # well below the distance to any switch
    for _ in range(3):
        v = jnp.asarray(rng.normal(size=t.shape))
        fd = (float(_loss_fn(kin, t + eps * v, integ)) - float(_loss_fn(kin, t - eps * v, integ))) / (2 * eps)
        assert float(jnp.sum(g * v)) == pytest.approx(fd, rel=1e-6)
    # d/dt of sum(scale^2 u^2 + s) is sum(2 scale^2 u du/dt + ds/dt) with the vector field's rates.
    u, s, _ = evaluate(kin, t, CLOSED, T_END)
    du = kin.alpha_at(t) - kin.beta * u
    ds = kin.beta * u - kin.gamma * s
    expected = jnp.sum(2 * kin.scale**2 * u * du + ds, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(g_closed), np.asarray(expected), rtol=1e-10, atol=1e-12)


# --- the full model and the training loss ---
# Run in double precision with the same Tsit5 settings and gene count as above, so the solves (and
# their derivatives) are the ones already compiled; the data arrays are single precision, as built
# by TrainData.

N_CELLS, CHUNK = 37, 16  # 37 cells: not a multiple of the chunk


@functools.cache
def _small_problem(seed=0, onset=False):
    rng = np.random.default_rng(seed)
    obs_s = rng.gamma(2.0, 1.0, (N_CELLS, N_GENES))
    obs_u = rng.gamma(2.0, 0.5, (N_CELLS, N_GENES))
    fmap = fit_feature_map(np.concatenate([obs_s, obs_u], axis=1), n_components=5)
    features = fmap(jnp.asarray(np.concatenate([obs_s, obs_u], axis=1), jnp.float32))
    encoder = TimeEncoder(fmap.n_features, width=16, depth=2, key=jax.random.key(seed))
    # Each gene switches somewhere inside the range of the (untrained) latent times, so that some
    # cells are in induction and some in repression for every gene.
    t = np.asarray(encoder(features))
    switch = np.quantile(t, rng.uniform(0.3, 0.7, N_GENES))
    f64 = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
    kin = DynamicalKinetics(
        N_GENES,
        alpha=f64(rng.uniform(1.0, 5.0, N_GENES)),
        beta=f64(rng.uniform(0.5, 6.0, N_GENES)),
        gamma=f64(rng.uniform(0.3, 4.0, N_GENES)),
        scale=f64(rng.uniform(0.7, 1.5, N_GENES)),
        alpha0=f64(rng.uniform(0.05, 0.3, N_GENES)),
        switch=f64(switch),
    )
    if onset:  # each gene's onset inside the range of the latent times, before its switch
        kin = kin.with_onset(f64(np.minimum(np.quantile(t, rng.uniform(0.05, 0.25, N_GENES)), 0.8 * switch)))
    model = VelocityModel(fmap, encoder, kin)
    inv_u = 1.0 / obs_u.std(0)
    inv_s = 1.0 / obs_s.std(0)
    weight = rng.uniform(0.5, 1.5, N_GENES)
    return model, features, obs_u, obs_s, inv_u, inv_s, weight


def _loss_of(model, arrays, integ, cfg, chunk):
    return loss_terms(model, *arrays, integ, cfg, chunk)


_loss_grad = eqx.filter_grad(lambda model, *args: _loss_of(model, *args)[0])
_loss_of_closed = eqx.filter_jit(_loss_of)
_loss_grad_closed = eqx.filter_jit(_loss_grad)


@pytest.mark.parametrize(
    "solver, consistency, onset",
    [
        (None, 0.0, False),
        (None, 0.1, False),
        (None, 0.0, True),
        pytest.param(diffrax.Tsit5, 0.1, False, marks=pytest.mark.slow),
        pytest.param(diffrax.Tsit5, 0.0, False, marks=pytest.mark.slow),
        pytest.param(diffrax.Tsit5, 0.0, True, marks=pytest.mark.slow),
    ],
    ids=["closed", "closed-consistency", "closed-onset", "tsit5-consistency", "tsit5", "tsit5-onset"],
)
def test_every_trainable_leaf_gets_a_gradient(x64, solver, consistency, onset):
    integ = CLOSED if solver is None else _tsit5()
    model, features, obs_u, obs_s, inv_u, inv_s, weight = _small_problem(onset=onset)
    assert (model.kinetics.onset_time() is not None) == onset
    t = model.encoder(features)
    t_sw = model.kinetics.switch_time()
    assert bool(jnp.all(jnp.any(t[:, None] > t_sw, axis=0))), (t, t_sw)
    assert bool(jnp.all(jnp.any(t[:, None] < t_sw, axis=0))), (t, t_sw)
    data = TrainData.build(features, obs_u, obs_s, inv_u, inv_s, weight, chunk=CHUNK)
    cfg = LossConfig(consistency_weight=consistency)

    grad_fn, loss_fn = (_loss_grad_closed, _loss_of_closed) if solver is None else (_loss_grad, _loss_of)
    grads = grad_fn(model, data.arrays(), integ, cfg, data.chunk)
    loss, (terms, info) = loss_fn(model, data.arrays(), integ, cfg, data.chunk)
    assert bool(info.ok)
    assert np.isfinite(float(loss))
    assert ("consistency" in terms) == (consistency != 0)

    for part in ("encoder", "kinetics"):
        params = eqx.filter(getattr(model, part), eqx.is_inexact_array)
        g = eqx.filter(getattr(grads, part), eqx.is_inexact_array)
        paths = jax.tree_util.tree_flatten_with_path(params)[0]
        g_leaves = jax.tree_util.tree_leaves(g)
        assert len(paths) == len(g_leaves) > 0
        for (path, leaf), gl in zip(paths, g_leaves):
            name = part + jax.tree_util.keystr(path)
            assert gl.shape == leaf.shape, name
            assert bool(jnp.all(jnp.isfinite(gl))), name
            assert float(jnp.linalg.norm(gl)) > 0, name
            if part == "kinetics":  # every gene, not just some, is reached
                assert bool(jnp.all(gl != 0)), name
    frozen = jax.tree_util.tree_leaves(eqx.filter(grads.features, eqx.is_inexact_array))
    assert len(frozen) == 3  # mean, scale, components
    for leaf in frozen:
        assert bool(jnp.all(leaf == 0))


def _manual_loss(model, features, obs_u, obs_s, inv_u, inv_s, weight, integ, cfg):
    """The loss written out directly over all real cells at once, from the model's predictions."""
    project = cfg.consistency_weight != 0
    pred = predict(model, features, integ, horizon=cfg.horizon if project else 0.0, project=project)
    r = ((pred.unspliced - obs_u) * inv_u) ** 2 + ((pred.spliced - obs_s) * inv_s) ** 2
    rec = 0.5 * jnp.mean(jnp.sum(weight * r, axis=1)) / jnp.sum(weight)
    terms = {"reconstruction": rec}
    total = cfg.reconstruction_weight * rec
    if project:
        cons = _loss.consistency(pred.velocity, pred.spliced, pred.projected_spliced, cfg.horizon, inv_s)
        terms["consistency"] = cons
        total = total + cfg.consistency_weight * cons
    return total, terms, pred


@pytest.mark.parametrize(
    "solver, consistency",
    [(None, 0.0), (None, 0.1), (diffrax.Tsit5, 0.1), (diffrax.Tsit5, 0.0)],
    ids=["closed", "closed-consistency", "tsit5-consistency", "tsit5"],
)
def test_chunked_loss_equals_direct_computation(x64, solver, consistency):
    integ = CLOSED if solver is None else _tsit5()
    model, features, obs_u, obs_s, inv_u, inv_s, weight = _small_problem(seed=1)
    cfg = LossConfig(reconstruction_weight=0.7, consistency_weight=consistency, horizon=0.05)
    # TrainData holds single-precision data: compare against the same values.
    obs_u, obs_s, inv_u, inv_s, weight = (jnp.asarray(a, jnp.float32) for a in (obs_u, obs_s, inv_u, inv_s, weight))
    manual = eqx.filter_jit(_manual_loss) if solver is None else _manual_loss
    total, terms, pred = manual(model, features, obs_u, obs_s, inv_u, inv_s, weight, integ, cfg)
    assert bool(pred.info.ok)
    rec_lib = _loss.reconstruction(pred.unspliced, pred.spliced, obs_u, obs_s, inv_u, inv_s, weight)
    assert float(rec_lib) == pytest.approx(float(terms["reconstruction"]), rel=1e-12)

    for chunk in (CHUNK, 5):
        data = TrainData.build(features, obs_u, obs_s, inv_u, inv_s, weight, chunk=chunk)
        # The data are held once; the pass reads them through padded row indices.
        assert data.features.shape[0] == N_CELLS and data.rows.shape[0] % chunk == 0 and data.rows.shape[0] > N_CELLS
        assert int(jnp.sum(data.mask)) == N_CELLS == data.n_cells
        loss_fn = _loss_of_closed if solver is None else _loss_of
        loss, (chunk_terms, info) = loss_fn(model, data.arrays(), integ, cfg, data.chunk)
        assert bool(info.ok)
        assert set(chunk_terms) == set(terms)
        for k in terms:
            # the mask and the gene weights are single precision: so is their normalising product
            assert float(chunk_terms[k]) == pytest.approx(float(terms[k]), rel=1e-6), (chunk, k)
        assert float(loss) == pytest.approx(float(total), rel=1e-6), chunk


def test_cell_specific_transcription_gets_gradients_and_reduces_to_the_plain_model(x64):
    from velode.model._model import CellModulator

    model, features, obs_u, obs_s, inv_u, inv_s, weight = _small_problem()
    data = TrainData.build(features, obs_u, obs_s, inv_u, inv_s, weight, chunk=CHUNK)
    cfg = LossConfig()
    mod = CellModulator(features.shape[1], N_GENES, 3, key=jax.random.key(1), init_scale=0.3)
    with_mod = VelocityModel(model.features, model.encoder, model.kinetics, mod)
    grads = _loss_grad_closed(with_mod, data.arrays(), CLOSED, cfg, data.chunk)
    for leaf in jax.tree_util.tree_leaves(eqx.filter(grads.modulator, eqx.is_inexact_array)):
        assert bool(jnp.all(jnp.isfinite(leaf))) and float(jnp.linalg.norm(leaf)) > 0
    # zero loadings: every cell's alpha is the gene's alpha, so the loss is the plain model's
    flat = eqx.tree_at(lambda m: m.modulator.loadings, with_mod, jnp.zeros_like(mod.loadings))
    l_mod = _loss_of_closed(flat, data.arrays(), CLOSED, cfg, data.chunk)[0]
    l_plain = _loss_of_closed(model, data.arrays(), CLOSED, cfg, data.chunk)[0]
    assert float(l_mod) == pytest.approx(float(l_plain), rel=1e-12)
    # the chunked loss equals the loss written out from predict() with the modulation
    pred = predict(with_mod, features, CLOSED)
    r = ((pred.unspliced - obs_u) * inv_u) ** 2 + ((pred.spliced - obs_s) * inv_s) ** 2
    direct = 0.5 * jnp.mean(jnp.sum(weight * r, axis=1)) / jnp.sum(weight)
    l_with = _loss_of_closed(with_mod, data.arrays(), CLOSED, cfg, data.chunk)[0]
    assert float(l_with) == pytest.approx(float(direct), rel=1e-6)  # features (and so z) are float32
    assert float(l_with) != pytest.approx(float(l_plain), rel=1e-6)


def _with_modulator(model, n_features):
    from velode.model._model import CellModulator

    mod = CellModulator(n_features, N_GENES, 3, key=jax.random.key(2), init_scale=0.3)
    mod = eqx.tree_at(lambda m: (m.proj, m.loadings), mod,
                      (jnp.asarray(mod.proj, jnp.float64), jnp.asarray(mod.loadings, jnp.float64)))
    return VelocityModel(model.features, model.encoder, model.kinetics, mod)


@pytest.mark.parametrize("onset, modulated", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["plain", "onset", "cell-specific", "onset-cell-specific"])
def test_gradient_computed_with_the_loss_matches_differentiating_the_formula(x64, monkeypatch, onset, modulated):
    """Switching kinetics in closed form: the loss's gradient, computed in the same pass as the loss
    (model._fused), against reverse-mode differentiation of the formula op by op and against central
    finite differences along a random direction, in double precision."""
    from velode.model import _fused

    model, features, obs_u, obs_s, inv_u, inv_s, weight = _small_problem(onset=onset)
    if modulated:
        model = _with_modulator(model, features.shape[1])
    assert _fused.supported(model.kinetics)
    data = TrainData.build(features, obs_u, obs_s, inv_u, inv_s, weight, chunk=CHUNK)
    cfg = LossConfig()

    def value_and_grad():  # traced afresh on each call (new function): follows _fused.supported as patched
        f = lambda m: _loss_of(m, data.arrays(), CLOSED, cfg, data.chunk)[0]  # noqa: E731
        return eqx.filter_jit(eqx.filter_value_and_grad(f))(model), eqx.filter_jit(f)

    (loss, grads), loss_fn = value_and_grad()
    monkeypatch.setattr(_fused, "supported", lambda kin: False)
    (loss_ref, grads_ref), _ = value_and_grad()
    assert float(loss) == pytest.approx(float(loss_ref), rel=1e-12)
    parts = ("encoder", "kinetics") + (("modulator",) if modulated else ())
    for part in parts:
        _assert_close_by_leaf(getattr(grads, part), getattr(grads_ref, part), rtol=1e-10)

    # Central differences along a random direction of every trainable parameter.
    params, static = eqx.partition(model, eqx.is_inexact_array)
    params = eqx.tree_at(lambda m: m.features, params, replace_fn=lambda _: None)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(3)
    direction = [jnp.asarray(rng.normal(size=x.shape)) for x in leaves]
    g_leaves = jax.tree_util.tree_leaves(eqx.tree_at(lambda m: m.features, eqx.filter(grads, eqx.is_inexact_array),
                                                     replace_fn=lambda _: None))
    analytic = sum(float(jnp.sum(g * d)) for g, d in zip(g_leaves, direction))
    eps = 1e-6

    def at(sign):
        moved = jax.tree_util.tree_unflatten(treedef, [x + sign * eps * d for x, d in zip(leaves, direction)])
        moved = eqx.tree_at(lambda m: m.features, moved, model.features, is_leaf=lambda x: x is None)
        return float(loss_fn(eqx.combine(moved, static)))

    monkeypatch.undo()
    numeric = (at(1) - at(-1)) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)
