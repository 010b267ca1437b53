"""Does transcription as a neural network of time, alpha_g(t), raise CBDir on the pancreas harness?

Fits velode (one seed) on the harness's preprocessed data. Then, on velode's clock, each gene's
transcription becomes a function of time given by a small neural network, and the kinetics are
integrated numerically by Diffrax (Tsit5 on a fixed grid), since they no longer have a closed form:

    alpha_g(t) = a_g * (sigmoid((t_sw_g - t) / w) * exp(b * tanh(n_g(t) / b)) + softplus(m_g(t)))

where (n(t), m(t)) = MLP(t) has two outputs per gene. The first term is velode's induction until the
switch (smoothed over ``w``), scaled up or down over time by at most e^b; the second lets a gene be
transcribed again after its switch, or before it at any level (a transient pulse, a second wave).
The MLP's last layer starts at zero weights and a bias of ``MLP_BASAL`` on m, so the model starts as
velode's fit (with a basal transcription of softplus(MLP_BASAL) = 3e-4 of a_g). Beta, gamma and the
scaling of unspliced stay as velode fitted them; a_g, t_sw and the MLP are fitted by Adam to velode's
reconstruction loss (standardised squared error of unspliced and spliced, full batch), with the
gradient taken through the solver (Diffrax's recursive checkpointing). Optionally the clock moves
too: each cell is placed at its best time on the grid, and the kinetics are fitted again.

The velocity is ds/dt = beta u(t) - gamma s(t) of the solved trajectories at each cell's time, scored
on the same graph and UMAP as velode's own (scripts/benchmark.py). Usage::

    python scripts/neural_alpha.py --pancreas ../shared/data/pancreas.h5ad --seed 0

``--cell-rank`` sets velode's cell-specific transcription for the starting fit; the neural model
has none, so the like-for-like comparison is at the default 0.
"""

import argparse
import sys
import time
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))

import velode  # noqa: E402
from velode._loss import reconstruction as velode_reconstruction  # noqa: E402
from benchmark import preprocess_pancreas  # noqa: E402
from benchmark import score_velocity as score  # noqa: E402

#: The MLP's starting bias on m(t): softplus(-8) = 3.4e-4, a basal transcription of that fraction of a_g.
MLP_BASAL = -8.0


class NeuralTranscription(eqx.Module):
    """alpha_g(t) for every gene at a scalar time t: velode's switch, reshaped over time by an MLP of t."""

    raw_alpha: jax.Array  # (genes,) softplus -> a_g
    switch: jax.Array  # (genes,)
    mlp: eqx.nn.MLP  # 1 -> 2 * genes
    width: float = eqx.field(static=True)  # w, the switch's smoothing (in latent time)
    bound: float = eqx.field(static=True)  # b

    def __init__(self, alpha, switch, *, hidden: int = 64, depth: int = 2, width: float = 0.005,
                 bound: float = 1.0, key):
        alpha = jnp.asarray(alpha)
        n = alpha.shape[0]
        self.raw_alpha = alpha + jnp.log(-jnp.expm1(-alpha))  # softplus^-1, stable for large alpha
        self.switch = jnp.asarray(switch, alpha.dtype)
        mlp = eqx.nn.MLP(1, 2 * n, hidden, depth, activation=jax.nn.tanh, key=key, dtype=alpha.dtype)
        last = mlp.layers[-1]
        bias = jnp.concatenate([jnp.zeros(n, alpha.dtype), jnp.full(n, MLP_BASAL, alpha.dtype)])
        self.mlp = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp,
                               (jnp.zeros_like(last.weight), bias))
        self.width = float(width)
        self.bound = float(bound)

    @property
    def alpha(self):
        return jax.nn.softplus(self.raw_alpha)

    def __call__(self, t):
        out = self.mlp(jnp.reshape(t, (1,)).astype(self.raw_alpha.dtype))
        n, m = jnp.split(out, 2)
        on = jax.nn.sigmoid((self.switch - t) / self.width)
        return self.alpha * (on * jnp.exp(self.bound * jnp.tanh(n / self.bound)) + jax.nn.softplus(m))


