"""Measure velode against the core targets: synthetic, switching simulation, pancreas.

    python scripts/benchmark_targets.py [--pancreas ../shared/data/pancreas.h5ad] [--seeds 0 1 2]

Prints one table (Markdown); every figure comes from the fits made by this run.
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np

import velode

STAGES = {"Ductal": 0, "Ngn3 low EP": 1, "Ngn3 high EP": 2, "Pre-endocrine": 3,
          "Alpha": 4, "Beta": 4, "Delta": 4, "Epsilon": 4}
ENDOCRINE = ["Alpha", "Beta", "Delta", "Epsilon"]


def quiet(**trainer):
    return {"progress": False, **trainer}


def synthetic(seed):
    a = velode.pp.preprocess(velode.datasets.synthetic(), method="none")
    r = velode.tl.fit(a, seed=seed, trainer=quiet())
    m = velode.metrics.truth_metrics(a)
    return {"time Spearman": m["latent_time_spearman"], "fit s": r.fit_seconds}


def simulation(seed, n_cells, n_genes):
    a = velode.pp.preprocess(velode.datasets.simulation(n_cells=n_cells, n_genes=n_genes, seed=seed), method="none")
    r = velode.tl.fit(a, seed=seed, trainer=quiet())
    m = velode.metrics.truth_metrics(a)
    return {
        "time Spearman": m["latent_time_spearman"],
        "sign agreement": m["velocity_sign_agreement"],
        "cosine": m["velocity_cosine"],
        "velocity genes": m["fraction_velocity_genes"],
        "fit s": r.fit_seconds,
    }


def pancreas(path, seed):
    a = velode.pp.preprocess(velode.read(path))
    r = velode.tl.fit(a, seed=seed, trainer=quiet())
    t = a.obs["latent_time"]
    med = t.groupby(a.obs["clusters"], observed=True).median()
    ductal_first = bool(med["Ductal"] == med.min())
    endocrine_last = bool(min(med[c] for c in ENDOCRINE) >= max(med[c] for c in med.index if c not in ENDOCRINE))
    return {
        "stage Spearman": velode.metrics.stage_spearman(a, STAGES),
        "Ductal first": ductal_first,
        "endocrine last": endocrine_last,
        "velocity genes": int(a.var["velocity_genes"].sum()),
        "fit s": r.fit_seconds,
        "compile s": r.compile_seconds,
        "steps": r.state.step,
    }


def table(name, rows):
    keys = list(rows[0][1])
    lines = [f"\n### {name}", "", "| seed | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for seed, row in rows:
        lines.append(f"| {seed} | " + " | ".join(_fmt(row[k]) for k in keys) + " |")
    if len(rows) > 1:
        lines.append("| mean ± sd | " + " | ".join(_agg([r[k] for _, r in rows]) for k in keys) + " |")
    return "\n".join(lines)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 2 else f"{v:.1f}"
    return str(v)


def _agg(vals):
    if all(isinstance(v, bool) for v in vals):
        return f"{sum(vals)}/{len(vals)}"
    v = np.asarray(vals, float)
    return f"{_fmt(float(v.mean()))} ± {_fmt(float(v.std()))}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "pancreas.h5ad"
    ap.add_argument("--pancreas", default=str(default), help="pancreas .h5ad (skipped if absent)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--sim-cells", type=int, default=1000)
    ap.add_argument("--sim-genes", type=int, default=100)
    args = ap.parse_args()
    print(f"velode {velode.__version__}, {os.cpu_count()} CPU cores")
    t0 = time.perf_counter()
    print(table("synthetic (500 x 200, seed example)", [(s, synthetic(s)) for s in args.seeds]))
    print(table(f"switching simulation ({args.sim_cells} x {args.sim_genes})",
                [(s, simulation(s, args.sim_cells, args.sim_genes)) for s in args.seeds]))
    if Path(args.pancreas).exists():
        print(table("pancreas (3,696 cells)", [(s, pancreas(args.pancreas, s)) for s in args.seeds]))
    else:
        print(f"\n(pancreas skipped: {args.pancreas} not found)")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
