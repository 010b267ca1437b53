"""Accuracy and cost of every Diffrax solver on fitted kinetics, against the exact closed form.

    python scripts/solver_benchmark.py [--pancreas PATH|none] [--out DIR] [--quick]
    python scripts/solver_benchmark.py --replot DIR/solver_benchmark.csv --out DIR   # redraw the plot only

The kinetics are those fitted by ``velode.tl.fit`` on the synthetic data and on pancreas (default
``../shared/data/pancreas.h5ad`` from the repository root; skipped with a message if absent); the
query times are the cells' latent times from the fitted encoder. Every setting is composed from the
Hydra config (``solver=NAME stepsize=pid|constant stepsize.rtol=... adjoint=...``) and built by the
same function as the ``velode`` command (``velode._run.build_integrator_args``, i.e.
``hydra.utils.instantiate`` of the ``_target_`` entries). Adaptive solvers (bosh3, tsit5, dopri5,
dopri8, kvaerno5) run with the PID controller at each rtol (atol = rtol * 1e-3); the fixed-step
solvers (euler, heun, midpoint) with constant steps, n_steps over [0, 1]. Each runs with each adjoint.

Per row:
  steps, rejected   solver steps (accepted + rejected), summed over the two phases of switching
                    kinetics (induction, repression); for per-gene (vmapped) solves, the steps of the
                    gene that took most
  vf evals          vector-field evaluations of the gene-vectorised field: stages per step of the
                    solver's Butcher tableau, the first-same-as-last stage counted once (Euler: 1,
                    Heun/Midpoint: 2, Bosh3: 3, Tsit5/Dopri5: 6, Dopri8: 13), times the steps (the one
                    evaluation per saved grid point for the Hermite slopes is not counted); none for the
                    implicit Kvaerno5, whose Newton iterations vary
  max err, mean err |numerical - closed form| of u and s at the cells' times, relative to that gene's
                    largest |closed-form value| over the cells, max and mean over cells x genes
  grad err          gradient of sum(s^2) over the kinetics parameters vs the closed-form gradient,
                    max |difference| relative to each parameter leaf's largest |entry|, max over leaves
  fwd ms, grad ms   median wall time of the jitted forward evaluation (u, s at all cells) and of the
                    jitted gradient, after a warm-up call, over up to --repeats calls (fewer if they
                    exceed --budget seconds); compile s = first call - median call
The Pareto front is taken over (gradient wall time, max err): the rows no other row beats on both.

Kvaerno5 runs per gene (each gene its own 2-dim solve, vmapped: velode's default for implicit solvers),
also with atol = rtol, and, for comparison, on the joint (2 x genes) state as before, whose Newton
iterations factorise a dense Jacobian (with --joint-adjoints, default recursive checkpoint, up to
--joint-max-genes genes, or --joint-loose-max-genes at rtol >= 1e-3).

Writes solver_benchmark.csv, solver_benchmark.md and error_vs_cost.png into --out (default
figures/solver_benchmark/ under the repository root); prints the Markdown table.
"""