class Rates(eqx.Module):
    """What stays as velode fitted it: beta, gamma, the scaling of unspliced and the starting state."""

    beta: jax.Array
    gamma: jax.Array
    scale: jax.Array
    u0: jax.Array
    s0: jax.Array

    @classmethod
    def of(cls, kinetics) -> "Rates":
        return cls(kinetics.beta, kinetics.gamma, kinetics.scale, kinetics.u0, kinetics.s0)


def solve_grid(transcription: NeuralTranscription, rates: Rates, n_grid: int):
    """(u, s) of every gene at the n_grid + 1 times k / n_grid of [0, 1]: Tsit5 with step 1 / n_grid."""

    def field(t, y, args):
        u, s = y
        return transcription(t) - rates.beta * u, rates.beta * u - rates.gamma * s

    ts = jnp.linspace(0.0, 1.0, n_grid + 1, dtype=rates.beta.dtype)
    sol = diffrax.diffeqsolve(diffrax.ODETerm(field), diffrax.Tsit5(), 0.0, 1.0, 1.0 / n_grid, (rates.u0, rates.s0),
                              saveat=diffrax.SaveAt(ts=ts), max_steps=n_grid + 8,
                              adjoint=diffrax.RecursiveCheckpointAdjoint())
    return sol.ys


def at_times(grid: jax.Array, t: jax.Array) -> jax.Array:
    """Rows of ``grid`` (n_grid + 1, genes) read at times t (cells,) in [0, 1], linearly interpolated."""
    n = grid.shape[0] - 1
    x = jnp.clip(t * n, 0.0, n * (1 - 1e-6))
    k = jnp.floor(jax.lax.stop_gradient(x)).astype(jnp.int32)
    th = (x - k)[:, None]
    return grid[k] * (1 - th) + grid[k + 1] * th


def states(transcription, rates, t, n_grid: int):
    """(u, s) of every gene at each cell's time t (cells,), from one solve; u in model (unscaled) units."""
    ug, sg = solve_grid(transcription, rates, n_grid)
    return at_times(ug, t), at_times(sg, t)


def reconstruction(transcription, rates, t, ms, mu, inv_sd_s, inv_sd_u, n_grid: int):
    """velode's reconstruction loss (each gene's u and s standardised by its sd over cells), full batch."""
    u, s = states(transcription, rates, t, n_grid)
    return velode_reconstruction(rates.scale * u, s, mu, ms, inv_sd_u, inv_sd_s)


def velocity(transcription, rates, t, n_grid: int):
    u, s = states(transcription, rates, t, n_grid)
    return rates.beta * u - rates.gamma * s


@eqx.filter_jit
def loss_and_velocity(transcription, rates, t, ms, mu, inv_sd_s, inv_sd_u, n_grid: int):
    """:func:`reconstruction` and :func:`velocity` from one solve (one compiled program)."""
    u, s = states(transcription, rates, t, n_grid)
    return velode_reconstruction(rates.scale * u, s, mu, ms, inv_sd_u, inv_sd_s), rates.beta * u - rates.gamma * s


def best_times(transcription, rates, ms, mu, inv_sd_s, inv_sd_u, n_grid: int, block: int = 256):
    """Each cell's best time on the solve's grid (least squares, genes standardised), in blocks of cells."""
    ug, sg = solve_grid(transcription, rates, n_grid)
    cost = jax.jit(lambda m, u: jnp.argmin(
        jnp.sum(((rates.scale * ug)[None] - u[:, None]) ** 2 * inv_sd_u ** 2 + (sg[None] - m[:, None]) ** 2
                * inv_sd_s ** 2, axis=-1), axis=1))
    idx = np.concatenate([np.asarray(cost(ms[i:i + block], mu[i:i + block])) for i in range(0, ms.shape[0], block)])
    return jnp.asarray(idx / n_grid, rates.beta.dtype)


