"""A small, fast synthetic dataset: induction-only splicing kinetics with Gaussian noise."""


import numpy as np
import pandas as pd
from anndata import AnnData

from .._errors import InputError

#: Rates act on ``TIME_SCALE * t`` in :func:`synthetic`, so that t in [0, 1] covers most of the transient.
TIME_SCALE = 5.0
#: Standard deviation of the additive Gaussian noise in :func:`synthetic`.
NOISE_SD = 0.1


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer, got {value!r}: pass a whole number >= 1")
    if value < 1:
        raise InputError(f"{name} must be >= 1, got {value}: pass a positive number")
    return int(value)


def synthetic(n_cells: int = 500, n_genes: int = 200, seed: int = 42) -> AnnData:
    """Induction-only splicing kinetics with known per-gene rates and cell times.

    Per gene, with three independent standard normal draws ``N``:
    ``alpha = softplus(0.5 N + 1)``, ``beta = softplus(0.5 N)``, ``gamma = softplus(0.5 N - 0.5)``.
    Cell times are ``t ~ Uniform[0, 1]`` and, starting from ``u = s = 0``,

    ``u = alpha / beta * (1 - exp(-5 beta t))``,
    ``s = alpha / gamma * (1 - exp(-5 gamma t))``

    (time scale 5: the rates act on ``5 t``). Gaussian noise with standard deviation 0.1 is
    added to both, and the result is clipped at 0.

    Parameters
    ----------
    n_cells
        Number of cells (observations).
    n_genes
        Number of genes (variables).
    seed
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same data.

    Returns
    -------
    AnnData with ``X`` and ``layers["spliced"]`` holding the noisy spliced values,
    ``layers["unspliced"]`` the noisy unspliced values (dense float32), ``obs["true_time"]``,
    ``var["true_alpha"]``, ``var["true_beta"]``, ``var["true_gamma"]`` and
    ``uns["velode_dataset"] = {"name": "synthetic", "seed": seed}``.
    """
    n_cells = _check_positive_int("n_cells", n_cells)
    n_genes = _check_positive_int("n_genes", n_genes)
    rng = np.random.default_rng(seed)

    alpha = _softplus(0.5 * rng.standard_normal(n_genes) + 1.0)
    beta = _softplus(0.5 * rng.standard_normal(n_genes))
    gamma = _softplus(0.5 * rng.standard_normal(n_genes) - 0.5)
    t = rng.uniform(0.0, 1.0, size=n_cells)

    tt = TIME_SCALE * t[:, None]
    u = alpha / beta * (1.0 - np.exp(-beta * tt))
    s = alpha / gamma * (1.0 - np.exp(-gamma * tt))
    u = np.clip(u + rng.normal(0.0, NOISE_SD, size=u.shape), 0.0, None).astype(np.float32)
    s = np.clip(s + rng.normal(0.0, NOISE_SD, size=s.shape), 0.0, None).astype(np.float32)

    obs = pd.DataFrame({"true_time": t}, index=pd.Index([f"cell_{i}" for i in range(n_cells)]))
    var = pd.DataFrame(
        {"true_alpha": alpha, "true_beta": beta, "true_gamma": gamma},
        index=pd.Index([f"gene_{j}" for j in range(n_genes)]),
    )
    adata = AnnData(X=s.copy(), obs=obs, var=var, layers={"spliced": s, "unspliced": u})
    adata.uns["velode_dataset"] = {"name": "synthetic", "seed": seed}
    return adata
