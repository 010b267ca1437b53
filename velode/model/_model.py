"""The velocity model: a time encoder and per-gene kinetics, evaluated at each cell's latent time."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float
from ._encoder import FeatureMap, TimeEncoder
from ._kinetics import AbstractKinetics
from ._solve import Integrator, SolveInfo, evaluate, prepare


class CellModulator(eqx.Module):
    """Cell-specific transcription: alpha_cg = alpha_g * exp(z_c . w_g), z_c = tanh(P f_c) of rank k.

    Lets genes of one lineage be transcribed in its cells and not in a sister lineage at the same
    latent time (branching), which one trajectory per gene cannot express. Closed form only.
    """

    proj: Float[Array, "rank features"]
    loadings: Float[Array, "rank genes"]
    bound: float = eqx.field(static=True)  # |z . w| <= bound: alpha changes at most by a factor e^bound

    def __init__(self, n_features: int, n_genes: int, rank: int, *, key, init_scale: float = 1e-3,
                 bound: float = 2.0):
        self.bound = float(bound)
        if isinstance(key, np.random.Generator):  # drawn on the host: no compiled program (see TimeEncoder)
            f32 = lambda x: jnp.asarray(np.asarray(x, np.float32))  # noqa: E731
            self.proj = f32(key.standard_normal((rank, n_features)) / np.sqrt(n_features))
            self.loadings = f32(init_scale * key.standard_normal((rank, n_genes)))
            return
        k1, k2 = jax.random.split(key)
        self.proj = jax.random.normal(k1, (rank, n_features)) / jnp.sqrt(n_features)
        self.loadings = init_scale * jax.random.normal(k2, (rank, n_genes))

    def embed(self, features: Float[Array, "cells features"]) -> Float[Array, "cells rank"]:
        return jnp.tanh(features @ self.proj.T)

    def scale(self, z: Float[Array, "cells rank"]) -> Float[Array, "cells genes"]:
        return modulation(z, self.loadings, self.bound)


def modulation(z, loadings, bound: float):
    """exp(bound * tanh(z . w / bound)): each cell's factor on each gene's alpha (cells x genes)."""
    return jnp.exp(bound * jnp.tanh(z @ loadings / bound))


class VelocityModel(eqx.Module):
    features: FeatureMap
    encoder: TimeEncoder
    kinetics: AbstractKinetics
    modulator: CellModulator | None = None


class Prediction(eqx.Module):
    """What the model says about a batch of cells; u is in observed (scaled) unspliced units."""

    latent_time: Float[Array, " cells"]
    unspliced: Float[Array, "cells genes"]
    spliced: Float[Array, "cells genes"]
    velocity: Float[Array, "cells genes"]
    velocity_u: Float[Array, "cells genes"]
    projected_spliced: Float[Array, "cells genes"] | None
    info: SolveInfo


def predict(
    model: VelocityModel,
    features: Float[Array, "cells features"],
    integrator: Integrator,
    *,
    horizon: float = 0.0,
    project: bool = False,
) -> Prediction:
    """Latent time, fitted state, velocity (ds/dt and du/dt) and, if ``project``, s(t + horizon).

    ``features`` are the FeatureMap projection of the cells (computed once outside the training loop).
    """
    t = model.encoder(features)
    kin = model.kinetics
    n = t.shape[0]
    query = t[:, None]
    mult = None if model.modulator is None else model.modulator.scale(model.modulator.embed(features))
    if project:
        query = jnp.concatenate([query, query + horizon], axis=0)
    ev = prepare(kin, integrator, t_end=1.0 + horizon)
    u_all, s_all = ev(query, None if mult is None else jnp.concatenate([mult] * (2 if project else 1), axis=0))
    info = ev.info
    u, s = u_all[:n], s_all[:n]
    velocity = kin.beta * u - kin.gamma * s
    alpha_t = kin.alpha_at(t[:, None])
    if mult is not None:  # alpha0 before the onset is not modulated; alpha during induction is
        alpha_t = jnp.where(alpha_t == kin.alpha, kin.alpha * mult, alpha_t)
    velocity_u = kin.scale * (alpha_t - kin.beta * u)
    return Prediction(
        latent_time=t,
        unspliced=kin.scale * u,
        spliced=s,
        velocity=velocity,
        velocity_u=velocity_u,
        projected_spliced=s_all[n:] if project else None,
        info=info,
    )


__all__ = ["VelocityModel", "CellModulator", "modulation", "Prediction", "predict", "Integrator", "evaluate"]
