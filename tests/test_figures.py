"""experiments/figures.py draws every figure: on a short synthetic fit, from a run folder, on pancreas."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import velode
from velode import _outputs
from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
PANCREAS = ROOT.parent / "shared" / "data" / "pancreas.h5ad"


def _figures():
    return load_script("experiments/figures.py")


def _check_pngs(written: dict, names) -> None:
    assert sorted(written) == sorted(names)
    for name, path in written.items():
        assert path.name == f"{name}.png" and path.stat().st_size > 10_000, path
        with Image.open(path) as im:
            assert min(im.size) >= 250, (path, im.size)
            pixels = np.asarray(im.convert("L"))
        assert pixels.std() > 10, f"{path} is nearly blank"  # something is drawn, not one flat colour
    assert not list(written[names[0]].parent.glob(".*.tmp")), "temporary files left behind"


@pytest.mark.slow
def test_every_figure_on_a_short_synthetic_fit(tmp_path):
    mod = _figures()
    written = mod.main(["synthetic", "--max-steps", "100", "--out", str(tmp_path)])
    _check_pngs(written, mod.FIGURES)


@pytest.mark.slow
def test_figures_from_a_run_folder(tmp_path):
    adata = velode.pp.preprocess(velode.datasets.synthetic(n_cells=200, n_genes=30), method="none")
    velode.tl.fit(adata, trainer={"max_steps": 60, "progress": False})
    run = tmp_path / "run"
    _outputs.write_h5ad(run / "velocity.h5ad", adata)  # what a `velode` run folder holds
    mod = _figures()
    written = mod.main(["synthetic", "--run", str(run), "--out", str(tmp_path / "out")])
    _check_pngs(written, mod.FIGURES)
    one = mod.main(["synthetic", "--run", str(run), "--only", "heatmap", "--out", str(tmp_path / "one")])
    assert list(one) == ["heatmap"]


def test_marker_rule_spreads_genes_over_time_and_adds_known_markers():
    mod = _figures()
    n_cells, n_genes = 400, 60
    t = np.linspace(0, 1, n_cells)
    peaks = np.linspace(0, 1, n_genes)
    ms = np.exp(-0.5 * ((t[:, None] - peaks[None]) / 0.05) ** 2)
    import anndata as ad
    import pandas as pd

    names = [f"g{k}" for k in range(n_genes)]
    names[7] = "Sox9"
    adata = ad.AnnData(np.zeros((n_cells, n_genes)), var=pd.DataFrame(index=names))
    adata.layers["Ms"] = ms
    adata.obs["latent_time"] = t
    adata.var["fit_r2"] = np.linspace(0.9, 0.5, n_genes)
    adata.var["velocity_genes"] = True
    genes, known = mod.marker_genes(adata)
    assert known == ["Sox9"] and "Sox9" in genes
    picked = genes[:20]  # 5 windows x 4 by the rule, then the known markers not picked already
    assert genes[20:] == ([] if "Sox9" in picked else ["Sox9"])
    idx = [names.index(g) for g in picked]
    windows = np.minimum((peaks[idx] * 5).astype(int), 4)
    assert np.bincount(windows, minlength=5).tolist() == [4, 4, 4, 4, 4]


@pytest.mark.slow
@pytest.mark.skipif(not PANCREAS.exists(), reason=f"{PANCREAS} not present")
def test_every_figure_on_a_pancreas_subset(tmp_path):
    mod = _figures()
    written = mod.main(
        ["pancreas", "--path", str(PANCREAS), "--subsample", "800", "--max-steps", "100", "--out", str(tmp_path)]
    )
    _check_pngs(written, mod.FIGURES)
