"""Pure loss functions. Every term is normalised per gene so that highly expressed genes do not dominate."""

import jax.numpy as jnp

_EPS = 1e-8


def reconstruction(pred_u, pred_s, obs_u, obs_s, inv_sd_u, inv_sd_s, gene_weight=None):
    """Mean squared error of (u, s) at each cell's latent time, each gene scaled by 1/std of its data."""
    r = ((pred_u - obs_u) * inv_sd_u) ** 2 + ((pred_s - obs_s) * inv_sd_s) ** 2
    if gene_weight is None:
        return 0.5 * jnp.mean(r)
    return 0.5 * jnp.mean(r @ gene_weight) / jnp.maximum(jnp.sum(gene_weight), _EPS)


def consistency_per_cell(velocity, spliced, projected_spliced, horizon, inv_sd_s):
    """Per cell: (1 - cosine) between velocity*dt and the change to the projected state, plus the
    squared log-ratio of their norms (genes scaled by 1/std of spliced)."""
    step = velocity * horizon * inv_sd_s
    change = (projected_spliced - spliced) * inv_sd_s
    n_step = jnp.sqrt(jnp.sum(step**2, axis=-1) + _EPS)
    n_change = jnp.sqrt(jnp.sum(change**2, axis=-1) + _EPS)
    cos = jnp.sum(step * change, axis=-1) / (n_step * n_change)
    return (1.0 - cos) + (jnp.log(n_step) - jnp.log(n_change)) ** 2


def consistency(velocity, spliced, projected_spliced, horizon, inv_sd_s):
    """Mean over cells of :func:`consistency_per_cell`."""
    return jnp.mean(consistency_per_cell(velocity, spliced, projected_spliced, horizon, inv_sd_s))


def time_uniformity(t, mask):
    """Squared distance between the sorted latent times of the cells (``mask`` > 0) and the uniform quantiles.

    Zero when the cells are spread evenly over [0, 1]; a weak prior against a clock that crowds
    whole populations at one end.
    """
    n = jnp.sum(mask)
    ts = jnp.sort(jnp.where(mask > 0, t, jnp.inf))
    i = jnp.arange(t.shape[0])
    q = (i + 0.5) / jnp.maximum(n, 1.0)
    return jnp.sum(jnp.where(i < n, (jnp.where(i < n, ts, 0.0) - q) ** 2, 0.0)) / jnp.maximum(n, 1.0)


def weighted_sum(terms: dict, weights: dict):
    """Sum of the terms whose weight is non-zero; a missing weight counts as zero."""
    total = 0.0
    for name, value in terms.items():
        w = weights.get(name, 0.0)
        if w:
            total = total + w * value
    return total
