"""A search over switch times, gene by gene, on the fitted clock.

A gene that switches from induction to repression before most cells can be caught in a local
optimum. Its other parameters settle around the early switch, and moving the switch alone only
raises the loss, even when a later switch with rates to match fits the gene better. Spp1 on pancreas
does this in some seeds: with its switch before the Ductal cells, their velocity for it points down,
although on the same clock a switch among them fits Spp1 better (scripts/switch_profile.py,
BENCHMARKS.md).

Once the clock is fitted, the loss is a sum of one term per gene, with the latent times and the
cells' factors held fixed. So for each gene that switches before the ``quantile`` of the cells'
latent times, the search tries its switch at the current time and at fixed quantiles of the latent
times (:data:`CANDIDATES`). At each time the gene's other parameters are fitted again: rates, scale
of u, starting state and its cell-specific loadings, by Adam from their fitted values. All genes
and candidates are fitted at once, as columns of one model, and each gene keeps the candidate with
the lowest loss. The current switch is also fitted again and compared with the same budget. A gene
whose current switch wins keeps its parameters unchanged.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _matrix
from ._train import loss_terms
from .model._solve import prepare

#: Candidate switch times: these quantiles of the cells' latent times (besides the gene's own).
CANDIDATES = (0.05, 0.15, 0.3)
#: Genes per block of the search (the last block padded): one compiled program serves every block.
GENE_BLOCK = 32
#: The cells of the search: every cell up to this quantile of the latent times (where the candidates
#: lie) and a random LATE_FRACTION of the later ones, each weighted 1 / LATE_FRACTION; at most MAX_CELLS in all.
LATE_QUANTILE = 0.35
LATE_FRACTION = 0.25
MAX_CELLS = 8192

_FREE = ("raw_alpha", "raw_beta", "raw_gamma", "log_scale", "raw_alpha0")


def _free(model):
    """The leaves the search fits again: the kinetics' per-gene parameters other than the switch, and loadings."""
    kin = model.kinetics
    leaves = tuple(getattr(kin, name) for name in _FREE)
    return leaves + ((model.modulator.loadings,) if model.modulator is not None else ())


@eqx.filter_jit
def _encode(encoder, features):
    return encoder(features)


def _per_gene(model, features, obs_u, obs_s, mask, inv_u, inv_s, integrator):
    """Each column's sum over cells of the squared scaled residuals of u and s (no gene weights)."""
    kin = model.kinetics
    t = model.encoder(features)
    ev = prepare(kin, integrator, t_end=1.0)
    mod = model.modulator
    mult = None if mod is None else mod.scale(mod.embed(features))
    u, s = ev(t[:, None], mult)
    r = ((kin.scale * u - obs_u) * inv_u) ** 2 + ((s - obs_s) * inv_s) ** 2
    return mask @ r


@eqx.filter_jit
def _search_block(model, features, obs_u, obs_s, rows, mask, inv_u, inv_s, integrator, loss_cfg, chunk: int,
                  steps: int, lr: float):
    """Adam on the free leaves of ``model`` (its columns: genes x candidates): the fitted model and the loss of
    each column before and after.

    ``features``, ``obs_u``, ``obs_s`` hold the cells of the search; ``rows`` (a multiple of ``chunk`` long, padding
    weighted 0 by ``mask``) index them.
    """
    params, rest = eqx.partition(model, eqx.is_inexact_array)
    spec = jax.tree_util.tree_map(lambda _: False, params)
    spec = eqx.tree_at(_free, spec, replace=(True,) * len(_free(params)))
    free, frozen = eqx.partition(params, spec)
    ones = jnp.ones(obs_u.shape[1], obs_u.dtype)

    def loss(f):
        m = eqx.combine(f, frozen, rest)
        return loss_terms(m, features, obs_u, obs_s, rows, mask, inv_u, inv_s, ones, integrator, loss_cfg, chunk)[0]

    opt = optax.adam(lr)

    def body(carry, _):
        f, state = carry
        grads = jax.grad(loss)(f)
        updates, state = opt.update(grads, state)
        return (optax.apply_updates(f, updates), state), None

    per_gene = lambda m: _per_gene(m, features[rows], obs_u[rows], obs_s[rows], mask, inv_u, inv_s, integrator)  # noqa: E731
    before = per_gene(model)
    (free, _), _ = jax.lax.scan(body, (free, opt.init(free)), None, length=steps)
    fitted = eqx.combine(free, frozen, rest)
    return fitted, before, per_gene(fitted)


def _columns(model, genes, switch):
    """``model`` restricted to the columns ``genes`` (repeats allowed), with switch times ``switch``."""
    # Indexing on the host: in JAX each gather of a new shape would compile a program.
    n = model.kinetics.n_genes
    pick = lambda x: jnp.asarray(np.asarray(x)[genes]) if eqx.is_array(x) and x.shape == (n,) else x  # noqa: E731
    kin = jax.tree_util.tree_map(pick, model.kinetics)
    p = np.clip(np.asarray(switch, np.float64) / kin.switch_max, 1e-4, 1 - 1e-4)
    kin = eqx.tree_at(lambda k: k.raw_switch, kin, jnp.asarray(np.log(p) - np.log1p(-p), jnp.float32))
    mod = model.modulator
    if mod is not None:
        mod = eqx.tree_at(lambda m: m.loadings, mod, jnp.asarray(np.asarray(mod.loadings)[:, genes]))
    return type(model)(model.features, model.encoder, kin, mod)


