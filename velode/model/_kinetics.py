"""Per-gene splicing kinetics as Equinox modules.

Each gene follows du/dt = alpha(t) - beta*u, ds/dt = beta*u - gamma*s with u, s in the units of the
fitted spliced layer; observed unspliced is modelled as scale * u (scVelo's per-gene scaling of u).
Transcription alpha(t) is piecewise constant: on from t=0 (``StandardKinetics``) and, for
``DynamicalKinetics``, switched off at a learned per-gene time.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float


def _inv_softplus(x):
    x = jnp.asarray(x)
    return x + jnp.log(-jnp.expm1(-x))


def _logit(p):
    p = jnp.asarray(p)
    return jnp.log(p) - jnp.log1p(-p)


def vector_field(t, y, args):
    """Splicing vector field over all genes: y = (u, s), args = (alpha, beta, gamma), each (genes,)."""
    del t
    u, s = y
    alpha, beta, gamma = args
    return alpha - beta * u, beta * u - gamma * s


class AbstractKinetics(eqx.Module):
    """Rates kept positive through softplus (alpha) and a bounded sigmoid (beta, gamma).

    Bounding beta and gamma by ``rate_max`` keeps the system's stiffness, and so an adaptive
    solver's step count, under control.
    """

    raw_alpha: Float[Array, " genes"]
    raw_beta: Float[Array, " genes"]
    raw_gamma: Float[Array, " genes"]
    log_scale: Float[Array, " genes"]
    raw_alpha0: Float[Array, " genes"]
    rate_max: float = eqx.field(static=True)

    @property
    def alpha(self):
        return jax.nn.softplus(self.raw_alpha)

    @property
    def beta(self):
        return self.rate_max * jax.nn.sigmoid(self.raw_beta)

    @property
    def gamma(self):
        return self.rate_max * jax.nn.sigmoid(self.raw_gamma)

    @property
    def scale(self):
        return jnp.exp(self.log_scale)

    @property
    def alpha0(self):
        """Transcription before t = 0: cells start at its steady state (alpha0/beta, alpha0/gamma).

        Starting on the steady-state line (not anywhere) is what tells induction from repression,
        and so the direction of time, on genes that only go up or only go down.
        """
        return jax.nn.softplus(self.raw_alpha0)

    @property
    def u0(self):
        return self.alpha0 / self.beta

    @property
    def s0(self):
        return self.alpha0 / self.gamma

    @property
    def n_genes(self) -> int:
        return self.raw_alpha.shape[0]

    @abc.abstractmethod
    def switch_time(self) -> Float[Array, " genes"] | None:
        """Per-gene time at which transcription switches off, or None if it never does."""

    def onset_time(self) -> Float[Array, " genes"] | None:
        """Per-gene time at which transcription switches from alpha0 to alpha, or None for t = 0."""
        return None

    def alpha_at(self, t):
        """Transcription rate at time(s) t, shape broadcast of t against (genes,)."""
        t_sw = self.switch_time()
        if t_sw is None:
            return jnp.broadcast_to(self.alpha, jnp.broadcast_shapes(jnp.shape(t), self.alpha.shape))
        a = jnp.where(t < t_sw, self.alpha, 0.0)
        t_on = self.onset_time()
        return a if t_on is None else jnp.where(t < t_on, self.alpha0, a)


def _init_fields(n_genes, rate_max, alpha, beta, gamma, scale, alpha0):
    full = lambda v: jnp.broadcast_to(jnp.asarray(v, dtype=float), (n_genes,))  # noqa: E731
    return dict(
        raw_alpha=_inv_softplus(jnp.maximum(full(alpha), 1e-6)),
        raw_beta=_logit(jnp.clip(full(beta) / rate_max, 1e-6, 1 - 1e-6)),
        raw_gamma=_logit(jnp.clip(full(gamma) / rate_max, 1e-6, 1 - 1e-6)),
        log_scale=jnp.log(full(scale)),
        raw_alpha0=_inv_softplus(jnp.maximum(full(alpha0), 1e-6)),
        rate_max=float(rate_max),
    )


class StandardKinetics(AbstractKinetics):
    """Constant transcription per gene: each gene approaches its steady state alpha/beta, alpha/gamma."""

    def __init__(self, n_genes: int, *, alpha=1.0, beta=1.0, gamma=1.0, scale=1.0, alpha0=1e-3,
                 rate_max: float = 50.0):
        for name, value in _init_fields(n_genes, rate_max, alpha, beta, gamma, scale, alpha0).items():
            setattr(self, name, value)

    def switch_time(self):
        return None


class DynamicalKinetics(AbstractKinetics):
    """Induction (alpha on) until a learned per-gene switch time, then repression (alpha = 0).

    With ``onset`` (genes,) each gene also has a learned onset: it rests at the steady state of alpha0 until its
    onset time (a learned fraction of its switch time), so a gene induced late in the process does not
    have to start changing at t = 0.
    """

    raw_switch: Float[Array, " genes"]
    raw_onset: Float[Array, " genes"] | None  # None: induction starts at t = 0
    switch_max: float = eqx.field(static=True)

    def __init__(self, n_genes: int, *, alpha=1.0, beta=1.0, gamma=1.0, scale=1.0, alpha0=1e-3,
                 switch=0.5, onset=None, rate_max: float = 50.0, switch_max: float = 1.5):
        for name, value in _init_fields(n_genes, rate_max, alpha, beta, gamma, scale, alpha0).items():
            setattr(self, name, value)
        sw = jnp.broadcast_to(jnp.asarray(switch, dtype=float), (n_genes,))
        self.raw_switch = _logit(jnp.clip(sw / switch_max, 1e-4, 1 - 1e-4))
        if onset is None:
            self.raw_onset = None
        else:
            on = jnp.broadcast_to(jnp.asarray(onset, dtype=float), (n_genes,))
            self.raw_onset = _logit(jnp.clip(on / jnp.maximum(sw, 1e-6), 1e-3, 1 - 1e-3))
        self.switch_max = float(switch_max)

    def switch_time(self):
        return self.switch_max * jax.nn.sigmoid(self.raw_switch)

    def with_onset(self, onset) -> "DynamicalKinetics":
        """The same kinetics with a learnable onset of induction, started at ``onset`` (genes,)."""
        frac = jnp.clip(jnp.asarray(onset, dtype=self.raw_switch.dtype) / jnp.maximum(self.switch_time(), 1e-6),
                        1e-3, 1 - 1e-3)
        return eqx.tree_at(lambda k: k.raw_onset, self, _logit(frac), is_leaf=lambda x: x is None)

    def onset_time(self):
        if self.raw_onset is None:
            return None
        return self.switch_time() * jax.nn.sigmoid(self.raw_onset)
