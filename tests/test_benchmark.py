"""The side-by-side benchmark runs end to end on a small simulation and reports both methods."""

import json

import numpy as np
from helpers import load_script


def _load():
    return load_script("scripts/benchmark.py")


def test_benchmark_small_simulation(tmp_path):
    from velode import _train

    bench = _load()
    assert bench._have_scvelo(), "scVelo is part of the test extra: pip install -e '.[test]'"
    _train.clear_caches()  # the first fit compiles its steps; the second, of the same settings, reuses them
    results = bench.main(["--pancreas", "none", "--seeds", "0", "1", "--sim-cells", "200", "--sim-genes", "20",
                          "--max-steps", "1500", "--out", str(tmp_path)])
    sim = results["simulation"]
    names = list(sim)
    assert any(n.startswith("scVelo") for n in names) and any(n.startswith("velode") for n in names)
    velode_rows = next(v for k, v in sim.items() if k.startswith("velode"))
    assert len(velode_rows) == 2
    for row in velode_rows:
        assert row["time Spearman"] > 0.9 and row["genes fitted"] >= 10
        assert np.isfinite(row["fit seconds"]) and row["fit seconds"] > 0
        assert 0 <= row["compile seconds"] < row["fit seconds"]
    assert velode_rows[0]["compile seconds"] > 0 and velode_rows[1]["compile seconds"] == 0
    text = (tmp_path / "benchmark.md").read_text()
    assert "| time Spearman |" in text and "±" in text and "scVelo 0.3.4" in text
    assert json.loads((tmp_path / "benchmark.json").read_text())["simulation"]


def test_cbdir_table_keys_cover_every_transition():
    bench = _load()
    from velode.metrics import PANCREAS_TRANSITIONS

    assert len(PANCREAS_TRANSITIONS) == 7
    assert set(bench.STAGES) == {a for a, _ in PANCREAS_TRANSITIONS} | {b for _, b in PANCREAS_TRANSITIONS}


def _harness_like(n_cells=300, n_genes=30):
    """A simulation dressed as the pancreas harness: clusters in time order, a 2-D embedding, a kNN graph."""
    import pandas as pd

    import velode

    bench = _load()
    a = bench._scvelo_ready_simulation(velode.datasets.simulation(n_cells=n_cells, n_genes=n_genes, seed=0))
    t = np.asarray(a.obs["true_time"])
    rank = np.argsort(np.argsort(t)) / len(t)
    names = np.array(["Ductal", "Ngn3 low EP", "Ngn3 high EP", "Pre-endocrine"])
    labels = names[np.minimum((rank / 0.15).astype(int), 3)]
    late = rank >= 0.6
    labels[late] = np.array(["Alpha", "Beta", "Delta", "Epsilon"])[np.arange(late.sum()) % 4]
    a.obs["clusters"] = pd.Categorical(labels)
    ms = np.asarray(a.layers["Ms"], float)
    ms = ms - ms.mean(0)
    a.obsm["X_umap"] = ms @ np.linalg.svd(ms, full_matrices=False)[2][:2].T
    return a


def _external_file(path, a, velocity, genes, seconds=12.0):
    from anndata import AnnData

    e = AnnData(obs=a.obs[[]].assign(latent_time=np.asarray(a.obs["true_time"], float)),
                var=a.var.iloc[genes][[]].assign(velocity_genes=True),
                layers={"velocity": velocity[:, genes].astype(np.float32),
                        "Ms": np.asarray(a.layers["Ms"])[:, genes].astype(np.float32)})
    e.uns["fit_seconds"] = seconds
    e.write_h5ad(path)
    return str(path)


