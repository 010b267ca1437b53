"""Cost of one training step's loss and gradient, side by side in one process.

Compares, on the same model and the same 512 cells (the default minibatch):
- the closed form differentiated operation by operation (the generic path, still used for the consistency
  loss and numerical solvers) against the gradient computed in the same pass as the loss (``model._fused``);
- XLA's default CPU options against ``velode._settings.CPU_STEP_OPTIONS`` (the training step's).

The variants are timed in alternation (``--reps`` rounds), so a busy machine slows them alike; the table
gives the median per round and the ratio to the first variant.

    python scripts/step_benchmark.py                                    # the built-in switching simulation
    python scripts/step_benchmark.py --pancreas ../shared/data/pancreas.h5ad
"""

import argparse
import statistics
import time

import equinox as eqx
import jax
import numpy as np


def _data(args):
    import velode

    if args.pancreas:
        from benchmark import preprocess_pancreas

        return preprocess_pancreas(args.pancreas, use_scvelo=False)
    a = velode.datasets.simulation(n_cells=args.cells, n_genes=args.genes, seed=0)
    a.layers["Ms"], a.layers["Mu"] = a.layers["spliced"], a.layers["unspliced"]
    return a


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pancreas", help="path to the pancreas .h5ad (default: the built-in simulation)")
    ap.add_argument("--cells", type=int, default=3000, help="cells of the simulation")
    ap.add_argument("--genes", type=int, default=1000, help="genes of the simulation")
    ap.add_argument("--batch", type=int, default=512, help="cells per step")
    ap.add_argument("--reps", type=int, default=7, help="alternating rounds of timing")
    ap.add_argument("--calls", type=int, default=20, help="calls per variant per round")
    args = ap.parse_args(argv)

    import velode
    from velode import _settings, _train
    from velode.model import _fused

    adata = _data(args)
    fit = velode.tl.fit(adata, trainer={"progress": False, "max_steps": 60},
                        model={"probe_steps": 10, "assign_rounds": 0, "cell_phase": 0.5})
    data = fit.data
    rows = np.random.default_rng(0).permutation(data.n_cells)[: args.batch].astype(np.int32)
    rows, mask = _train.padded_rows(rows, data.chunk)
    arrays = data.arrays()
    models = {"clock": eqx.tree_at(lambda m: m.modulator, fit.model, None, is_leaf=lambda x: x is None),
              "cell-specific": fit.model}
    supported = _fused.supported
    variants = {
        "autodiff, XLA defaults": (False, None),
        "autodiff, step options": (False, _settings.CPU_STEP_OPTIONS),
        "one pass, XLA defaults": (True, None),
        "one pass, step options (default)": (True, _settings.CPU_STEP_OPTIONS),
    }
    print(f"{adata.n_obs} cells x {adata.n_vars} genes; {args.batch} cells per step; JAX {jax.__version__}, "
          f"{jax.devices()[0].platform}")
    results = {}
    for name, model in models.items():
        params, static = eqx.partition(model, eqx.is_inexact_array)
        compiled, compile_s = {}, {}
        try:
            for label, (one_pass, options) in variants.items():
                _fused.supported = supported if one_pass else (lambda kin: False)

                def loss(p):
                    return _train.loss_terms(eqx.combine(p, static), arrays[0], arrays[1], arrays[2], rows, mask,
                                             arrays[5], arrays[6], arrays[7], fit.integrator, fit.loss_cfg,
                                             data.chunk)[0]

                t0 = time.perf_counter()
                compiled[label] = jax.jit(jax.value_and_grad(loss), compiler_options=options).lower(params).compile()
                compile_s[label] = time.perf_counter() - t0
                jax.block_until_ready(compiled[label](params))
        finally:  # the path choice is put back even if a variant fails (the script also runs inside tests)
            _fused.supported = supported
        # Every variant computes the same loss and gradient (up to float32 rounding): largest difference from the
        # first, relative to each leaf's largest entry.
        outs = {label: jax.tree_util.tree_leaves(fn(params)) for label, fn in compiled.items()}
        ref = outs[next(iter(variants))]
        agree = {label: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) / max(float(np.max(np.abs(y))), 1e-30)
                            for x, y in zip(leaves, ref) if np.any(np.asarray(y)))
                 for label, leaves in outs.items()}
        times = {label: [] for label in variants}
        for _ in range(args.reps):
            for label, fn in compiled.items():
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    out = fn(params)
                jax.block_until_ready(out)
                times[label].append((time.perf_counter() - t0) / args.calls * 1e3)
        base = statistics.median(times[next(iter(variants))])
        print(f"\n{name} model: loss and gradient of one step\n")
        print("| variant | ms per step (median) | range | vs first | compile s | max rel. difference |")
        print("|---|---|---|---|---|---|")
        rows_out = {}
        for label, ts in times.items():
            med = statistics.median(ts)
            rows_out[label] = {"ms": med, "ratio": med / base, "compile_s": compile_s[label], "difference": agree[label]}
            print(f"| {label} | {med:.2f} | {min(ts):.2f}-{max(ts):.2f} | {med / base:.2f} | {compile_s[label]:.1f} | "
                  f"{agree[label]:.1e} |")
        results[name] = rows_out
    return results


if __name__ == "__main__":
    main()
