"""Time encoder: an MLP from a cell's (projected) expression profile to its latent time in [0, 1]."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

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
        """``key``: a JAX key, or a ``numpy.random.Generator`` to draw the same distribution on the host
        (no compiled program: JAX's random numbers compile one for each draw, ~1 s in a fresh process)."""
        make = lambda k: eqx.nn.MLP(n_features, "scalar", width, depth, activation=jax.nn.gelu, key=k)  # noqa: E731
        if not isinstance(key, np.random.Generator):
            self.mlp = make(key)
            return
        # Equinox's default for each layer: weight and bias uniform in +-1/sqrt(inputs of the layer).
        mlp = eqx.filter_eval_shape(make, jax.ShapeDtypeStruct((2,), jnp.uint32))
        layers = []
        for layer in mlp.layers:  # inputs are features or hidden units: in_features is an int
            lim = 1.0 / np.sqrt(layer.in_features)
            draw = lambda x: jnp.asarray(np.asarray(key.uniform(-lim, lim, x.shape), x.dtype))  # noqa: E731
            layers.append(eqx.tree_at(lambda m: (m.weight, m.bias), layer, (draw(layer.weight), draw(layer.bias))))
        self.mlp = eqx.tree_at(lambda m: m.layers, mlp, tuple(layers))

    def __call__(self, features: Float[Array, "cells features"]) -> Float[Array, " cells"]:
        return jax.nn.sigmoid(jax.vmap(self.mlp)(features))


#: Above this many cells the principal axes are found on a random subset of this many cells (the
#: standardisation still uses every cell).
PCA_MAX_CELLS = 30_000
#: Cells per block of the passes over every cell (the standardisation sums, the projection).
BLOCK_CELLS = 4096


def fit_feature_map(x, n_components: int = 30, *, max_cells: int | None = None, seed: int = 0) -> FeatureMap:
    """PCA (randomised SVD) of the gene-standardised matrix x (cells x inputs); numpy in, FeatureMap out.

    ``x`` may be a tuple of column blocks (e.g. ``(spliced, unspliced)``), which are joined one
    block of cells at a time when there are more than ``max_cells`` cells, so memory stays near the
    data's own; the blocks may be scipy sparse matrices (densified a block of cells at a time).
    """
    from sklearn.utils.extmath import randomized_svd

    from .. import _matrix

    max_cells = PCA_MAX_CELLS if max_cells is None else max_cells
    blocks = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    n = blocks[0].shape[0]
    if n <= max_cells:
        # Single precision for the data and the SVD (twice as fast as double); sums in double precision.
        x = np.concatenate([_matrix.dense(b).astype(np.float32) for b in blocks], axis=1)
        mean = x.mean(0, dtype=np.float64)
        sub = x - mean.astype(np.float32)  # centred once: for the spread and for the projection
        scale = np.sqrt((sub**2).mean(0, dtype=np.float64))
    else:
        total = sq = 0.0
        for lo in range(0, n, BLOCK_CELLS):  # sums over blocks of cells, in double precision
            part = np.concatenate([_matrix.block(b, lo, lo + BLOCK_CELLS).astype(np.float64) for b in blocks], axis=1)
            total = total + part.sum(0)
            sq = sq + (part**2).sum(0)
        mean = total / n
        scale = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
        pick = np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False))
        # The subset is standardised in place, in single precision: a fixed ~0.5 GB at 2,000 genes.
        sub = np.concatenate([_matrix.take(b, pick) for b in blocks], axis=1)
        sub -= mean.astype(np.float32)
        sub /= np.where(scale > 0, scale, 1.0).astype(np.float32)
    scale = np.where(scale > 0, scale, 1.0)
    z = sub if n > max_cells else sub / scale.astype(np.float32)
    k = int(max(1, min(n_components, z.shape[0] - 1, z.shape[1])))
    _, _, vt = randomized_svd(z, k, n_iter=4, random_state=0)
    comps = vt.T
    # Unit variance per feature, so the MLP's inputs are on one scale.
    proj = z @ comps
    comps = comps / np.maximum(proj.std(0), 1e-12)
    f32 = lambda a: jnp.asarray(np.asarray(a, np.float32))  # noqa: E731
    return FeatureMap(f32(mean), f32(scale), f32(comps))


def project_cells(fmap: FeatureMap, blocks, *, block_cells: int | None = None) -> jax.Array:
    """``fmap`` applied to every cell of the column blocks (e.g. ``(spliced, unspliced)``), in blocks of cells."""
    from .. import _matrix

    block_cells = BLOCK_CELLS if block_cells is None else block_cells
    n = blocks[0].shape[0]
    # fmap's arithmetic, in NumPy: on the host it compiles nothing (in JAX, one program per operation and shape).
    mean, scale, comps = (np.asarray(a) for a in (fmap.mean, fmap.scale, fmap.components))

    def project(lo, hi):
        x = np.concatenate([_matrix.block(b, lo, hi) for b in blocks], axis=1)
        return ((x - mean) / scale).astype(np.float32) @ comps

    return jnp.asarray(np.concatenate([project(lo, min(lo + block_cells, n)) for lo in range(0, n, block_cells)]))
