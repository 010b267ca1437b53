import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from anndata import AnnData  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.neighbors import NearestNeighbors  # noqa: E402

from velode import pl  # noqa: E402


@pytest.fixture
def adata():
    rng = np.random.default_rng(0)
    n, g = 150, 8
    t = np.sort(rng.uniform(0, 1, n))
    alpha = rng.uniform(1, 3, g)
    beta = rng.uniform(0.5, 1.5, g)
    gamma = rng.uniform(0.2, 0.8, g)
    # splicing kinetics du/dt = alpha - beta u, ds/dt = beta u - gamma s, integrated along t (x3)
    u = np.zeros((n, g))
    s = np.zeros((n, g))
    for k in range(1, n):
        dt = 3 * (t[k] - t[k - 1])
        u[k] = u[k - 1] + dt * (alpha - beta * u[k - 1])
        s[k] = s[k - 1] + dt * (beta * u[k - 1] - gamma * s[k - 1])
    u = u + 0.05 * rng.normal(size=(n, g))
    s = s + 0.05 * rng.normal(size=(n, g))
    ad = AnnData(X=np.abs(s), var=pd.DataFrame(index=[f"gene{k}" for k in range(g)]))
    ad.layers["Ms"] = s
    ad.layers["Mu"] = u
    ad.layers["velocity"] = beta * u - gamma * s
    ad.layers["velocity_u"] = alpha - beta * u
    ad.layers["velocity"][3, 2] = np.nan
    ad.var["velocity_genes"] = np.arange(g) != 5
    ad.obs["latent_time"] = t
    ad.obs["clusters"] = pd.Categorical(np.where(t < 0.3, "early", np.where(t < 0.7, "mid", "late")))
    ad.uns["clusters_colors"] = ["#1f77b4", "#ff7f0e", "#2ca02c"]
    angle = 2.5 * t
    ad.obsm["X_umap"] = np.column_stack([np.cos(angle), np.sin(angle)]) * (1 + 0.05 * rng.normal(size=(n, 1)))
    nn = NearestNeighbors(n_neighbors=11).fit(s)
    idx = nn.kneighbors(s, return_distance=False)[:, 1:]
    A = sp.csr_matrix((np.ones(idx.size), (np.repeat(np.arange(n), 10), idx.ravel())), shape=(n, n))
    ad.obsp["connectivities"] = ((A + A.T) > 0).astype(float).tocsr()
    return ad


def _check(fig, path, n_axes):
    assert isinstance(fig, Figure)
    assert len(fig.axes) == n_axes
    assert path.exists() and path.stat().st_size > 1000
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_figures_stay_out_of_pyplot(adata, tmp_path):
    before = plt.get_fignums()
    pl.loss_curve([3.0, 2.0, 1.0])
    pl.velocity_magnitude(adata)
    assert plt.get_fignums() == before


def test_loss_curve_dict(tmp_path):
    steps = np.arange(50)
    history = {
        "total": list(2.0 * np.exp(-steps / 10) + 0.1),
        "reconstruction": list(1.5 * np.exp(-steps / 10) + 0.05),
        "consistency": list(0.05 + 0.01 * np.cos(steps)),
    }
    path = tmp_path / "loss.png"
    fig = pl.loss_curve(history, save=path)
    _check(fig, path, 1)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert [line.get_label() for line in ax.get_lines()] == list(history)


def test_loss_curve_list_and_linear_scale(tmp_path):
    path = tmp_path / "loss_list.png"
    fig = pl.loss_curve([1.0, 0.5, -0.2, 0.1], save=path)
    _check(fig, path, 1)
    assert fig.axes[0].get_yscale() == "linear"
    assert pl.loss_curve([1.0, 0.5], log=False).axes[0].get_yscale() == "linear"


def test_phase_portraits_continuous(adata, tmp_path):
    K = 40
    curve_t = np.linspace(0, 1, K)
    curve_s = np.outer(np.ones(adata.n_vars), np.linspace(0, 2, K))
    curve_u = np.outer(np.ones(adata.n_vars), np.sin(np.linspace(0, 3, K)))
    path = tmp_path / "phase.png"
    genes = ["gene0", "gene1", 2, "gene3", "gene7"]
    fig = pl.phase_portraits(
        adata, genes, curve_t=curve_t, curve_u=curve_u, curve_s=curve_s, n_arrows=30, save=path
    )
    # five panels and one colorbar for latent time
    _check(fig, path, 6)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["gene0", "gene1", "gene2", "gene3", "gene7"]
    panel = fig.axes[0]
    assert panel.get_xlabel() == "spliced" and panel.get_ylabel() == "unspliced"
    line = panel.get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), curve_s[0])
    np.testing.assert_allclose(line.get_ydata(), curve_u[0])
    quivers = [c for c in panel.collections if type(c).__name__ == "Quiver"]
    assert len(quivers) == 1 and quivers[0].N == 30


def test_phase_portraits_categorical_without_arrows(adata, tmp_path):
    del adata.layers["velocity_u"]
    path = tmp_path / "phase_cat.png"
    fig = pl.phase_portraits(
        adata, ["gene1", "gene2"], curve_t=None, curve_u=None, curve_s=None, color="clusters", save=path
    )
    _check(fig, path, 2)
    assert not [c for ax in fig.axes for c in ax.collections if type(c).__name__ == "Quiver"]
    legend = fig.axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == list(adata.obs["clusters"].cat.categories)


