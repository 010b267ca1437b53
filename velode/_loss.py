"""Pure loss functions. Every term is normalised per gene so that highly expressed genes do not dominate."""

import jax.numpy as jnp

_EPS = 1e-8


def reconstruction(pred_u, pred_s, obs_u, obs_s, inv_sd_u, inv_sd_s, gene_weight=None):
    """Mean squared error of (u, s) at each cell's latent time, each gene scaled by 1/std of its data."""
    r = ((pred_u - obs_u) * inv_sd_u) ** 2 + ((pred_s - obs_s) * inv_sd_s) ** 2
    if gene_weight is None:
        return 0.5 * jnp.mean(r)
    return 0.5 * jnp.mean(r @ gene_weight) / jnp.maximum(jnp.sum(gene_weight), _EPS)


def consistency(velocity, spliced, projected_spliced, horizon, inv_sd_s):
    """Agreement of velocity*dt with the change to the projected state, per cell across genes.

    (1 - cosine) plus the squared log-ratio of the two norms.
    """
    step = velocity * horizon * inv_sd_s
    change = (projected_spliced - spliced) * inv_sd_s
    n_step = jnp.sqrt(jnp.sum(step**2, axis=-1) + _EPS)
    n_change = jnp.sqrt(jnp.sum(change**2, axis=-1) + _EPS)
    cos = jnp.sum(step * change, axis=-1) / (n_step * n_change)
    return jnp.mean(1.0 - cos) + jnp.mean((jnp.log(n_step) - jnp.log(n_change)) ** 2)


def weighted_sum(terms: dict, weights: dict):
    """Sum of the terms whose weight is non-zero; a missing weight counts as zero."""
    total = 0.0
    for name, value in terms.items():
        w = weights.get(name, 0.0)
        if w:
            total = total + w * value
    return total
