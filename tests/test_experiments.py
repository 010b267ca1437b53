"""The experiment scripts run end to end (shortened) and write what they promise."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_seed_example(tmp_path):
    m = _load("seed_example").main(["--out", str(tmp_path), "--max-steps", "150"])
    assert (tmp_path / "latent_time.png").stat().st_size > 1000
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["steps"] == m["steps"] <= 150
    assert 0.5 < written["latent_time_spearman"] <= 1.0