def test_phase_portraits_rejects_bad_curves(adata):
    with pytest.raises(ValueError, match="n_vars"):
        pl.phase_portraits(adata, ["gene0"], curve_t=np.arange(3), curve_u=np.zeros((2, 3)), curve_s=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="not in adata.var_names"):
        pl.phase_portraits(adata, ["nope"], curve_t=None, curve_u=None, curve_s=None)


def test_velocity_stream_computes_embedding(adata, tmp_path):
    path = tmp_path / "stream.png"
    fig = pl.velocity_stream(adata, save=path)
    _check(fig, path, 1)
    assert adata.obsm["velocity_umap"].shape == (adata.n_obs, 2)
    assert "velocity_graph" in adata.obsp
    ax = fig.axes[0]
    labels = {t.get_text() for t in ax.texts}
    assert labels == {"early", "mid", "late"}


def test_velocity_stream_continuous_colour(adata, tmp_path):
    adata.obsm["velocity_umap"] = np.column_stack(
        [-np.sin(2.5 * adata.obs["latent_time"]), np.cos(2.5 * adata.obs["latent_time"])]
    )
    path = tmp_path / "stream_t.png"
    fig = pl.velocity_stream(adata, color="latent_time", density=1.0, save=path)
    _check(fig, path, 2)


def test_velocity_stream_needs_embedding(adata):
    del adata.obsm["X_umap"]
    with pytest.raises(ValueError, match=r"no obsm\['X_umap'\]"):
        pl.velocity_stream(adata)


def test_velocity_magnitude(adata, tmp_path):
    path = tmp_path / "mag.png"
    fig = pl.velocity_magnitude(adata, save=path)
    _check(fig, path, 2)
    colours = fig.axes[0].collections[0].get_array()
    assert np.isfinite(colours).all()


def test_heatmap_along_time(adata, tmp_path):
    path = tmp_path / "heat.png"
    genes = [f"gene{k}" for k in range(adata.n_vars)]
    fig = pl.heatmap_along_time(adata, genes, n_bins=30, save=path)
    _check(fig, path, 2)
    image = fig.axes[0].get_images()[0].get_array()
    assert image.shape == (adata.n_vars, 30)
    assert np.nanmin(image) >= 0 and np.nanmax(image) <= 1
    peaks = np.argmax(np.asarray(image), axis=1)
    assert (np.diff(peaks) >= 0).all()
    assert {t.get_text() for t in fig.axes[0].get_yticklabels()} == set(genes)


def test_heatmap_sparse_layer_and_more_bins_than_cells(adata, tmp_path):
    adata.layers["counts"] = sp.csr_matrix(np.abs(adata.layers["Ms"]))
    path = tmp_path / "heat_sparse.png"
    fig = pl.heatmap_along_time(adata, ["gene0", 3], layer="counts", n_bins=1000, save=path)
    _check(fig, path, 2)
    assert fig.axes[0].get_images()[0].get_array().shape == (2, adata.n_obs)


def test_loss_curve_smoothed_and_duplicate_term_left_out(tmp_path):
    rng = np.random.default_rng(1)
    total = list(np.exp(-np.arange(300) / 50) + 0.1 + 0.02 * rng.random(300))
    path = tmp_path / "loss_smooth.png"
    fig = pl.loss_curve({"total": total, "reconstruction": list(total)}, smooth=20, title="t", save=path)
    _check(fig, path, 1)
    ax = fig.axes[0]
    labelled = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labelled == ["total"]  # the reconstruction equals the total at every step
    smoothed = ax.get_lines()[1].get_ydata()
    assert smoothed[0] == total[0] and np.std(np.diff(smoothed)) < np.std(np.diff(total))
    assert all("10^" not in t.get_text() for t in ax.get_yticklabels())


def test_velocity_magnitude_by_group(adata, tmp_path):
    path = tmp_path / "mag_by.png"
    fig = pl.velocity_magnitude(adata, groupby="clusters", title="magnitude", save=path)
    _check(fig, path, 3)
    labels = [t.get_text().split(" (")[0] for t in fig.axes[-1].get_yticklabels()]
    assert sorted(labels) == sorted(adata.obs["clusters"].cat.categories)
    fig = pl.velocity_magnitude(adata, groupby="latent_time")
    assert fig.axes[-1].get_xlabel() == "latent_time"
    with pytest.raises(ValueError, match="no obs"):
        pl.velocity_magnitude(adata, groupby="nope")


def test_heatmap_band_and_highlight(adata, tmp_path):
    genes = [f"gene{k}" for k in range(adata.n_vars)]
    path = tmp_path / "heat_band.png"
    fig = pl.heatmap_along_time(adata, genes, n_bins=30, color="clusters", highlight=["gene2"], title="h", save=path)
    _check(fig, path, 4)  # heatmap, colorbar, band, empty corner
    weights = {t.get_text(): t.get_fontweight() for t in fig.axes[0].get_yticklabels()}
    assert weights["gene2"] == "bold" and weights["gene0"] == "normal"
    band = fig.axes[2].get_images()[0].get_array()
    assert band.shape[:2] == (1, 30)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(adata.obs["clusters"].cat.categories)
    fig = pl.heatmap_along_time(adata, genes, n_bins=30, color="latent_time")
    assert fig.axes[2].get_ylabel() == "latent_time"
