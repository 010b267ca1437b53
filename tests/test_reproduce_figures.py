"""The figure script draws every figure, on a short synthetic fit and from a finished run folder."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("reproduce_figures", ROOT / "experiments" / "reproduce_figures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_figure_on_synthetic(tmp_path):
    mod = _load()
    written = mod.main(["synthetic", "--max-steps", "150", "--out", str(tmp_path)])
    assert sorted(p.name for p in written) == sorted(f"{n}.png" for n in mod.FIGURES)
    for p in written:
        assert p.stat().st_size > 5000, p


def test_one_figure_from_a_run_folder(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "velode._cli", f"hydra.run.dir={run}", "experiment=quick", "plots=false"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "history.json").read_text())["total"]
    written = _load().main(["synthetic", "--run", str(run), "--only", "loss", "--out", str(tmp_path / "f")])
    assert [p.name for p in written] == ["loss.png"] and written[0].stat().st_size > 5000
