"""Collect the jobs of a `velode -m ...` sweep into one table and draw the plots that matter for it.

    python scripts/aggregate.py SWEEP_DIR [--out DIR]

Reads every job's metrics.json (and history.json) under SWEEP_DIR and writes, into --out (default
SWEEP_DIR):
  sweep.csv          one row per job: the swept values, status, times, solver statistics, quality
  sweep.md           the same as a Markdown table (the columns that matter), failed jobs with reasons
  quality_vs_cost.png  quality metric and final loss against fit time, one marker per job
  loss_curves.png    the training loss of every job, overlaid
Prints the Markdown table.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

# Quality metrics in order of preference for the plots: the first one present in the sweep is used.
QUALITY = ["latent_time_spearman", "stage_spearman", "velocity_cosine", "velocity_sign_agreement"]
TIMES = ["fit_seconds", "compile_seconds", "train_seconds"]
STATS = ["num_steps", "num_accepted_steps", "num_rejected_steps", "num_vf_evals"]
OTHER = ["final_loss", "steps", "n_velocity_genes", "alpha_spearman", "beta_spearman", "gamma_spearman",
         "switch_time_spearman", "fraction_velocity_genes"]


def _parse_overrides(overrides):
    out = {}
    for item in overrides or []:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = value
    return out


def collect(sweep_dir: Path) -> tuple[pd.DataFrame, dict]:
    """One row per job folder holding a metrics.json; and each job's loss history."""
    rows, histories = [], {}
    for path in sorted(sweep_dir.rglob("metrics.json"), key=lambda p: _job_sort_key(p.parent, sweep_dir)):
        job = str(path.parent.relative_to(sweep_dir))
        try:
            m = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            rows.append({"job": job, "status": "unreadable", "error": f"{type(err).__name__}: {err}"})
            continue
        row = {"job": job, **_parse_overrides(m.get("overrides"))}
        row["status"] = m.get("status", "unknown")
        row["error"] = m.get("error", m.get("message", "")) or ""
        for k in TIMES + OTHER + QUALITY:
            if k in m:
                row[k] = m[k]
        for k in STATS:
            if k in m.get("solver_stats", {}):
                row[k] = m["solver_stats"][k]
        rows.append(row)
        hist = path.parent / "history.json"
        if hist.exists():
            try:
                histories[job] = json.loads(hist.read_text()).get("total", [])
            except (OSError, json.JSONDecodeError):
                pass
    return pd.DataFrame(rows), histories


def _job_sort_key(job_dir: Path, root: Path):
    parts = job_dir.relative_to(root).parts
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def swept_columns(df: pd.DataFrame) -> list[str]:
    """Override keys whose values differ between jobs (what the sweep varied)."""
    fixed = {"job", "status", "error", *TIMES, *STATS, *OTHER, *QUALITY}
    cols = [c for c in df.columns if c not in fixed]
    return [c for c in cols if df[c].astype(str).nunique(dropna=False) > 1]


def label(row, cols) -> str:
    return " ".join(f"{c}={row[c]}" for c in cols) or row["job"]


def markdown(df: pd.DataFrame, cols: list[str]) -> str:
    show = ["job", *cols, "status"] + [c for c in ["final_loss", *QUALITY, "n_velocity_genes", "steps", *TIMES,
                                                   "num_steps", "num_rejected_steps", "num_vf_evals"] if c in df]
    lines = ["| " + " | ".join(show) + " |", "|" + "---|" * len(show)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in show) + " |")
    failed = df[df["status"] != "ok"]
    if len(failed):
        lines += ["", f"{len(failed)} of {len(df)} jobs did not finish ok:"]
        lines += [f"- {r['job']} ({label(r, cols)}): {r['status']}: {r['error']}" for _, r in failed.iterrows()]
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def plots(df: pd.DataFrame, histories: dict, cols: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from velode import _outputs

    written = []
    ok = df[df["status"] == "ok"]
    quality = next((q for q in QUALITY if q in ok and ok[q].notna().any()), None)
    if len(ok) and "fit_seconds" in ok:
        # Colour by the first swept key (e.g. the solver), marker by the second; further keys as short labels.
        group = cols[0] if cols else None
        shape = cols[1] if len(cols) > 1 else None
        keys = list(dict.fromkeys(ok[group].astype(str))) if group else ["all"]
        shapes = list(dict.fromkeys(ok[shape].astype(str))) if shape else ["all"]
        colours = {k: f"C{i % 10}" for i, k in enumerate(keys)}
        markers = {k: "osD^vP*Xph"[i % 10] for i, k in enumerate(shapes)}
        metrics = [m for m in [quality, "final_loss"] if m is not None and m in ok]
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.4 * len(metrics), 4.4), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            for _, r in ok.iterrows():
                c = colours[str(r[group])] if group else "C0"
                mk = markers[str(r[shape])] if shape else "o"
                ax.scatter(r["fit_seconds"], r[metric], color=c, marker=mk, s=40, alpha=0.85)
                if len(cols) > 2:
                    ax.annotate(",".join(str(r[k]) for k in cols[2:]), (r["fit_seconds"], r[metric]), fontsize=6,
                                alpha=0.7, xytext=(3, 3), textcoords="offset points")
            ax.set(xlabel="fit wall time (s, compile included)", ylabel=metric, title=f"{metric} vs cost")
            vals = ok[metric].astype(float)
            if metric == "final_loss" and vals.min() > 0 and vals.max() / vals.min() > 10:
                ax.set_yscale("log")
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=colours[k], marker="o", ls="", label=f"{group}={k}") for k in keys if group]
        handles += [Line2D([], [], color="0.4", marker=markers[k], ls="", label=f"{shape}={k}") for k in shapes if shape]
        if handles:
            axes[0][-1].legend(handles=handles, fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5))
        if len(cols) > 2:
            fig.suptitle("labels: " + ", ".join(cols[2:]), fontsize=8)
        fig.tight_layout()
        _outputs.save_figure(out / "quality_vs_cost.png", fig)
        plt.close(fig)
        written.append(out / "quality_vs_cost.png")
    if histories:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for _, r in df.iterrows():
            h = histories.get(r["job"])
            if h:
                ax.plot(np.arange(1, len(h) + 1), h, lw=1, alpha=0.8, label=label(r, cols))
        ax.set(xlabel="step", ylabel="training loss", yscale="log", title="loss curves")
        if len(histories) <= 20:
            ax.legend(fontsize=6, frameon=False)
        fig.tight_layout()
        _outputs.save_figure(out / "loss_curves.png", fig)
        plt.close(fig)
        written.append(out / "loss_curves.png")
    return written


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path, help="the sweep folder (hydra.sweep.dir, e.g. multirun/DATE/TIME)")
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: the sweep folder)")
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        sys.exit(f"aggregate: error: {args.sweep_dir} is not a folder: pass the folder of a velode -m sweep")
    df, histories = collect(args.sweep_dir)
    if df.empty:
        sys.exit(f"aggregate: error: no metrics.json under {args.sweep_dir}: is this a velode sweep folder?")
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    cols = swept_columns(df)
    from velode import _outputs

    _outputs.atomic_write(out / "sweep.csv", lambda tmp: df.to_csv(tmp, index=False))
    table = markdown(df, cols)
    _outputs.atomic_write(out / "sweep.md", lambda tmp: Path(tmp).write_text(table + "\n"))
    written = plots(df, histories, cols, out)
    print(table)
    print(f"\nwrote {out / 'sweep.csv'}, {out / 'sweep.md'}" + "".join(f", {p}" for p in written))
    return df


if __name__ == "__main__":
    main()
