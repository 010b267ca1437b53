"""How velode's cost grows with the number of cells: the switching simulation at 2,000 genes.

    python scripts/bench_scale.py [--cells 3700 20000 100000 300000] [--genes 2000] [--out docs/scale]

Each size runs in its own process (so its peak resident memory is its own) and:

1. simulates the cells (``velode.datasets.simulation``, no truth layers: the truth is recomputed per
   block of cells for the metrics), fits them with ``velode.tl.fit`` at the default settings
   (3,000 minibatch steps of 512 cells, closed form) and times it: ``fit s`` is the whole fit,
   outputs for every cell included;
2. times, with the fitted model, one epoch of training steps (``ceil(cells / 512)`` minibatch
   steps, compilation excluded) and one full pass of the loss over every cell;
3. reads the peak RSS of the process (the simulated data included) and the truth metrics.

``--counts dense|sparse`` fits low-depth Poisson counts drawn from the simulation instead (about 30%
of the entries non-zero, like real spliced counts), given as dense arrays or as sparse CSR matrices
(densified by the fit one batch of cells at a time); the same seed draws the same counts for both.
``fit peak RSS MB`` is the peak resident memory from the start of the fit on (the data made, and
the memory used to make them released): what the fit itself holds.

Prints a Markdown table, the log-log slope of the epoch and full-pass times between the sizes of
20,000 cells and up, and writes ``scale.csv``, ``scale.md`` and ``scale.png`` (log-log plot) into
``--out``.
"""

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

BATCH = 512
#: Poisson counts (``--counts``): the simulated values times this, about 30% of the entries non-zero.
DEPTH = 0.3


