"""Quality metrics of a fit: against a known ground truth (simulations) and against known stage order."""

import numpy as np
import scipy.stats
from anndata import AnnData


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


def _spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(a[ok], b[ok]).statistic)


def velocity_agreement(velocity, true_velocity, genes=None) -> dict:
    """Sign agreement (over all cell-gene entries) and mean per-cell cosine of velocity vs the truth."""
    v, tv = _dense(velocity), _dense(true_velocity)
    if genes is not None:
        v, tv = v[:, genes], tv[:, genes]
    sign = float(np.mean(np.sign(v) == np.sign(tv)))
    norm = np.linalg.norm(v, axis=1) * np.linalg.norm(tv, axis=1)
    cos = np.sum(v * tv, axis=1) / np.where(norm > 0, norm, np.nan)
    return {"velocity_sign_agreement": sign, "velocity_cosine": float(np.nanmean(cos))}


def _has_simulation_truth(adata: AnnData) -> bool:
    need = ("true_alpha", "true_beta", "true_gamma", "true_switch_time")
    return "true_time" in adata.obs and all(k in adata.var for k in need)


def _simulation_agreement(adata: AnnData, genes, block: int = 1024) -> dict:
    """:func:`velocity_agreement` with the truth of a simulation recomputed for blocks of cells."""
    from .datasets import simulation_truth

    n_same = n_entries = 0
    cos_sum, n_cos = 0.0, 0
    for lo in range(0, adata.n_obs, block):
        cells = np.arange(lo, min(lo + block, adata.n_obs))
        part = velocity_agreement(adata.layers["velocity"][cells], simulation_truth(adata, cells)["true_velocity"], genes)
        m = len(cells) * (adata.n_vars if genes is None else int(np.sum(genes)))
        n_same += part["velocity_sign_agreement"] * m
        n_entries += m
        if np.isfinite(part["velocity_cosine"]):
            cos_sum += part["velocity_cosine"] * len(cells)
            n_cos += len(cells)
    return {"velocity_sign_agreement": float(n_same / n_entries),
            "velocity_cosine": float(cos_sum / n_cos) if n_cos else float("nan")}


def truth_metrics(adata: AnnData) -> dict:
    """Every ground-truth comparison the data allows (fitted keys from velode.tl.fit).

    - ``latent_time_spearman``: with ``obs["true_time"]``;
    - ``velocity_sign_agreement``, ``velocity_cosine``: with ``layers["true_velocity"]`` over the
      velocity genes;
    - ``{alpha,beta,gamma,switch_time}_spearman``: fitted vs true per-gene values (rank correlation:
      time units differ between a fit and a simulation).
    """
    out = {}
    if "true_time" in adata.obs and "latent_time" in adata.obs:
        out["latent_time_spearman"] = _spearman(adata.obs["latent_time"], adata.obs["true_time"])
    genes = adata.var["velocity_genes"].to_numpy(bool) if "velocity_genes" in adata.var else None
    if "velocity" in adata.layers and (genes is None or genes.any()):
        if "true_velocity" in adata.layers:
            out.update(velocity_agreement(adata.layers["velocity"], adata.layers["true_velocity"], genes))
        elif _has_simulation_truth(adata):  # a simulation without its truth layers: recomputed in blocks of cells
            out.update(_simulation_agreement(adata, genes))
    for name, fit_key in [("alpha", "fit_alpha"), ("beta", "fit_beta"), ("gamma", "fit_gamma"), ("switch_time", "fit_t_")]:
        if f"true_{name}" in adata.var and fit_key in adata.var:
            sel = genes if genes is not None and genes.any() else slice(None)
            out[f"{name}_spearman"] = _spearman(adata.var[fit_key].to_numpy()[sel], adata.var[f"true_{name}"].to_numpy()[sel])
    if genes is not None:
        out["fraction_velocity_genes"] = float(genes.mean())
    return out


def stage_spearman(adata: AnnData, order: dict, *, cluster_key: str = "clusters", time_key: str = "latent_time") -> float:
    """Spearman correlation of latent time with a known stage per cluster (``order``: cluster -> rank)."""
    labels = adata.obs[cluster_key].astype(str)
    stage = labels.map(order).to_numpy(float)
    return _spearman(adata.obs[time_key].to_numpy(), stage)


# Known transitions of the pancreas endocrinogenesis data (Bastidas-Ponce et al. 2019), as used by
# the cross-boundary direction benchmarks (VeloAE, UniTVelo).
PANCREAS_TRANSITIONS = [
    ("Ductal", "Ngn3 low EP"),
    ("Ngn3 low EP", "Ngn3 high EP"),
    ("Ngn3 high EP", "Pre-endocrine"),
    ("Pre-endocrine", "Alpha"),
    ("Pre-endocrine", "Beta"),
    ("Pre-endocrine", "Delta"),
    ("Pre-endocrine", "Epsilon"),
]