import argparse
import dataclasses
import gc
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ADAPTIVE = ["bosh3", "tsit5", "dopri5", "dopri8", "kvaerno5"]
FIXED = ["euler", "heun", "midpoint"]
ALL = FIXED + ADAPTIVE
IMPLICIT = ["kvaerno5"]
ADJOINTS = ["recursive_checkpoint", "backsolve"]
T_END = 1.0  # latent time runs in [0, 1]; no projection horizon (the loss's consistency term is off by default)
MARKERS = {"euler": "v", "heun": "^", "midpoint": "<", "bosh3": ">", "tsit5": "o", "dopri5": "s", "dopri8": "D",
           "kvaerno5": "P", "kvaerno5 (joint)": "X"}  # marker and colour per method


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pancreas", default=str(ROOT.parent / "shared" / "data" / "pancreas.h5ad"),
                   help="pancreas .h5ad ('none' to skip)")
    p.add_argument("--out", default=str(ROOT / "figures" / "solver_benchmark"))
    p.add_argument("--quick", action="store_true",
                   help="small case for tests: synthetic 200 cells x 12 genes, a short fit of standard kinetics, "
                        "tsit5 and heun, one adjoint")
    p.add_argument("--kinetics", choices=["dynamical", "standard"], help="kinetics fitted (default: dynamical)")
    p.add_argument("--solvers", nargs="+", choices=ALL, help=f"default: all ({' '.join(ALL)})")
    p.add_argument("--rtols", nargs="+", type=float, help="PID rtols of the adaptive solvers (default 1e-3 1e-6)")
    p.add_argument("--n-steps", nargs="+", type=int, help="constant step counts of the fixed-step solvers "
                   "(default 25 100 400)")
    p.add_argument("--adjoints", nargs="+", choices=ADJOINTS + ["direct"],
                   help="default: recursive_checkpoint backsolve")
    p.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up (median reported)")
    p.add_argument("--budget", type=float, default=5.0, help="stop repeating a measurement after this many seconds")
    p.add_argument("--joint-max-genes", type=int, default=500,
                   help="also run Kvaerno5 on the joint (2 x genes) state, as before per-gene solves, up to this many "
                        "genes")
    p.add_argument("--joint-loose-max-genes", type=int, default=2000,
                   help="... and up to this many genes at rtol >= 1e-3 (tighter joint solves of pancreas take hours)")
    p.add_argument("--joint-adjoints", nargs="+", default=["recursive_checkpoint"], choices=ADJOINTS + ["direct"],
                   help="adjoints of those joint Kvaerno5 runs (its backsolve gradient takes minutes on pancreas)")
    p.add_argument("--implicit-atol-rtol", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the implicit solvers with atol = rtol (first adjoint only): in float32 their Newton "
                        "test on the stage derivatives cannot meet atol = rtol * 1e-3 on fast genes at steady state")
    p.add_argument("--x64", action="store_true", help="double precision (velode trains in float32)")
    p.add_argument("--dpi", type=int, default=100)
    p.add_argument("--replot", metavar="CSV", help="only redraw error_vs_cost.png into --out from a saved CSV")
    args = p.parse_args(argv)
    if args.quick:
        args.solvers = args.solvers or ["tsit5", "heun"]
        args.rtols = args.rtols or [1e-3, 1e-6]
        args.n_steps = args.n_steps or [25, 200]
        args.adjoints = args.adjoints or ["recursive_checkpoint"]
        args.kinetics = args.kinetics or "standard"  # one phase: half the compilation of switching kinetics
        args.pancreas = "none"
        args.repeats = min(args.repeats, 3)
    args.kinetics = args.kinetics or "dynamical"
    args.solvers = args.solvers or ALL
    args.rtols = args.rtols or [1e-3, 1e-6]
    args.n_steps = args.n_steps or [25, 100, 400]
    args.adjoints = args.adjoints or ADJOINTS
    return args


# ---------------------------------------------------------------------------------------------- settings


def settings(args):
    """(solver, label, adjoint, Hydra overrides) of every solver x tolerance or step count x adjoint asked for."""
    out = []
    for solver in args.solvers:
        if solver in FIXED:
            steps = [(f"n_steps={n}", ["stepsize=constant", f"stepsize.n_steps={n}"], args.adjoints)
                     for n in args.n_steps]
        else:
            pid = lambda r, a: ["stepsize=pid", f"stepsize.rtol={r:g}", f"stepsize.atol={a:g}"]  # noqa: E731
            steps = [(f"rtol={r:g}", pid(r, r * 1e-3), args.adjoints) for r in args.rtols]
            if solver in IMPLICIT and args.implicit_atol_rtol:
                steps += [(f"rtol={r:g} atol={r:g}", pid(r, r), args.adjoints[:1]) for r in args.rtols]
        for label, overrides, adjoints in steps:
            for adjoint in adjoints:
                out.append((solver, label, adjoint, [f"solver={solver}", *overrides, f"adjoint={adjoint}"]))
    return out


