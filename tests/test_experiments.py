"""The experiment scripts run end to end (shortened) and write what they promise."""

import json

from helpers import load_script


def _load(name):
    return load_script(f"experiments/{name}.py")


def test_seed_example(tmp_path):
    m = _load("seed_example").main(["--out", str(tmp_path), "--max-steps", "150"])
    assert (tmp_path / "latent_time.png").stat().st_size > 1000
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["steps"] == m["steps"] <= 150
    assert 0.5 < written["latent_time_spearman"] <= 1.0