def _peak_since_reset_mb() -> float:
    """VmHWM (peak resident memory since the last :func:`_reset_peak`) in MiB, or NaN where unreadable."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset the peak resident memory (VmHWM) to the current one
    except OSError:
        pass


def _counts(a, sparse: bool, seed: int) -> None:
    """Replace the simulated layers by Poisson counts (dense float32 or CSR), drawn a block of cells at a time."""
    import numpy as np
    import scipy.sparse as sp

    from velode import _aligned

    rng = np.random.default_rng(seed)
    for key in ("spliced", "unspliced"):
        x = a.layers[key]
        out = [] if sparse else _aligned.empty(x.shape)
        for lo in range(0, x.shape[0], 10_000):
            block = rng.poisson(x[lo : lo + 10_000] * DEPTH).astype(np.float32)
            if sparse:
                out.append(sp.csr_matrix(block))
            else:
                out[lo : lo + 10_000] = block
        a.layers[key] = sp.vstack(out, format="csr") if sparse else out
        del x


def worker(n_cells: int, n_genes: int, seed: int, counts: str = "none") -> dict:
    import gc
    import resource

    import jax
    import numpy as np

    import velode
    from velode import _matrix
    from velode._train import Trainer, TrainerConfig, loss_value

    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731  (MiB on Linux)
    t0 = time.perf_counter()
    a = velode.datasets.simulation(n_cells=n_cells, n_genes=n_genes, seed=seed, truth_layers=False)
    if counts != "none":
        _counts(a, counts == "sparse", seed)
    # The layers are fitted as they are (preprocess=none without its copies).
    a.layers["Ms"], a.layers["Mu"] = a.layers["spliced"], a.layers["unspliced"]
    simulate_s = time.perf_counter() - t0
    data_mb = sum(_matrix.nbytes(a.layers[k]) for k in ("spliced", "unspliced")) / 2**20
    gc.collect()
    _reset_peak()
    t0 = time.perf_counter()
    r = velode.tl.fit(a, seed=seed, trainer={"progress": False, "batch_size": BATCH})
    fit_s = time.perf_counter() - t0
    fit_peak = _peak_since_reset_mb()
    m = velode.metrics.truth_metrics(a)

    # One epoch of minibatch steps with the fitted model (the first step compiles and is not timed).
    steps = math.ceil(n_cells / BATCH)
    cfg = TrainerConfig(max_steps=steps + 1, batch_size=BATCH, patience=0, progress=False, schedule="constant")
    trainer = Trainer(r.model, r.integrator, r.loss_cfg, cfg)
    state = trainer.run(trainer.init(r.model, jax.random.PRNGKey(seed)), r.data, until=1)
    t0 = time.perf_counter()
    trainer.run(state, r.data)
    epoch_s = time.perf_counter() - t0
    loss_value(r.model, r.data, r.integrator, r.loss_cfg)  # compiles
    t0 = time.perf_counter()
    loss_value(r.model, r.data, r.integrator, r.loss_cfg)
    full_pass_s = time.perf_counter() - t0
    return {
        "cells": n_cells,
        "genes": n_genes,
        "fit s": round(fit_s, 1),
        "fit steps": int(r.state.step),
        "train ms/step": round(1e3 * r.train_seconds / max(r.state.step, 1), 2),
        "epoch s": round(epoch_s, 2),
        "full pass s": round(full_pass_s, 2),
        "peak RSS MB": round(rss()),
        "fit peak RSS MB": round(fit_peak),
        "data MB": round(data_mb),
        "simulate s": round(simulate_s, 1),
        "time Spearman": round(m["latent_time_spearman"], 4),
        "sign agreement": round(m["velocity_sign_agreement"], 4),
        "velocity genes": round(m["fraction_velocity_genes"], 3),
    }


def slope(rows, key, lo=20_000):
    import numpy as np

    pts = [(r["cells"], r[key]) for r in rows if r["cells"] >= lo and r[key] > 0]
    if len(pts) < 2:
        return float("nan")
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def table(rows) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [r["cells"] for r in rows]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for key, marker in (("epoch s", "o"), ("full pass s", "s"), ("fit s", "^")):
        ax_t.loglog(cells, [r[key] for r in rows], marker=marker, label=key)
    ref = rows[-1]["epoch s"] / rows[-1]["cells"]
    ax_t.loglog(cells, [ref * c for c in cells], "k:", lw=1, label="slope 1")
    ax_t.set_xlabel("cells (2,000 genes)")
    ax_t.set_ylabel("seconds")
    ax_t.legend(fontsize=8)
    ax_t.set_title("wall time")
    ax_m.loglog(cells, [r["peak RSS MB"] for r in rows], "o-", label="peak RSS")
    ax_m.loglog(cells, [r["data MB"] for r in rows], "k:", label="spliced + unspliced (as given)")
    ax_m.set_xlabel("cells (2,000 genes)")
    ax_m.set_ylabel("MB")
    ax_m.legend(fontsize=8)
    ax_m.set_title("peak resident memory")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, nargs="+", default=[3700, 20_000, 100_000, 300_000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--counts", choices=["none", "dense", "sparse"], default="none",
                        help="fit Poisson counts drawn from the simulation, as dense arrays or sparse (CSR)")
    parser.add_argument("--out", type=Path, default=Path("docs/scale"))
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.genes, args.seed, args.counts)))
        return
    rows = []
    for n in args.cells:
        print(f"{n:,} cells x {args.genes:,} genes ...", file=sys.stderr, flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", str(n), "--genes", str(args.genes), "--seed", str(args.seed),
             "--counts", args.counts],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            print(f"  failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    if not rows:
        sys.exit("no size finished")
    text = table(rows)
    slopes = {k: slope(rows, k) for k in ("epoch s", "full pass s", "fit s", "peak RSS MB")}
    text += "\n\nLog-log slope from 20,000 cells up: " + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items()) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "scale.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (args.out / "scale.md").write_text(
        f"`python scripts/bench_scale.py --cells {' '.join(map(str, args.cells))} --genes {args.genes}"
        f"{'' if args.counts == 'none' else ' --counts ' + args.counts}`\n\n{text}"
    )
    plot(rows, args.out / "scale.png")


if __name__ == "__main__":
    main()