def train(transcription, rates, t, ms, mu, inv_sd_s, inv_sd_u, *, steps: int, lr: float, n_grid: int, log=print):
    """``steps`` Adam steps on a_g, t_sw and the MLP; returns the fitted transcription and the losses."""
    opt = optax.adam(lr)
    params, static = eqx.partition(transcription, eqx.is_inexact_array)
    state = opt.init(params)

    @eqx.filter_jit
    def step(params, state):
        loss, grad = eqx.filter_value_and_grad(
            lambda p: reconstruction(eqx.combine(p, static), rates, t, ms, mu, inv_sd_s, inv_sd_u, n_grid))(params)
        updates, state = opt.update(grad, state, params)
        return eqx.apply_updates(params, updates), state, loss

    losses, t0 = [], time.perf_counter()
    for i in range(steps):
        params, state, loss = step(params, state)
        losses.append(float(loss))
        if (i + 1) % 100 == 0 or i + 1 == steps:
            log(f"  step {i + 1}/{steps}: loss {losses[-1]:.5f} ({time.perf_counter() - t0:.0f} s)")
    return eqx.combine(params, static), losses


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pancreas", required=True, help="path of the pancreas .h5ad (raw spliced/unspliced counts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cell-rank", type=int, default=0, help="velode's model.cell_rank for the starting fit")
    p.add_argument("--steps", type=int, default=300, help="Adam steps of the neural transcription")
    p.add_argument("--rounds", type=int, default=2, help="rounds of 'each cell to its best time, fit again'")
    p.add_argument("--round-steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--grid", type=int, default=512, help="solver steps over [0, 1]")
    args = p.parse_args(argv)
    log = lambda msg: print(msg, flush=True)  # noqa: E731

    a = preprocess_pancreas(args.pancreas, use_scvelo=True)
    res = velode.tl.fit(a, seed=args.seed, trainer={"progress": False}, model={"cell_rank": args.cell_rank})
    rates = Rates.of(res.model.kinetics)
    t = jnp.asarray(a.obs["latent_time"].to_numpy(), jnp.float32)
    ms = jnp.asarray(np.asarray(a.layers["Ms"]), jnp.float32)
    mu = jnp.asarray(np.asarray(a.layers["Mu"]), jnp.float32)
    inv = lambda x: 1.0 / jnp.maximum(x.std(0), 1e-6)  # noqa: E731
    data = (ms, mu, inv(ms), inv(mu))

    rows = {"velode (closed form)": {**score(a, a.layers["velocity"]), "loss": float("nan")}}
    tr = NeuralTranscription(res.model.kinetics.alpha, res.model.kinetics.switch_time(),
                             key=jax.random.PRNGKey(args.seed))
    def stage(name, latent_time=None):  # the loss and the scores of the current fit, from one solve
        loss, v = loss_and_velocity(tr, rates, t, *data, args.grid)
        rows[name] = {**score(a, v, latent_time), "loss": float(loss)}
        return float(loss)

    start = stage("start: velode's kinetics, solved by Diffrax")
    log(f"start: loss {start:.5f}")
    tr, _ = train(tr, rates, t, *data, steps=args.steps, lr=args.lr, n_grid=args.grid, log=log)
    stage(f"neural alpha(t), {args.steps} steps, clock fixed")
    for r in range(args.rounds):
        t_new = best_times(tr, rates, *data, args.grid)
        log(f"round {r + 1}: mean |change of latent time| {float(jnp.mean(jnp.abs(t_new - t))):.4f}")
        t = t_new
        tr, _ = train(tr, rates, t, *data, steps=args.round_steps, lr=args.lr, n_grid=args.grid, log=log)
        stage(f"the same, clock moved ({r + 1} rounds)", t)

    keys = ["loss", "CBDir"] + [k for k in rows["velode (closed form)"] if k.startswith("CBDir ") and "UMAP" not in k]
    keys += ["ICCoh", "stage Spearman"]
    print("| velocity | " + " | ".join(k.replace("CBDir ", "") for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join("-" if not np.isfinite(row[k]) else f"{row[k]:.4f}" if k == "loss" else f"{row[k]:.3f}"
                                          for k in keys) + " |")
    return rows


if __name__ == "__main__":
    main()