def search_switches(model, data, integrator, loss_cfg, *, quantile: float, steps: int, lr: float, seed: int = 0):
    """The model with the switch times (and other parameters) of early-switching genes searched again.

    Returns (model, genes moved). Nothing changes with ``quantile`` <= 0, ``steps`` <= 0, or kinetics
    without a switch.
    """
    kin = model.kinetics
    if quantile <= 0 or steps <= 0 or kin.switch_time() is None:
        return model, 0
    n = data.n_cells
    host_features = np.asarray(data.features)[:n]
    t = np.asarray(_encode(model.encoder, jnp.asarray(host_features)), np.float64)
    cells, weight = search_cells(t, seed)
    features = jnp.asarray(host_features[cells])
    switch = np.asarray(kin.switch_time(), np.float64)
    early = np.flatnonzero(switch < np.quantile(t, quantile))
    if early.size == 0:
        return model, 0
    times = np.quantile(t, CANDIDATES)
    k = 1 + len(times)
    pad = len(cells) + (-len(cells)) % data.chunk
    rows = jnp.asarray(np.arange(pad) % len(cells), jnp.int32)
    mask = jnp.asarray(np.concatenate([weight, np.zeros(pad - len(cells))]).astype(np.float32))
    names = _FREE
    fields = {name: np.array(getattr(kin, name)) for name in names + ("raw_switch",)}
    loadings = None if model.modulator is None else np.array(model.modulator.loadings)
    # Host views, read once: each block below takes only its cells x genes from them.
    host_u, host_s = (x if _matrix.is_sparse(x) else np.asarray(x) for x in (data.obs_u, data.obs_s))
    host_inv_u, host_inv_s = np.asarray(data.inv_sd_u), np.asarray(data.inv_sd_s)
    moved = 0
    for lo in range(0, early.size, GENE_BLOCK):
        block = early[lo : lo + GENE_BLOCK]
        genes = np.concatenate([block, np.full(GENE_BLOCK - block.size, block[-1])])  # padded with a repeat
        cols = np.tile(genes, k)
        start = np.concatenate([switch[genes]] + [np.full(GENE_BLOCK, c) for c in times])
        sub = _columns(model, cols, start)
        # Densified: the search's cells x the block's genes (sparse data stay sparse until then).
        ug = np.unique(block)
        at = np.searchsorted(ug, cols)
        obs_u = jnp.asarray(_take(host_u, cells, ug)[:, at])
        obs_s = jnp.asarray(_take(host_s, cells, ug)[:, at])
        inv_u, inv_s = jnp.asarray(host_inv_u[cols]), jnp.asarray(host_inv_s[cols])
        fitted, before, after = _search_block(sub, features, obs_u, obs_s, rows, mask, inv_u, inv_s, integrator,
                                              loss_cfg, data.chunk, int(steps), float(lr))
        after = np.array(after).reshape(k, GENE_BLOCK)[:, : block.size]
        # The gene's own switch counts at its better loss, as fitted or fitted again: a gene never gets worse.
        after[0] = np.minimum(after[0], np.asarray(before)[: block.size])
        after[~np.isfinite(after)] = np.inf  # a candidate whose loss is not finite never wins
        best = np.argmin(after, axis=0)
        won = np.flatnonzero(best > 0)  # genes where a candidate beat their own switch
        cand = best[won] * GENE_BLOCK + won
        for name in names + ("raw_switch",):
            fields[name][block[won]] = np.asarray(getattr(fitted.kinetics, name))[cand]
        if loadings is not None:
            loadings[:, block[won]] = np.asarray(fitted.modulator.loadings)[:, cand]
        moved += won.size
    if not moved:
        return model, 0
    new_kin = eqx.tree_at(lambda q: tuple(getattr(q, name) for name in names + ("raw_switch",)), kin,
                          tuple(jnp.asarray(fields[name]) for name in names + ("raw_switch",)))
    model = eqx.tree_at(lambda m: m.kinetics, model, new_kin)
    if loadings is not None:
        model = eqx.tree_at(lambda m: m.modulator.loadings, model, jnp.asarray(loadings))
    return model, moved


def search_cells(t, seed: int = 0):
    """The cells of the search (indices) and their weights, given the latent times ``t`` of all cells.

    The earliest LATE_QUANTILE of the cells, and a random LATE_FRACTION of the others weighted to stand for
    all of them. The number of cells depends only on ``len(t)``, so every fit of a dataset reuses one program.
    """
    n = len(t)
    order = np.argsort(t, kind="stable")
    m = int(np.ceil(LATE_QUANTILE * n))
    k = int(np.ceil(LATE_FRACTION * (n - m)))
    rng = np.random.default_rng(seed)
    late = rng.choice(order[m:], k, replace=False) if k else order[:0]
    cells = np.concatenate([order[:m], late])
    weight = np.concatenate([np.ones(m), np.full(k, (n - m) / max(k, 1))])
    if len(cells) > MAX_CELLS:  # a uniform subset of those, weighted alike
        pick = rng.choice(len(cells), MAX_CELLS, replace=False)
        cells, weight = cells[pick], weight[pick] * (len(cells) / MAX_CELLS)
    keep = np.argsort(cells)
    return cells[keep], weight[keep]


def _take(x, cells, genes) -> np.ndarray:
    """Dense float32 ``x[cells][:, genes]``; a sparse ``x`` is densified only there."""
    if _matrix.is_sparse(x):
        return _matrix.dense(x[cells][:, genes])
    return np.asarray(x[np.ix_(cells, genes)], np.float32)