def build_integrators(args):
    """Integrators built from the composed config exactly as the ``velode`` command builds them."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from velode import _cli
    from velode._run import build_integrator_args
    from velode.model._solve import Integrator

    built = []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=_cli.CONFIG_DIR, version_base="1.3"):
            for solver, label, adjoint, overrides in settings(args):
                cfg = compose(config_name="config", overrides=overrides)
                integ = Integrator(**build_integrator_args(cfg))
                built.append(dict(solver=solver, setting=label, adjoint=adjoint, overrides=" ".join(overrides),
                                  integrator=integ))
    finally:
        GlobalHydra.instance().clear()
    return built


# ---------------------------------------------------------------------------------------------- data


def fitted_cases(args):
    """(name, kinetics, cell times (cells, 1)) of each dataset: the kinetics and latent times of a fit."""
    import jax.numpy as jnp

    import velode

    cases = []
    if args.quick:
        adata = velode.datasets.synthetic(n_cells=200, n_genes=12)
        fit_kw = dict(trainer={"progress": False, "max_steps": 60},
                      model={"probe_steps": 20, "assign_rounds": 0, "pretrain_steps": 50, "cell_rank": 0})
    else:
        adata = velode.datasets.synthetic()
        fit_kw = dict(trainer={"progress": False}, model={"cell_rank": 0})
    fit_kw["kinetics"] = args.kinetics
    sources = [("synthetic", lambda: velode.pp.preprocess(adata, method="none"))]
    if args.pancreas and args.pancreas != "none":
        if Path(args.pancreas).exists():
            sources.append(("pancreas", lambda: velode.pp.preprocess(velode.read(args.pancreas))))
        else:
            print(f"pancreas: {args.pancreas} not found, skipped (give --pancreas PATH)", flush=True)
    for name, load in sources:
        t0 = time.perf_counter()
        a = load()
        result = velode.tl.fit(a, **fit_kw)
        t = result.model.encoder(result.data.features[: result.data.n_cells])
        dtype = jnp.float64 if args.x64 else jnp.float32
        kin = _cast(result.model.kinetics, dtype)
        cases.append(dict(name=name, kinetics=kin, t=jnp.asarray(t, dtype)[:, None], n_cells=a.n_obs,
                          n_genes=a.n_vars))
        print(f"{name}: {a.n_obs} cells x {a.n_vars} genes, fitted in {time.perf_counter() - t0:.1f} s", flush=True)
    return cases


def _cast(tree, dtype):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype) if eqx.is_inexact_array(x) else x, tree)


# ---------------------------------------------------------------------------------------------- measuring


def _forward(kin, t, integ):
    from velode.model._solve import evaluate

    return evaluate(kin, t, integ, t_end=T_END)


def _objective(kin, t, integ):
    return (_forward(kin, t, integ)[1] ** 2).sum()


_JIT = {}


def _jitted():
    if not _JIT:
        import equinox as eqx

        _JIT["forward"] = eqx.filter_jit(_forward)
        _JIT["grad"] = eqx.filter_jit(eqx.filter_grad(_objective))
    return _JIT["forward"], _JIT["grad"]


def timed(f, *args, repeats: int, budget: float):
    """(output, median seconds per call, compile seconds, calls timed): a warm-up call, then the repeats."""
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(f(*args))
    first = time.perf_counter() - t0
    calls = []
    while len(calls) < max(1, repeats) and (not calls or sum(calls) < budget):
        t0 = time.perf_counter()
        out = jax.block_until_ready(f(*args))
        calls.append(time.perf_counter() - t0)
    med = statistics.median(calls)
    if os.environ.get("SOLVER_BENCHMARK_DEBUG"):
        print("    calls", round(first, 3), [round(c, 4) for c in calls], flush=True)
    return out, med, max(first - med, 0.0), len(calls)


def relative_errors(u, s, u_ref, s_ref):
    """Max and mean of |x - ref| / (gene's largest |ref|) over u and s at every cell and gene."""
    import numpy as np

    errs = []
    for x, ref in ((u, u_ref), (s, s_ref)):
        x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
        scale = np.max(np.abs(ref), axis=0, keepdims=True)
        errs.append(np.abs(x - ref) / np.where(scale > 0, scale, 1.0))
    e = np.concatenate(errs, axis=1)
    return float(e.max()), float(e.mean())


def gradient_error(g, g_ref):
    """Largest |g - g_ref| relative to each leaf's largest |g_ref| (leaves with a zero reference skipped)."""
    import equinox as eqx
    import jax
    import numpy as np

    worst = 0.0
    for a, b in zip(jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_inexact_array)),
                    jax.tree_util.tree_leaves(eqx.filter(g_ref, eqx.is_inexact_array))):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = np.max(np.abs(b))
        if scale > 0:
            worst = max(worst, float(np.max(np.abs(a - b)) / scale))
        elif not np.all(a == 0):
            worst = max(worst, float(np.max(np.abs(a))))
    return worst


