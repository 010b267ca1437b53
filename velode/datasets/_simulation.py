"""Switching splicing kinetics (induction, then repression) with exact ground truth."""


import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _aligned
from .._errors import InputError
from ._synthetic import _check_positive_int

NOISE_MODELS = ("gaussian", "poisson")
#: Smallest relative gap |gamma - beta| / beta allowed, so the closed form stays well conditioned.
MIN_RATE_GAP = 0.05
#: Range of the per-gene maximum expected count in the "poisson" noise model.
POISSON_MAX_COUNTS = (20.0, 50.0)
#: The noise-free layers (``truth_layers=True``).
TRUTH_LAYERS = ("true_spliced", "true_unspliced", "true_velocity", "true_velocity_u")
#: Cells per block of the generation (bounds its temporaries).
BLOCK_CELLS = 4096


def splicing_solution(
    u0: np.ndarray,
    s0: np.ndarray,
    alpha: np.ndarray,
    beta: np.ndarray,
    gamma: np.ndarray,
    tau: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact solution of ``du/dt = alpha - beta u``, ``ds/dt = beta u - gamma s`` after a duration ``tau``.

    All arguments broadcast together; ``gamma`` must differ from ``beta``.
    """
    eb = np.exp(-beta * tau)
    eg = np.exp(-gamma * tau)
    u = u0 * eb + alpha / beta * (1.0 - eb)
    s = s0 * eg + alpha / gamma * (1.0 - eg) + (alpha - beta * u0) / (gamma - beta) * (eg - eb)
    return u, s


def _states(alpha, beta, gamma, t_sw, t):
    """Clean (u, s, transcription rate) of cells at times ``t`` (cells x genes, float64)."""
    u_sw, s_sw = splicing_solution(0.0, 0.0, alpha, beta, gamma, t_sw)
    induction = t[:, None] <= t_sw[None, :]
    u_ind, s_ind = splicing_solution(0.0, 0.0, alpha, beta, gamma, t[:, None])
    tau_rep = np.maximum(t[:, None] - t_sw[None, :], 0.0)
    u_rep, s_rep = splicing_solution(u_sw, s_sw, 0.0, beta, gamma, tau_rep)
    return np.where(induction, u_ind, u_rep), np.where(induction, s_ind, s_rep), np.where(induction, alpha, 0.0)


def _peak(alpha, beta, gamma, t_sw, t, *, per_layer: bool = False):
    """Largest clean u and s of each gene over the cells at times ``t`` (their maximum, or each one)."""
    u_max = np.zeros(len(alpha))
    s_max = np.zeros(len(alpha))
    for lo in range(0, len(t), BLOCK_CELLS):
        u, s, _ = _states(alpha, beta, gamma, t_sw, t[lo : lo + BLOCK_CELLS])
        u_max = np.maximum(u_max, u.max(axis=0))
        s_max = np.maximum(s_max, s.max(axis=0))
    return (u_max, s_max) if per_layer else np.maximum(u_max, s_max)


def _check_args(noise, noise_level, t_max, switch_range) -> tuple[float, float]:
    if noise not in NOISE_MODELS:
        raise InputError(f"unknown noise {noise!r}: use one of {', '.join(repr(n) for n in NOISE_MODELS)}")
    if not (isinstance(noise_level, (int, float, np.number)) and math.isfinite(noise_level)) or noise_level < 0:
        raise InputError(f"noise_level must be a finite number >= 0, got {noise_level!r}: pass e.g. 0.05")
    if not (isinstance(t_max, (int, float, np.number)) and math.isfinite(t_max) and t_max > 0):
        raise InputError(f"t_max must be a finite number > 0, got {t_max!r}: pass e.g. 1.0")
    try:
        lo, hi = (float(x) for x in switch_range)
    except (TypeError, ValueError):
        raise InputError(
            f"switch_range must be a pair (low, high) of fractions of t_max, got {switch_range!r}: "
            "pass e.g. (0.3, 0.7)"
        ) from None
    if not (0.0 < lo <= hi <= 1.0):
        raise InputError(
            f"switch_range must satisfy 0 < low <= high <= 1, got {switch_range!r}: pass e.g. (0.3, 0.7)"
        )
    return lo, hi


def simulation(
    n_cells: int = 1000,
    n_genes: int = 100,
    seed: int = 0,
    noise: str = "gaussian",
    noise_level: float = 0.05,
    t_max: float = 1.0,
    switch_range: Sequence[float] = (0.3, 0.7),
    truth_layers: bool = True,
) -> AnnData:
    """Cells sampled along switching splicing kinetics, with the noise-free truth stored alongside.

    Every gene starts at ``u = s = 0`` at ``t = 0`` and is transcribed at rate ``alpha`` until
    its switch time ``t_sw``; after that transcription stops (``alpha = 0``). Unspliced RNA is
    spliced at rate ``beta`` and spliced RNA degraded at rate ``gamma``; both phases use the
    exact solution of ``du/dt = a - beta u``, ``ds/dt = beta u - gamma s``.

    Per gene: ``beta ~ LogNormal(log 6, 0.4)``, ``gamma ~ LogNormal(log 4, 0.4)`` (moved away
    from ``beta`` when ``|gamma - beta| <= 0.05 beta``), ``alpha = beta * u_ss`` with the
    unspliced steady state ``u_ss ~ LogNormal(log 2, 0.3)`` clipped to [1, 3], and
    ``t_sw ~ Uniform(switch_range) * t_max``. Cell times are ``Uniform[0, t_max]``.

    Parameters
    ----------
    n_cells, n_genes
        Size of the data.
    seed
        Seed of :func:`numpy.random.default_rng`.
    noise
        ``"gaussian"``: add ``N(0, noise_level * m)`` where ``m`` is the gene's largest clean
        value (separately for u and s), then clip at 0. ``"poisson"``: scale each gene so its
        largest clean value is 20-50 counts and draw Poisson counts (``noise_level`` is unused).
    noise_level
        Relative standard deviation of the Gaussian noise.
    t_max
        Largest cell time.
    switch_range
        Range of the switch time as fractions of ``t_max``.
    truth_layers
        Store the noise-free cells x genes layers (``False`` for large data: the truth per cell and
        gene then follows from ``obs["true_time"]`` and the ``var["true_*"]`` columns, see
        :func:`simulation_truth`; ``X`` is left empty).

    Returns
    -------
    AnnData with float32 layers ``"spliced"``, ``"unspliced"`` (noisy; ``X`` is spliced),
    ``"true_spliced"``, ``"true_unspliced"`` (clean), ``"true_velocity"`` (ds/dt) and
    ``"true_velocity_u"`` (du/dt) (with ``truth_layers``); ``obs["true_time"]``; ``var["true_alpha"]``,
    ``var["true_beta"]``, ``var["true_gamma"]``, ``var["true_switch_time"]``,
    ``var["true_scale"]``; ``uns["velode_dataset"]`` with the parameters. All truth is in the
    units of the stored layers: with Poisson noise the per-gene scale ``var["true_scale"]``
    is folded into ``true_alpha`` and the clean layers (rates and times are unaffected), so
    ``true_velocity == true_beta * true_unspliced - true_gamma * true_spliced`` always holds.
    """
    n_cells = _check_positive_int("n_cells", n_cells)
    n_genes = _check_positive_int("n_genes", n_genes)
    lo, hi = _check_args(noise, noise_level, t_max, switch_range)
    t_max = float(t_max)
    rng = np.random.default_rng(seed)

    beta = rng.lognormal(np.log(6.0), 0.4, size=n_genes)
    gamma = rng.lognormal(np.log(4.0), 0.4, size=n_genes)
    close = np.abs(gamma - beta) <= MIN_RATE_GAP * beta
    # Push gamma 10% away from beta on the side it already lies on.
    gamma = np.where(close, beta * np.where(gamma >= beta, 1.1, 0.9), gamma)
    u_ss = np.clip(rng.lognormal(np.log(2.0), 0.3, size=n_genes), 1.0, 3.0)
    alpha = beta * u_ss
    t_sw = rng.uniform(lo, hi, size=n_genes) * t_max
    t = rng.uniform(0.0, t_max, size=n_cells)

    if noise == "poisson":
        # Scale each gene so its largest clean value is 20-50 counts: the largest clean value over
        # time is reached at the switch (u) or after it (s), found on a fine grid of times.
        target = rng.uniform(*POISSON_MAX_COUNTS, size=n_genes)
        peak = _peak(alpha, beta, gamma, t_sw, t)
        scale = target / np.where(peak > 0, peak, 1.0)
    else:
        scale = np.ones(n_genes)
    alpha = alpha * scale
    u_obs = _aligned.empty((n_cells, n_genes))  # read in place by JAX when fitted
    s_obs = _aligned.empty((n_cells, n_genes))
    truth = {k: np.empty((n_cells, n_genes), np.float32) for k in TRUTH_LAYERS} if truth_layers else None
    sd_u = sd_s = None
    if noise == "gaussian":
        u_max, s_max = _peak(alpha, beta, gamma, t_sw, t, per_layer=True)
        sd_u, sd_s = noise_level * u_max, noise_level * s_max
    # Cells in blocks: the float64 temporaries stay a block's size, whatever the number of cells.
    # The noise of u is drawn for every cell before that of s (one random stream, in that order).
    for layer, out in (("u", u_obs), ("s", s_obs)):
        for lo in range(0, n_cells, BLOCK_CELLS):
            hi = min(lo + BLOCK_CELLS, n_cells)
            u, s, a = _states(alpha, beta, gamma, t_sw, t[lo:hi])
            clean, sd = (u, sd_u) if layer == "u" else (s, sd_s)
            if noise == "poisson":
                out[lo:hi] = rng.poisson(clean)
            else:
                out[lo:hi] = np.clip(clean + rng.standard_normal(clean.shape) * sd, 0.0, None)
            if truth is not None and layer == "u":
                truth["true_spliced"][lo:hi] = s
                truth["true_unspliced"][lo:hi] = u
                truth["true_velocity"][lo:hi] = beta * u - gamma * s
                truth["true_velocity_u"][lo:hi] = a - beta * u

    obs = pd.DataFrame({"true_time": t}, index=pd.Index([f"cell_{i}" for i in range(n_cells)]))
    var = pd.DataFrame(
        {
            "true_alpha": alpha,
            "true_beta": beta,
            "true_gamma": gamma,
            "true_switch_time": t_sw,
            "true_scale": scale,
        },
        index=pd.Index([f"gene_{j}" for j in range(n_genes)]),
    )
    layers = {"spliced": s_obs, "unspliced": u_obs, **(truth or {})}
    adata = AnnData(X=s_obs.copy() if truth_layers else None, obs=obs, var=var, layers=layers)
    adata.uns["velode_dataset"] = {
        "name": "simulation",
        "n_cells": n_cells,
        "n_genes": n_genes,
        "seed": seed,
        "noise": noise,
        "noise_level": float(noise_level),
        "t_max": t_max,
        "switch_range": [lo, hi],
    }
    return adata


def simulation_truth(adata: AnnData, cells=None) -> dict:
    """The noise-free layers of a :func:`simulation` for the cells ``cells`` (index or mask; all by default).

    Recomputed from ``obs["true_time"]`` and the ``var["true_*"]`` columns (in the units of the stored
    layers): ``{"true_spliced", "true_unspliced", "true_velocity", "true_velocity_u"}``, float32.
    """
    t = adata.obs["true_time"].to_numpy(np.float64)
    if cells is not None:
        t = t[cells]
    v = {k: adata.var[f"true_{k}"].to_numpy(np.float64) for k in ("alpha", "beta", "gamma", "switch_time")}
    u, s, a = _states(v["alpha"], v["beta"], v["gamma"], v["switch_time"], t)
    f32 = lambda x: x.astype(np.float32)  # noqa: E731
    return {"true_spliced": f32(s), "true_unspliced": f32(u), "true_velocity": f32(v["beta"] * u - v["gamma"] * s),
            "true_velocity_u": f32(a - v["beta"] * u)}
