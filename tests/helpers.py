"""Shared utilities for the model tests."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

EXPLICIT_SOLVERS = [
    diffrax.Euler,
    diffrax.Heun,
    diffrax.Midpoint,
    diffrax.Bosh3,
    diffrax.Tsit5,
    diffrax.Dopri5,
    diffrax.Dopri8,
]
IMPLICIT_SOLVERS = [diffrax.Kvaerno5]
ALL_SOLVERS = EXPLICIT_SOLVERS + IMPLICIT_SOLVERS
# Low-order explicit solvers: run with constant steps rather than an adaptive controller.
FIXED_STEP_SOLVERS = [diffrax.Euler, diffrax.Heun, diffrax.Midpoint]


def tree_allclose(a, b, rtol=1e-5, atol=1e-8):
    """True if the two pytrees have the same structure and all array leaves are close."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return False
        if not np.allclose(x, y, rtol=rtol, atol=atol):
            return False
    return True


def max_rel_err(a, b, floor=1e-12):
    """Largest |a - b| / max(|b|, floor) over all leaves of two pytrees."""
    errs = jax.tree_util.tree_map(
        lambda x, y: float(jnp.max(jnp.abs(x - y) / jnp.maximum(jnp.abs(y), floor))) if jnp.size(x) else 0.0, a, b
    )
    return max(jax.tree_util.tree_leaves(errs), default=0.0)


def random_kinetics(kind, n_genes, seed, dtype=None, *, beta=(0.5, 10.0), gamma=(0.5, 10.0), switch=(0.2, 0.8)):
    """Standard ("standard") or switching ("dynamical") kinetics with random per-gene rates."""
    from velode.model._kinetics import DynamicalKinetics, StandardKinetics

    rng = np.random.default_rng(seed)
    arr = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    kw = dict(
        alpha=arr(rng.uniform(0.5, 5.0, n_genes)),
        beta=arr(rng.uniform(*beta, n_genes)),
        gamma=arr(rng.uniform(*gamma, n_genes)),
        scale=arr(rng.uniform(0.5, 2.0, n_genes)),
        alpha0=arr(rng.uniform(0.05, 0.5, n_genes)),
    )
    if kind == "standard":
        return StandardKinetics(n_genes, **kw)
    if kind == "dynamical":
        return DynamicalKinetics(n_genes, **kw, switch=arr(rng.uniform(*switch, n_genes)))
    raise ValueError(kind)


def load_script(relpath: str):
    """Import a script of the repository (e.g. "scripts/aggregate.py") as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_cli(tmp_path, *overrides, name="run", env=None):
    """Run the ``velode`` command with ``overrides`` into the run folder ``tmp_path / name``.

    ``env``: environment variables to set for the command, on top of this process's.
    """
    import os
    import subprocess
    import sys

    out = tmp_path / name
    proc = subprocess.run(
        [sys.executable, "-m", "velode._cli", f"hydra.run.dir={out}", *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        env=None if env is None else {**os.environ, **env},
    )
    return proc, out