def _knn_lists(adata: AnnData) -> list[np.ndarray]:
    """Each cell's neighbours in the kNN graph (``obsp["distances"]``, else ``obsp["connectivities"]``), self excluded."""
    import scipy.sparse as sp

    key = "distances" if "distances" in adata.obsp else "connectivities"
    if key not in adata.obsp:
        raise ValueError("no kNN graph in obsp: run velode.pp.preprocess(adata) or scanpy.pp.neighbors(adata) first")
    g = sp.csr_matrix(adata.obsp[key])
    out = []
    for i in range(adata.n_obs):
        nb = g.indices[g.indptr[i] : g.indptr[i + 1]]
        out.append(nb[nb != i])
    return out


def cross_boundary_correctness(
    adata: AnnData,
    transitions,
    *,
    cluster_key: str = "clusters",
    basis: str = "umap",
    vkey: str = "velocity",
) -> dict:
    """Cross-boundary direction correctness (CBDir) of the velocities projected on an embedding.

    For a known transition A -> B, each cell of A that has kNN neighbours in B scores the mean
    cosine between its embedded velocity (``obsm[f"{vkey}_{basis}"]``) and the displacements
    (``obsm[f"X_{basis}"]``) to those neighbours; the transition scores the mean over those cells.
    Returns ``{"A -> B": score, ..., "mean": mean over the transitions}`` (NaN for a transition
    whose source cells have no neighbour in the target). The embedded velocities are computed with
    :func:`velode.tl.velocity_embedding` when missing.
    """
    if f"{vkey}_{basis}" not in adata.obsm:
        from .tl import velocity_embedding

        velocity_embedding(adata, basis=basis, vkey=vkey)
    x = np.asarray(adata.obsm[f"X_{basis}"], float)[:, :2]
    v = np.asarray(adata.obsm[f"{vkey}_{basis}"], float)[:, :2]
    labels = adata.obs[cluster_key].astype(str).to_numpy()
    knn = _knn_lists(adata)
    out = {}
    for a, b in transitions:
        for name in (a, b):
            if name not in set(labels):
                raise ValueError(f"cluster {name!r} is not in obs[{cluster_key!r}]")
        scores = []
        for i in np.flatnonzero(labels == a):
            nb = knn[i][labels[knn[i]] == b]
            if nb.size == 0:
                continue
            d = x[nb] - x[i]
            den = np.linalg.norm(d, axis=1) * np.linalg.norm(v[i])
            cos = np.divide(d @ v[i], den, out=np.zeros(nb.size), where=den > 0)
            scores.append(cos.mean())
        out[f"{a} -> {b}"] = float(np.mean(scores)) if scores else float("nan")
    vals = [s for s in out.values() if np.isfinite(s)]
    out["mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


def in_cluster_coherence(
    adata: AnnData,
    *,
    cluster_key: str = "clusters",
    vkey: str = "velocity",
    genes_key: str | None = "velocity_genes",
) -> dict:
    """In-cluster coherence (ICCoh): mean cosine between a cell's velocity and its same-cluster neighbours'.

    Velocities are ``layers[vkey]`` over the genes of ``var[genes_key]`` (all genes when absent).
    Returns ``{cluster: mean over its cells, ..., "mean": mean over the clusters}``.
    """
    v = _dense(adata.layers[vkey])
    if genes_key is not None and genes_key in adata.var and adata.var[genes_key].to_numpy(bool).any():
        v = v[:, adata.var[genes_key].to_numpy(bool)]
    v = np.nan_to_num(v)
    norm = np.linalg.norm(v, axis=1)
    unit = v / np.where(norm > 0, norm, 1.0)[:, None]
    labels = adata.obs[cluster_key].astype(str).to_numpy()
    knn = _knn_lists(adata)
    per_cell = np.full(adata.n_obs, np.nan)
    for i in range(adata.n_obs):
        nb = knn[i][labels[knn[i]] == labels[i]]
        if nb.size and norm[i] > 0:
            per_cell[i] = float(np.mean(unit[nb] @ unit[i]))
    out = {}
    for c in sorted(set(labels)):
        vals = per_cell[labels == c]
        out[c] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    vals = [s for s in out.values() if np.isfinite(s)]
    out["mean"] = float(np.mean(vals)) if vals else float("nan")
    return out
