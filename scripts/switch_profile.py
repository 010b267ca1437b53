"""Is a gene's fitted switch time the best one for it on the fitted clock?

Fits velode (one seed) on the benchmark's preprocessed pancreas data, then, for one gene, holds the
clock (latent times) and the cell-specific factors of the cells fixed and tries other switch times.
At each switch time it reports the gene's loss with its other parameters as fitted, and after
re-fitting them (rates, scale of u, starting state, its cell-specific loadings; Adam, full batch, the
lowest loss seen is kept). On the clock held fixed the loss is a sum of one term per gene, so this
is the gene's own profile of the loss over its switch time. With ``--score`` it also puts each
re-fitted velocity of the gene in place of the fitted one and scores CBDir on the benchmark's graph
and UMAP. Usage::

    python scripts/switch_profile.py --pancreas ../shared/data/pancreas.h5ad --seed 0 --gene Spp1 --score

``--switch-search 0`` profiles the fit as it stands before velode's own search over switch times
(velode._switch), which moves genes out of such early switches.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import velode  # noqa: E402

DEFAULT_TIMES = (0.0005, 0.001, 0.002, 0.004, 0.007, 0.01, 0.013, 0.016, 0.02, 0.03, 0.05)


def gene_model(result, g: int):
    """The fitted model restricted to gene ``g`` (same encoder and cell factors) and the gene's data."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    model, data = result.model, result.data
    n_genes = model.kinetics.n_genes
    one = lambda x: x[g : g + 1] if eqx.is_array(x) and x.shape == (n_genes,) else x  # noqa: E731
    kin = jax.tree_util.tree_map(one, model.kinetics)
    mod = model.modulator
    if mod is not None:
        mod = eqx.tree_at(lambda m: m.loadings, mod, mod.loadings[:, g : g + 1])
    sub = type(model)(model.features, model.encoder, kin, mod)
    column = lambda x: jnp.asarray(np.asarray(x)[:, g : g + 1])  # noqa: E731
    arrays = (column(data.obs_u), column(data.obs_s), data.inv_sd_u[g : g + 1], data.inv_sd_s[g : g + 1],
              data.gene_weight[g : g + 1])
    return sub, arrays


