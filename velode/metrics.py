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
    if "true_velocity" in adata.layers and "velocity" in adata.layers and (genes is None or genes.any()):
        out.update(velocity_agreement(adata.layers["velocity"], adata.layers["true_velocity"], genes))
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