def test_other_tools_are_scored_on_the_runs_graph_and_embedding(tmp_path):
    """--external: a tool's velocities (other_tools.py layout) are projected and scored like velode's."""
    import pytest

    bench = _load()
    a = _harness_like()
    truth = np.asarray(a.layers["true_velocity"], float)
    genes = np.arange(0, a.n_vars, 2)  # the tool kept half the genes: the graph is built on those
    good = _external_file(tmp_path / "good.h5ad", a, truth, genes)
    bad = _external_file(tmp_path / "bad.h5ad", a, -truth, genes, seconds=30.0)
    rows = bench.external_rows(a, {"right": [good], "reversed": [bad, bad]}, log=lambda m: None)
    right = rows["right (1 fit, run apart)"]
    wrong = rows["reversed (2 fits, run apart)"]
    assert len(right) == 1 and len(wrong) == 2
    assert right[0]["fit seconds"] == 12.0 and wrong[0]["fit seconds"] == 30.0
    assert right[0]["velocity genes"] == len(genes)
    assert right[0]["CBDir Ngn3 low EP -> Ngn3 high EP"] > 0.5 > -0.5 > wrong[0]["CBDir Ngn3 low EP -> Ngn3 high EP"]
    assert right[0]["CBDir"] > wrong[0]["CBDir"] + 0.5
    for row in right + wrong:  # how many of the seven transitions point forwards, per fit
        edges = [v for k, v in row.items() if k.startswith("CBDir ")]
        assert len(edges) == 7 and row["positive edges"] == sum(v > 0 for v in edges)
    assert right[0]["positive edges"] > wrong[0]["positive edges"]
    assert right[0]["stage Spearman"] > 0.8
    png = bench.plot_cbdir(rows, tmp_path / "cbdir.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # a file fitted on other cells is refused with what to do
    _external_file(tmp_path / "other.h5ad", a[::-1].copy(), truth[::-1], genes)
    with pytest.raises(SystemExit, match="--save-harness"):
        bench.external_rows(a, {"x": [str(tmp_path / "other.h5ad")]}, log=lambda m: None)


def test_benchmark_records_the_versions_its_numbers_depend_on():
    env = _load().environment()
    assert env["velode"] and env["jax"] and env["umap-learn"] and env["scikit-learn"]


def test_velocity_scale_evens_out_genes_and_leaves_missing_ones():
    """--velocity-scale sd: each gene's velocity over cells has sd 1; NaN (unfitted) and constant genes stay."""
    import pytest
    from anndata import AnnData

    bench = _load()
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 4)) * np.array([100.0, 1.0, 0.01, 1.0])
    v[:, 3] = np.nan  # a gene the tool did not fit
    a = AnnData(np.zeros((50, 4), np.float32), layers={"velocity": v.copy()})
    bench.scale_velocity(a, "none")
    np.testing.assert_array_equal(a.layers["velocity"], v)
    bench.scale_velocity(a, "sd")
    out = np.asarray(a.layers["velocity"], float)
    np.testing.assert_allclose(out[:, :3].std(0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out[:, 0] * v[:, 0].std(), v[:, 0], rtol=1e-5)  # signs and ratios within a gene kept
    assert np.all(np.isnan(out[:, 3]))
    with pytest.raises(ValueError, match="none or sd"):
        bench.scale_velocity(a, "max")


def test_scaled_projection_leaves_the_tools_velocities_as_they_were(monkeypatch):
    """--velocity-scale sd changes the embedding the velocities are projected on, not the velocity layer."""
    bench = _load()
    a = _harness_like()
    a.layers["velocity"] = np.asarray(a.layers["true_velocity"], np.float32) * np.linspace(0.01, 100, a.n_vars)
    before = a.layers["velocity"].copy()
    bench.project(a, False)
    raw = np.asarray(a.obsm["velocity_umap"]).copy()
    monkeypatch.setattr(bench, "VELOCITY_SCALE", "sd")
    bench.project(a, False)
    np.testing.assert_array_equal(a.layers["velocity"], before)
    # the genes were weighted 1 to 10^4 apart: evened out, the projection moves
    assert not np.allclose(np.asarray(a.obsm["velocity_umap"]), raw, atol=1e-3)


def _with_true_velocity(a):
    """The harness-like data as a perfect tool would leave it: velocity, velocity genes, latent time."""
    a.layers["velocity"] = np.asarray(a.layers["true_velocity"], np.float32)
    a.var["velocity_genes"] = True
    a.obs["latent_time"] = np.asarray(a.obs["true_time"], float)
    return a


def test_scores_on_other_umaps_follow_the_embedding(tmp_path):
    """--umap-seeds: the same velocity graph is projected on every UMAP and CBDir is reported over them.

    A rotated copy of the harness's embedding gives the same cosines, hence the same CBDir; an embedding
    with its cells shuffled loses the direction.
    """
    bench = _load()
    a = _with_true_velocity(_harness_like())
    x = np.asarray(a.obsm["X_umap"], float)
    angle = 0.7
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    a.obsm["X_umap_seed1"] = x @ rot.T
    a.obsm["X_umap_seed2"] = x[np.random.default_rng(0).permutation(a.n_obs)]
    a.obsm["X_umap_seed10"] = x @ rot  # seed order is numeric, not by name
    assert bench.extra_umaps(a) == ["umap_seed1", "umap_seed2", "umap_seed10"]
    bench.project(a, True)
    for basis in ["umap", "umap_seed1", "umap_seed2", "umap_seed10"]:
        assert a.obsm[f"velocity_{basis}"].shape == (a.n_obs, 2)
    row = bench.pancreas_scores(a)
    rotated = bench.metrics.cross_boundary_correctness(a, bench.metrics.PANCREAS_TRANSITIONS, basis="umap_seed1")
    shuffled = bench.metrics.cross_boundary_correctness(a, bench.metrics.PANCREAS_TRANSITIONS, basis="umap_seed2")
    assert abs(rotated["mean"] - row["CBDir"]) < 1e-6
    assert shuffled["mean"] < row["CBDir"] - 0.3
    assert row["CBDir, lowest UMAP"] == shuffled["mean"]
    assert abs(row["CBDir, highest UMAP"] - row["CBDir"]) < 1e-6
    assert abs(row["CBDir, mean over UMAPs"] - np.mean([row["CBDir"], rotated["mean"], shuffled["mean"],
                                                        row["CBDir"]])) < 1e-6
    assert row["positive edges, fewest over UMAPs"] <= row["positive edges"]
    assert row["CBDir, UMAP umap_seed2"] == shuffled["mean"] and abs(row["CBDir, UMAP umap_seed1"] - row["CBDir"]) < 1e-6
    png = bench.plot_umaps({"perfect": [row, row]}, tmp_path / "umaps.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # without extra UMAPs the row has none of these keys, and there is nothing to plot
    b = _with_true_velocity(_harness_like())
    bench.project(b, True)
    plain = bench.pancreas_scores(b)
    assert not any("UMAP" in k for k in plain)
    assert bench.plot_umaps({"perfect": [plain]}, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_extra_umaps_are_other_layouts_of_the_same_graph():
    bench = _load()
    a = _harness_like(n_cells=200, n_genes=10)
    bench.add_umaps(a, 3)
    assert bench.extra_umaps(a) == ["umap_seed1", "umap_seed2"]
    u1, u2 = np.asarray(a.obsm["X_umap_seed1"]), np.asarray(a.obsm["X_umap_seed2"])
    assert u1.shape == u2.shape == (a.n_obs, 2) and np.all(np.isfinite(u1))
    assert not np.allclose(u1, u2)
    # a layout of the kNN graph: a cell's graph neighbours lie nearer to it than random cells do
    g = a.obsp["connectivities"].tocsr()
    rng = np.random.default_rng(0)
    near = np.mean([np.linalg.norm(u1[g.indices[g.indptr[i]:g.indptr[i + 1]]] - u1[i], axis=1).mean()
                    for i in range(a.n_obs)])
    far = np.mean(np.linalg.norm(u1[rng.permutation(a.n_obs)] - u1, axis=1))
    assert near < 0.5 * far
