"""The velocity model: a time encoder and per-gene kinetics, evaluated at each cell's latent time."""

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Array, Float
from ._encoder import FeatureMap, TimeEncoder
from ._kinetics import AbstractKinetics
from ._solve import Integrator, SolveInfo, evaluate


class VelocityModel(eqx.Module):
    features: FeatureMap
    encoder: TimeEncoder
    kinetics: AbstractKinetics


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
    if project:
        query = jnp.concatenate([query, query + horizon], axis=0)
    u_all, s_all, info = evaluate(kin, query, integrator, t_end=1.0 + horizon)
    u, s = u_all[:n], s_all[:n]
    velocity = kin.beta * u - kin.gamma * s
    velocity_u = kin.scale * (kin.alpha_at(t[:, None]) - kin.beta * u)
    return Prediction(
        latent_time=t,
        unspliced=kin.scale * u,
        spliced=s,
        velocity=velocity,
        velocity_u=velocity_u,
        projected_spliced=s_all[n:] if project else None,
        info=info,
    )


__all__ = ["VelocityModel", "Prediction", "predict", "Integrator"]
