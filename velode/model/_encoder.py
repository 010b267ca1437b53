"""Time encoder: an MLP from a cell's (projected) expression profile to its latent time in [0, 1]."""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float


class FeatureMap(eqx.Module):
    """Fixed (not trained) projection of a cell's standardised [spliced, unspliced] onto principal axes.

    Stored with the model so that new cells are encoded exactly as the training cells were.
    """

    mean: Float[Array, " inputs"]
    scale: Float[Array, " inputs"]
    components: Float[Array, "inputs features"]

    def __call__(self, x: Float[Array, "cells inputs"]) -> Float[Array, "cells features"]:
        z = (x - self.mean) / self.scale
        return jax.lax.stop_gradient(z @ self.components)

    @property
    def n_features(self) -> int:
        return self.components.shape[1]


class TimeEncoder(eqx.Module):
    """MLP features -> latent time t = sigmoid(mlp(x)) in [0, 1]."""

    mlp: eqx.nn.MLP

    def __init__(self, n_features: int, *, width: int = 64, depth: int = 2, key):
        self.mlp = eqx.nn.MLP(n_features, "scalar", width, depth, activation=jax.nn.gelu, key=key)

    def __call__(self, features: Float[Array, "cells features"]) -> Float[Array, " cells"]:
        return jax.nn.sigmoid(jax.vmap(self.mlp)(features))


def fit_feature_map(x, n_components: int = 30) -> FeatureMap:
    """PCA (randomised SVD) of the gene-standardised matrix x (cells x inputs); numpy in, FeatureMap out."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (x - mean) / scale
    k = int(max(1, min(n_components, z.shape[0] - 1, z.shape[1])))
    from sklearn.utils.extmath import randomized_svd

    _, _, vt = randomized_svd(z, k, n_iter=4, random_state=0)
    comps = vt.T
    # Unit variance per feature, so the MLP's inputs are on one scale.
    proj = z @ comps
    comps = comps / np.maximum(proj.std(0), 1e-12)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return FeatureMap(f32(mean), f32(scale), f32(comps))