def measure(case, setting, ref, args):
    """One row: steps, vector-field evaluations, errors and timings of one integrator on one case."""
    import diffrax
    import numpy as np

    from velode.model._stats import num_vf_evals

    forward, grad = _jitted()
    integ = setting["integrator"]
    implicit = isinstance(integ.solver, diffrax.AbstractImplicitSolver)
    state = "per gene" if integ.solves_per_gene else "joint"
    # velode's default is per gene for implicit solvers, joint for explicit ones; the other is named.
    method = setting["solver"] if integ.solves_per_gene == implicit else f"{setting['solver']} ({state})"
    row = {"dataset": case["name"], "solver": setting["solver"], "method": method, "setting": setting["setting"],
           "adjoint": setting["adjoint"], "state": state, "overrides": setting["overrides"], "status": "ok"}
    try:
        (u, s, info), fwd, fwd_compile, n_fwd = timed(forward, case["kinetics"], case["t"], integ,
                                                      repeats=args.repeats, budget=args.budget)
        row.update(steps=int(info.num_steps), accepted=int(info.num_accepted_steps),
                   rejected=int(info.num_rejected_steps))
        vf = num_vf_evals(integ.solver, row["steps"])
        row["vf_evals"] = np.nan if vf is None else vf
        row["fwd_ms"], row["fwd_compile_s"], row["fwd_calls"] = 1e3 * fwd, fwd_compile, n_fwd
        if not bool(info.ok):
            row["status"] = f"failed (max_steps {integ.max_steps} or non-finite)"
            return row
        row["max_err"], row["mean_err"] = relative_errors(u, s, ref["u"], ref["s"])
        g, gt, g_compile, n_g = timed(grad, case["kinetics"], case["t"], integ, repeats=args.repeats,
                                      budget=args.budget)
        row["grad_err"] = gradient_error(g, ref["grad"])
        row["grad_ms"], row["grad_compile_s"], row["grad_calls"] = 1e3 * gt, g_compile, n_g
    except Exception as err:  # a solver that cannot run here is a result, not the end of the benchmark
        row["status"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return row


def reference(case, args):
    """Closed-form values and gradient, and the closed form's own row."""
    from velode.model._solve import Integrator

    forward, grad = _jitted()
    closed = Integrator()
    (u, s, _), fwd, fwd_c, n_f = timed(forward, case["kinetics"], case["t"], closed, repeats=args.repeats,
                                       budget=args.budget)
    g, gt, g_c, n_g = timed(grad, case["kinetics"], case["t"], closed, repeats=args.repeats, budget=args.budget)
    row = {"dataset": case["name"], "solver": "analytic", "method": "analytic", "setting": "closed form",
           "adjoint": "-", "state": "-", "overrides": "solver=analytic", "status": "ok", "steps": 0, "accepted": 0,
           "rejected": 0, "vf_evals": 0, "max_err": 0.0, "mean_err": 0.0, "grad_err": 0.0, "fwd_ms": 1e3 * fwd,
           "fwd_compile_s": fwd_c, "fwd_calls": n_f, "grad_ms": 1e3 * gt, "grad_compile_s": g_c, "grad_calls": n_g}
    return {"u": u, "s": s, "grad": g}, row


def pareto_front(costs, errors):
    """Indices of the points no other point beats on both cost and error, cheapest first (NaNs ignored)."""
    import numpy as np

    costs, errors = np.asarray(costs, float), np.asarray(errors, float)
    ok = np.flatnonzero(np.isfinite(costs) & np.isfinite(errors))
    front = []
    best = math.inf
    for i in sorted(ok, key=lambda i: (costs[i], errors[i])):
        if errors[i] < best:
            front.append(int(i))
            best = errors[i]
    return front


# ---------------------------------------------------------------------------------------------- output


def _fmt(x, kind):
    import numpy as np

    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    if kind == "err":
        return "0" if x == 0 else f"{x:.1e}"
    if kind == "int":
        return f"{int(x):,}"
    if kind == "ms":
        return f"{x:.3g}" if x < 100 else f"{x:,.0f}"
    if kind == "s":
        return f"{x:.1f}"
    return str(x)


def markdown(df, header: str, shapes: dict) -> str:
    """One Markdown table per dataset, under ``header``."""
    lines = [header, ""]
    for name, part in df.groupby("dataset", sort=False):
        lines += [f"#### {name}{shapes.get(name, '')}", "",
                  "| solver | setting | adjoint | state | steps (rejected) | vf evals | max err | mean err | grad err "
                  "| fwd ms | grad ms | compile s (fwd / grad) | Pareto |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for _, r in part.iterrows():
            if r["status"] != "ok":
                lines.append(f"| {r['method']} | {r['setting']} | {r['adjoint']} | {r['state']} | "
                             f"{_fmt(r.get('steps'), 'int')} | | {r['status']} | | | {_fmt(r.get('fwd_ms'), 'ms')} "
                             f"| | | |")
                continue
            steps = f"{_fmt(r['steps'], 'int')} ({_fmt(r['rejected'], 'int')})"
            lines.append(
                f"| {r['method']} | {r['setting']} | {r['adjoint']} | {r['state']} | {steps} | "
                f"{_fmt(r['vf_evals'], 'int')} | {_fmt(r['max_err'], 'err')} | {_fmt(r['mean_err'], 'err')} | "
                f"{_fmt(r['grad_err'], 'err')} | {_fmt(r['fwd_ms'], 'ms')} | {_fmt(r['grad_ms'], 'ms')} | "
                f"{_fmt(r['fwd_compile_s'], 's')} / {_fmt(r['grad_compile_s'], 's')} | "
                f"{'yes' if r['pareto'] else ''} |")
        lines.append("")
    return "\n".join(lines)


def _colour(method):
    return f"C{list(MARKERS).index(method) % 10}" if method in MARKERS else "k"


def plot(df, path, dpi, shapes: dict):
    """Max error against gradient time and against vector-field evaluations, one row of panels per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(dict.fromkeys(df["dataset"]))
    fig, axes = plt.subplots(len(names), 2, figsize=(11, 4.2 * len(names) + 1.0), squeeze=False)
    for row_axes, name in zip(axes, names):
        part = df[(df["dataset"] == name) & (df["status"] == "ok")]
        num = part[part["solver"] != "analytic"]
        closed = part[part["solver"] == "analytic"]
        floor = max(float(num["max_err"][num["max_err"] > 0].min()) / 3, 1e-12) if len(num) else 1e-12
        for ax, cost, label in ((row_axes[0], "grad_ms", "gradient wall time (ms, median)"),
                                (row_axes[1], "vf_evals", "vector-field evaluations (explicit solvers)")):
            have = num[np.isfinite(num[cost].astype(float))]
            for key, grp in have.groupby("method", sort=False):
                for adjoint, sub in grp.groupby("adjoint", sort=False):
                    filled = adjoint == "recursive_checkpoint"
                    ax.scatter(sub[cost], np.maximum(sub["max_err"], floor), marker=MARKERS.get(key, "*"), s=46,
                               label=f"{key}, {adjoint.replace('_', ' ')}",
                               facecolors=None if filled else "none",
                               edgecolors=None if filled else _colour(key), color=_colour(key))
            front = pareto_front(have[cost].astype(float), have["max_err"])
            if front:
                fc = have[cost].to_numpy(float)[front]
                fe = np.maximum(have["max_err"].to_numpy(float)[front], floor)
                ax.step(fc, fe, where="post", color="k", lw=1, alpha=0.6, label="Pareto front", zorder=0)
            if cost == "grad_ms" and len(closed):
                ax.axvline(float(closed["grad_ms"].iloc[0]), color="grey", ls=":", lw=1,
                           label="closed form (exact)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel(label)
            ax.set_ylabel("max relative error vs closed form")
            ax.set_title(f"{name}{shapes.get(name, '')}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
    legend = {}
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(lab, h)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 1.0 / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.x64:
        import jax

        jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax
    import numpy as np
    import pandas as pd

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        df = pd.read_csv(args.replot)
        shapes = {}
        if "cells" in df and "genes" in df:
            shapes = {r.dataset: f" ({int(r.cells):,} cells x {int(r.genes):,} genes)" for r in df.itertuples()}
        plot(df, out / "error_vs_cost.png", args.dpi, shapes)
        print(f"wrote {out / 'error_vs_cost.png'}")
        return df
    load_start = os.getloadavg()[0]
    integrators = build_integrators(args)
    cases = fitted_cases(args)
    rows, shapes = [], {}
    for case in cases:
        shapes[case["name"]] = f" ({case['n_cells']:,} cells x {case['n_genes']:,} genes)"
        ref, closed_row = reference(case, args)
        rows.append({**closed_row, "cells": case["n_cells"], "genes": case["n_genes"]})
        todo = list(integrators)
        for s in integrators:
            rtol = s["integrator"].stepsize_controller.rtol if s["solver"] in IMPLICIT else None
            max_genes = args.joint_loose_max_genes if rtol is not None and rtol >= 1e-3 else args.joint_max_genes
            if s["solver"] in IMPLICIT and s["adjoint"] in args.joint_adjoints and case["n_genes"] <= max_genes:
                todo.append({**s, "integrator": dataclasses.replace(s["integrator"], per_gene=False)})
        for s in todo:
            row = measure(case, s, ref, args)
            row.update(cells=case["n_cells"], genes=case["n_genes"])
            rows.append(row)
            # Every row compiles afresh anyway; dropping the old executables keeps a long run within the
            # process's memory mappings (LLVM fails with "Cannot allocate memory" after ~80 large compiles).
            jax.clear_caches()
            gc.collect()
            pd.DataFrame(rows).to_csv(out / "solver_benchmark.partial.csv", index=False)  # survives a crash
            print(f"  {case['name']:9s} {row['method']:16s} {row['setting']:12s} {row['adjoint']:20s} "
                  f"{row['state']:8s} {row['status']:3s} steps {row.get('steps', '-')} "
                  f"max err {row.get('max_err', float('nan')):.1e} fwd {row.get('fwd_ms', float('nan')):.3g} ms "
                  f"grad {row.get('grad_ms', float('nan')):.3g} ms", flush=True)
    df = pd.DataFrame(rows)
    for col in ["steps", "accepted", "rejected", "vf_evals", "max_err", "mean_err", "grad_err", "fwd_ms", "grad_ms",
                "fwd_compile_s", "grad_compile_s"]:
        if col not in df:
            df[col] = np.nan
        df[col] = df[col].astype(float)
    df["pareto"] = False
    for name in df["dataset"].unique():
        sel = df.index[(df["dataset"] == name) & (df["status"] == "ok") & (df["solver"] != "analytic")]
        front = pareto_front(df.loc[sel, "grad_ms"], df.loc[sel, "max_err"])
        df.loc[sel[front], "pareto"] = True
    df.to_csv(out / "solver_benchmark.csv", index=False)
    (out / "solver_benchmark.partial.csv").unlink(missing_ok=True)
    command = "python scripts/solver_benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"Command: `{command.strip()}`  \n"
              f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()}), "
              f"diffrax {diffrax.__version__}, {'float64' if args.x64 else 'float32'}, load average "
              f"{load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end. Errors against the closed "
              f"form at the cells' latent times, relative to each gene's largest value; times are medians of "
              f"jitted calls after a warm-up; Pareto: no other row has both a lower gradient time and a lower "
              f"max error.")
    text = markdown(df, header, shapes)
    (out / "solver_benchmark.md").write_text(text + "\n")
    plot(df, out / "error_vs_cost.png", args.dpi, shapes)
    print(text)
    print(f"wrote {out / 'solver_benchmark.csv'}, {out / 'solver_benchmark.md'}, {out / 'error_vs_cost.png'}")
    return df


if __name__ == "__main__":
    main()