def profile(result, g: int, times, steps: int = 400, lr: float = 0.02):
    """Per switch time in ``times``: (loss as fitted, loss re-fitted, the re-fitted one-gene model)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    from velode._train import loss_terms
    from velode.model._kinetics import _logit

    if result.model.kinetics.switch_time() is None:
        raise SystemExit("error: the fit has no switch times (model=standard); profile a dynamical fit")
    if result.data.sparse:
        raise SystemExit("error: this diagnostic needs dense data")
    sub, (obs_u, obs_s, inv_u, inv_s, w) = gene_model(result, g)
    data = result.data

    def loss(m):
        return loss_terms(m, data.features, obs_u, obs_s, data.rows, data.mask, inv_u, inv_s, w, result.integrator,
                          result.loss_cfg, data.chunk)[0]

    def free(m):  # what is re-fitted at a fixed switch time
        k = m.kinetics
        return (k.raw_alpha, k.raw_beta, k.raw_gamma, k.log_scale, k.raw_alpha0,
                None if m.modulator is None else m.modulator.loadings)

    opt = optax.adam(lr)

    @eqx.filter_jit
    def refit(m):
        lf = lambda p: loss(eqx.tree_at(free, m, p, is_leaf=lambda x: x is None))  # noqa: E731
        p0 = free(m)

        def body(carry, _):
            p, state, best, best_p = carry
            value, grads = jax.value_and_grad(lf)(p)
            better = value < best  # the parameters p have loss value: keep the lowest seen
            best_p = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), p, best_p)
            updates, state = opt.update(grads, state)
            return (optax.apply_updates(p, updates), state, jnp.minimum(value, best), best_p), None

        (p, _, best, best_p), _ = jax.lax.scan(body, (p0, opt.init(p0), jnp.inf, p0), None, length=steps)
        last = lf(p)
        best_p = jax.tree_util.tree_map(lambda a, b: jnp.where(last < best, a, b), p, best_p)
        return eqx.tree_at(free, m, best_p, is_leaf=lambda x: x is None)

    rows = []
    t_max = sub.kinetics.switch_max
    for t_sw in times:
        at = eqx.tree_at(lambda m: m.kinetics.raw_switch, sub, _logit(jnp.full((1,), float(t_sw) / t_max)))
        fitted = float(loss(at))
        again = refit(at) if steps > 0 else at
        rows.append((float(t_sw), fitted, float(loss(again)), again))
    return rows


def gene_velocity(result, sub) -> np.ndarray:
    """The one-gene model's velocity (ds/dt) in every cell, in the units of ``layers["velocity"]``."""
    from velode.model._model import predict

    return np.asarray(predict(sub, result.data.features[: result.data.n_cells], result.integrator).velocity)[:, 0]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pancreas", required=True, help="pancreas .h5ad (preprocessed as scripts/benchmark.py does)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gene", default="Spp1")
    ap.add_argument("--times", type=float, nargs="+", default=list(DEFAULT_TIMES), help="switch times to try")
    ap.add_argument("--steps", type=int, default=400, help="Adam steps of each re-fit")
    ap.add_argument("--cluster", default="Ductal", help="report the gene's mean velocity in this cluster")
    ap.add_argument("--score", action="store_true", help="score CBDir with each re-fitted velocity of the gene")
    ap.add_argument("--max-steps", type=int, default=None, help="cap velode's training steps (tests)")
    ap.add_argument("--switch-search", type=float, default=None,
                    help="model.switch_search of the fit (default: velode's; 0: the fit before any search)")
    args = ap.parse_args(argv)

    from benchmark import pancreas_scores, preprocess_pancreas, project

    base = preprocess_pancreas(args.pancreas, True)
    if args.gene not in base.var_names:
        raise SystemExit(f"error: {args.gene!r} is not among the {base.n_vars} genes of the preprocessed data")
    a = base.copy()
    trainer = {"progress": False} if args.max_steps is None else {"progress": False, "max_steps": args.max_steps}
    model = {} if args.switch_search is None else {"switch_search": args.switch_search}
    result = velode.tl.fit(a, seed=args.seed, trainer=trainer, model=model)
    g = int(np.flatnonzero(a.var_names == args.gene)[0])
    fitted_t = float(np.asarray(result.model.kinetics.switch_time())[g])
    cells = np.asarray(a.obs["clusters"] == args.cluster)
    t_cells = np.asarray(a.obs["latent_time"], float)
    times = sorted(set(args.times) | {fitted_t})

    def scored(velocity=None):
        b = a.copy()
        if velocity is not None:
            v = np.array(b.layers["velocity"])
            v[:, g] = velocity
            b.layers["velocity"] = v
        project(b, True)
        s = pancreas_scores(b)
        return s["CBDir"], s[f"CBDir {args.cluster} -> Ngn3 low EP"] if args.cluster == "Ductal" else np.nan

    print(f"seed {args.seed}: {args.gene} switches at {fitted_t:.4f} of the clock; "
          f"{np.mean(t_cells[cells] > fitted_t):.0%} of the {args.cluster} cells come after it")
    header = f"| switch time | loss as fitted | loss re-fitted | {args.cluster} cells after it | " \
             f"mean velocity in {args.cluster} |"
    if args.score:
        base_cb = scored()
        print(f"as fitted: CBDir {base_cb[0]:.3f}, Ductal -> Ngn3 low EP {base_cb[1]:.3f}")
        header += " CBDir | Ductal -> Ngn3 low EP |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    out = []
    for t_sw, fitted, refitted, sub in profile(result, g, times, args.steps):
        v = gene_velocity(result, sub)
        row = {"switch time": t_sw, "loss as fitted": fitted, "loss re-fitted": refitted,
               "after": float(np.mean(t_cells[cells] > t_sw)), "velocity": float(v[cells].mean())}
        mark = " (fitted)" if t_sw == fitted_t else ""
        line = (f"| {t_sw:.4f}{mark} | {fitted:.5f} | {refitted:.5f} | {row['after']:.0%} | "
                f"{row['velocity']:.2f} |")
        if args.score:
            row["CBDir"], row["Ductal -> Ngn3 low EP"] = scored(v)
            line += f" {row['CBDir']:.3f} | {row['Ductal -> Ngn3 low EP']:.3f} |"
        print(line, flush=True)
        out.append(row)
    return out


if __name__ == "__main__":
    main()
