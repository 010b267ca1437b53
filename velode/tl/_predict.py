"""Saving a fitted model and applying it to cells it has not seen.

A saved model is a folder with two files:

- ``model.eqx``: the leaves of the fitted :class:`~velode.model._model.VelocityModel` (feature map,
  time encoder, kinetics, optional cell modulator), written by ``eqx.tree_serialise_leaves``;
- ``model.json``: what is needed to build the model's skeleton before reading those leaves (kinetics
  class and number of genes, encoder sizes, rank and bound of the cell modulator, whether the genes
  have onset times), the gene names in order, the layers the model was fitted to, the loss horizon,
  the solver, the training R^2 of each gene and the velode version; plus a hash of ``model.eqx``.

Both are written atomically (``model.eqx`` first): a reader never sees half a file, and a
``model.json`` whose hash does not match ``model.eqx`` (an interrupted save) is refused.

Predictions are exact for the closed form (``solver=analytic``, the default). A model fitted with a
numerical solver records the solver by name and step-size settings and is evaluated with them again
(rebuilt from Diffrax); if that is not possible it is evaluated with the closed form of the same
kinetics, with a warning.
"""

import dataclasses
import hashlib
import io
import json
import time
import warnings
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from anndata import AnnData

from .. import _matrix
from .._errors import ConfigError, InputError, SolverError
from .._fit import KINETICS, FitResult
from .._outputs import atomic_write, write_json
from ..model._encoder import FeatureMap, TimeEncoder
from ..model._model import CellModulator, VelocityModel, predict as _model_predict
from ..model._solve import Integrator
from ._fit import _check_layer

MODEL_FILE = "model.eqx"
META_FILE = "model.json"
FORMAT = 1


@dataclasses.dataclass
class FittedModel:
    """A fitted model with what it takes to apply it to new data.

    ``fit_r2`` / ``velocity_genes`` (per gene, training cells) are ``None`` when unknown.
    """

    model: VelocityModel
    integrator: Integrator
    var_names: list[str]
    horizon: float | None = None  # s is projected this far ahead in latent time (layers["projected_spliced"])
    spliced_key: str = "Ms"
    unspliced_key: str = "Mu"
    r2_min: float = 0.1
    fit_r2: np.ndarray | None = None
    velocity_genes: np.ndarray | None = None
    meta: dict = dataclasses.field(default_factory=dict)  # the rest of model.json (solver, version, preprocessing)
    source: str | None = None  # the folder it was loaded from

    @property
    def n_genes(self) -> int:
        return int(self.model.kinetics.n_genes)

    @classmethod
    def from_fit(cls, fitted, adata: AnnData | None = None, *, var_names=None, integrator: Integrator | None = None,
                 horizon: float | None = None, spliced_key: str = "Ms", unspliced_key: str = "Mu") -> "FittedModel":
        """From a :class:`FitResult` of ``velode.tl.fit`` (or a bare ``VelocityModel``) and the AnnData it fitted.

        ``adata`` gives the gene names and the training R^2 (``var["fit_r2"]``, ``var["velocity_genes"]``,
        ``uns["velode"]["r2_min"]``); without it, pass ``var_names``. A bare model is evaluated with
        ``integrator`` (default: the closed form) and ``horizon`` (default: ``uns["velode"]["horizon"]``).
        """
        if isinstance(fitted, FittedModel):
            return fitted
        if isinstance(fitted, FitResult):
            model, integrator, horizon = fitted.model, fitted.integrator, float(fitted.loss_cfg.horizon)
        elif isinstance(fitted, VelocityModel):
            model = fitted
        else:
            raise TypeError(f"expected a FitResult or a VelocityModel, got {type(fitted).__name__}")
        info = adata.uns.get("velode", {}) if adata is not None else {}
        if integrator is None:
            integrator = Integrator()
        if horizon is None and "horizon" in info:
            horizon = float(info["horizon"])
        n_genes = int(model.kinetics.n_genes)
        if var_names is None:
            if adata is None:
                raise ConfigError("the gene names of the model are unknown: pass the fitted AnnData or var_names")
            var_names = adata.var_names
        var_names = [str(g) for g in var_names]
        if len(var_names) != n_genes:
            raise InputError(f"the model has {n_genes} genes but {len(var_names)} gene names were given")
        if len(set(var_names)) != n_genes:
            raise InputError("the gene names of the model are not unique: call adata.var_names_make_unique() "
                             "before fitting")
        fit_r2 = velocity_genes = None
        if adata is not None and "fit_r2" in adata.var and adata.n_vars == n_genes:
            fit_r2 = adata.var["fit_r2"].to_numpy(np.float32)
            if "velocity_genes" in adata.var:
                velocity_genes = adata.var["velocity_genes"].to_numpy(bool)
        meta = {}
        pp = adata.uns.get("velode_pp", {}) if adata is not None else {}
        if "method" in pp:
            meta["preprocess"] = str(pp["method"])
        return cls(model, integrator, var_names, horizon, spliced_key, unspliced_key,
                   float(info.get("r2_min", 0.1)), fit_r2, velocity_genes, meta)

    def save(self, path) -> Path:
        """Write ``model.eqx`` and ``model.json`` into the folder ``path`` (created if needed)."""
        from .. import __version__

        path = Path(path)
        buf = io.BytesIO()
        eqx.tree_serialise_leaves(buf, self.model)
        data = buf.getvalue()
        model = self.model
        kin = model.kinetics
        mlp = model.encoder.mlp
        mod = model.modulator
        meta = {
            "format": FORMAT,
            "velode_version": __version__,
            "sha256": hashlib.sha256(data).hexdigest(),
            "kinetics": {"name": _kinetics_name(kin), "n_genes": int(kin.n_genes), "rate_max": float(kin.rate_max),
                         "switch_max": float(getattr(kin, "switch_max", 0.0)) or None,
                         "onset": kin.onset_time() is not None},
            "features": {"n_inputs": int(model.features.mean.shape[0]), "n_features": int(model.features.n_features)},
            "encoder": {"n_features": int(mlp.in_size), "width": int(mlp.width_size), "depth": int(mlp.depth)},
            "cell_modulator": None if mod is None else {"rank": int(mod.proj.shape[0]), "bound": float(mod.bound)},
            "dtype": str(kin.raw_alpha.dtype),
            "var_names": list(self.var_names),
            "layers": {"spliced": self.spliced_key, "unspliced": self.unspliced_key},
            "horizon": self.horizon,
            "solver": _describe(self.integrator),
            "r2_min": float(self.r2_min),
            "fit_r2": None if self.fit_r2 is None else [float(x) if np.isfinite(x) else None for x in self.fit_r2],
            "velocity_genes": None if self.velocity_genes is None else [bool(x) for x in self.velocity_genes],
            **{k: v for k, v in self.meta.items() if k == "preprocess"},
        }
        atomic_write(path / MODEL_FILE, lambda tmp: Path(tmp).write_bytes(data))
        write_json(path / META_FILE, meta)
        return path


def _kinetics_name(kin) -> str:
    for name, cls in KINETICS.items():
        if type(kin) is cls:
            return name
    raise TypeError(f"cannot save kinetics of type {type(kin).__name__}")


def _describe(integrator: Integrator) -> dict:
    """The solver settings, by name (JSON); the closed form is the only one rebuilt exactly in every case."""
    out = {"name": "analytic" if integrator.analytic else type(integrator.solver).__name__,
           "max_steps": int(integrator.max_steps), "n_grid": int(integrator.n_grid),
           "dt0": None if integrator.dt0 is None else float(integrator.dt0), "per_gene": integrator.per_gene}
    if not integrator.analytic:
        ctrl = integrator.stepsize_controller
        out["stepsize_controller"] = type(ctrl).__name__
        if isinstance(ctrl, diffrax.PIDController):
            out["rtol"], out["atol"] = float(ctrl.rtol), float(ctrl.atol)
        out["adjoint"] = type(integrator.adjoint).__name__
    return out


def _integrator(desc: dict) -> Integrator:
    """The Integrator described by :func:`_describe`; the closed form (with a warning) if it cannot be rebuilt."""
    grid = dict(max_steps=int(desc.get("max_steps", 4096)), n_grid=int(desc.get("n_grid", 129)))
    name = desc.get("name", "analytic")
    if name == "analytic":
        return Integrator(**grid)
    cls = getattr(diffrax, name, None)
    try:
        if not (isinstance(cls, type) and issubclass(cls, diffrax.AbstractSolver)):
            raise TypeError(name)
        if desc.get("stepsize_controller") == "PIDController":
            ctrl = diffrax.PIDController(rtol=desc["rtol"], atol=desc["atol"])
        else:
            ctrl = diffrax.ConstantStepSize()
        return Integrator(solver=cls(), stepsize_controller=ctrl, dt0=desc.get("dt0"), per_gene=desc.get("per_gene"),
                          **grid)
    except (TypeError, KeyError, ValueError):
        warnings.warn(f"the model's solver {name!r} cannot be rebuilt here: predicting with the closed form of the "
                      "same kinetics", UserWarning, stacklevel=3)
        return Integrator(**grid)


def _skeleton(meta: dict) -> VelocityModel:
    """A model of the recorded structure, as shapes only (filled by deserialising model.eqx)."""
    k = meta["kinetics"]
    n_genes = int(k["n_genes"])
    f, e, m = meta["features"], meta["encoder"], meta.get("cell_modulator")
    if k["name"] not in KINETICS:
        raise InputError(f"model.json names unknown kinetics {k['name']!r}: choose one of {sorted(KINETICS)}")

    def build():
        key = jax.random.PRNGKey(0)
        z = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
        fmap = FeatureMap(z(f["n_inputs"]), z(f["n_inputs"]), z(f["n_inputs"], f["n_features"]))
        enc = TimeEncoder(e["n_features"], width=e["width"], depth=e["depth"], key=key)
        if k["name"] == "dynamical":
            kin = KINETICS["dynamical"](n_genes, rate_max=k["rate_max"], switch_max=k["switch_max"],
                                        onset=0.5 if k["onset"] else None)
        else:
            kin = KINETICS[k["name"]](n_genes, rate_max=k["rate_max"])
        mod = None if m is None else CellModulator(e["n_features"], n_genes, m["rank"], bound=m["bound"], key=key)
        return VelocityModel(fmap, enc, kin, mod)

    return eqx.filter_eval_shape(build)


def save_model(fitted, path, adata: AnnData | None = None, *, var_names=None, integrator: Integrator | None = None,
               horizon: float | None = None, spliced_key: str = "Ms", unspliced_key: str = "Mu") -> Path:
    """Save a fitted model into the folder ``path``: ``model.eqx`` (Equinox leaves) and ``model.json``.

    ``fitted``: the :class:`FitResult` returned by ``velode.tl.fit`` (or a ``VelocityModel``, or a
    :class:`FittedModel`). ``adata``: the AnnData it was fitted to, after ``tl.fit`` (gene names,
    training R^2 and velocity genes); without it, pass ``var_names``. ``spliced_key`` /
    ``unspliced_key``: the layers it was fitted to. Returns ``path``.

    ``velode.tl.load_model(path)`` reads it back; ``velode.tl.predict(new_adata, path)`` applies it.
    """
    fm = FittedModel.from_fit(fitted, adata, var_names=var_names, integrator=integrator, horizon=horizon,
                              spliced_key=spliced_key, unspliced_key=unspliced_key)
    return fm.save(path)


def load_model(path) -> FittedModel:
    """The model saved in the folder ``path`` by :func:`save_model` (or by a ``velode`` run)."""
    path = Path(path)
    if not (path / MODEL_FILE).is_file() or not (path / META_FILE).is_file():
        missing = [n for n in (MODEL_FILE, META_FILE) if not (path / n).is_file()]
        raise InputError(f"{path} holds no {' or '.join(missing)}: give the folder of a finished velode run "
                         "or of velode.tl.save_model")
    try:
        meta = json.loads((path / META_FILE).read_text())
        data = (path / MODEL_FILE).read_bytes()
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the model in {path}: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{path / META_FILE} is not a velode model description of format {FORMAT}")
    if meta.get("sha256") != hashlib.sha256(data).hexdigest():
        raise InputError(f"{path / MODEL_FILE} does not match {path / META_FILE} (an interrupted save?): save the "
                         "model again")
    like = _skeleton(meta)
    try:
        model = eqx.tree_deserialise_leaves(io.BytesIO(data), like)
    except Exception as err:  # a truncated or foreign file
        raise InputError(f"cannot read {path / MODEL_FILE}: {err}") from None
    got = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
    want = jax.tree_util.tree_leaves(eqx.filter(like, lambda x: isinstance(x, jax.ShapeDtypeStruct)))
    if len(got) != len(want) or any(jnp.shape(a) != b.shape for a, b in zip(got, want)):
        raise InputError(f"{path / MODEL_FILE} does not hold the model {path / META_FILE} describes")
    r2 = meta.get("fit_r2")
    vg = meta.get("velocity_genes")
    layers = meta.get("layers", {})
    return FittedModel(
        model=model,
        integrator=_integrator(meta.get("solver", {})),
        var_names=list(meta["var_names"]),
        horizon=meta.get("horizon"),
        spliced_key=layers.get("spliced", "Ms"),
        unspliced_key=layers.get("unspliced", "Mu"),
        r2_min=float(meta.get("r2_min", 0.1)),
        fit_r2=None if r2 is None else np.array([-np.inf if x is None else x for x in r2], np.float32),
        velocity_genes=None if vg is None else np.asarray(vg, bool),
        meta={k: v for k, v in meta.items() if k not in ("var_names", "fit_r2", "velocity_genes")},
        source=str(path),
    )


@eqx.filter_jit
def _predict_batch(model: VelocityModel, x, integrator: Integrator, horizon: float, project: bool):
    """The model's outputs for one batch of cells; x is [spliced, unspliced] (cells x 2 genes)."""
    features = model.features(x)
    pred = _model_predict(model, features, integrator, horizon=horizon, project=project)
    z = None if model.modulator is None else model.modulator.embed(features)
    return pred, z


def evaluate_cells(model: VelocityModel, integrator: Integrator, obs_s, obs_u, *, horizon: float, project: bool,
                   batch_size: int = 4096):
    """The model's outputs for every cell of ``obs_s``, ``obs_u`` (cells x genes), ``batch_size`` cells at a time.

    Returns (layers: velocity, velocity_u, fit_s, fit_u and, if ``project``, projected_spliced, as
    float32 numpy arrays; latent time; the cell factors of a cell modulator or None; per-gene R^2 of
    the fit on these cells; whether every solve succeeded). JAX never holds more than ``batch_size``
    x genes of temporaries.
    """
    n, g = obs_s.shape
    rows = int(min(batch_size, n))
    keys = ["velocity", "velocity_u", "fit_s", "fit_u"] + (["projected_spliced"] if project else [])
    res = {k: np.empty((n, g), np.float32) for k in keys}
    latent = np.empty(n, np.float32)
    cell_z = None if model.modulator is None else np.empty((n, model.modulator.proj.shape[0]), np.float32)
    # Per-gene sums for the R^2 on these cells (float64): squared deviation from the mean, squared residual.
    means = (_matrix.column_mean(obs_u), _matrix.column_mean(obs_s))
    sums = np.zeros((4, g), np.float64)
    ok = True
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        x = np.zeros((rows, 2 * g), np.float32)  # the last batch is padded, so one compilation serves all
        block_s, block_u = _matrix.block(obs_s, start, stop), _matrix.block(obs_u, start, stop)  # sparse: densified
        x[: stop - start, :g] = block_s
        x[: stop - start, g:] = block_u
        pred, z = _predict_batch(model, jnp.asarray(x), integrator, horizon, project)
        ok = ok and bool(pred.info.ok)
        m = stop - start
        got = {"velocity": pred.velocity, "velocity_u": pred.velocity_u, "fit_s": pred.spliced,
               "fit_u": pred.unspliced, "projected_spliced": pred.projected_spliced}
        for k in keys:
            res[k][start:stop] = np.asarray(got[k])[:m]  # sliced on the host: no program
        latent[start:stop] = np.asarray(pred.latent_time)[:m]
        if cell_z is not None:
            cell_z[start:stop] = np.asarray(z)[:m]
        for j, (o, p) in enumerate(((block_u, res["fit_u"][start:stop]), (block_s, res["fit_s"][start:stop]))):
            o64 = o.astype(np.float64)
            sums[2 * j] += ((o64 - means[j]) ** 2).sum(0)
            sums[2 * j + 1] += ((o64 - p) ** 2).sum(0)
    return res, latent, cell_z, _r2_from_sums(sums, n), ok


def _fitted(model_or_path) -> FittedModel:
    if isinstance(model_or_path, FittedModel):
        return model_or_path
    if isinstance(model_or_path, (str, Path)):
        return load_model(model_or_path)
    raise TypeError(
        f"expected a FittedModel or the folder of a saved model, got {type(model_or_path).__name__} "
        "(for a FitResult: velode.tl.FittedModel.from_fit(result, adata))"
    )


def predict(adata: AnnData, model_or_path, *, batch_size: int = 4096, spliced_key: str = "Ms",
            unspliced_key: str = "Mu") -> AnnData:
    """Apply a fitted model to the cells of ``adata`` (cells it has not seen), in batches of cells.

    ``model_or_path``: a folder written by :func:`save_model` or by a ``velode`` run, or a
    :class:`FittedModel`. ``adata`` must be preprocessed like the training data and hold every
    fitted gene (matched by name) in ``layers[spliced_key]`` and ``layers[unspliced_key]``.

    The result is restricted to the fitted genes, in the model's order: when ``adata`` holds exactly
    those genes in that order it is written in place and returned; otherwise the returned AnnData
    is a copy of ``adata[:, fitted genes]`` (other genes dropped) and ``adata`` is left unchanged.

    Sets the cell-level keys of ``velode.tl.fit`` for the new cells: ``layers["velocity"]``,
    ``layers["velocity_u"]``, ``layers["fit_s"]``, ``layers["fit_u"]``, ``layers["projected_spliced"]``
    (if the model records a horizon), ``obs["latent_time"]``, ``obsm["velode_cell_z"]`` (with
    cell-specific transcription); copies the fitted gene-level keys (``var["fit_*"]`` with the training
    ``fit_r2``, ``var["velocity_genes"]``, ``varm["velode_cell_loadings"]``); adds ``var["predict_r2"]``
    (R^2 of the fit on these cells) and ``uns["velode"]`` (``predicted_from`` and the model's settings).

    At most ``batch_size`` cells are evaluated at a time (the JAX temporaries are ``batch_size`` x
    genes); the outputs are filled into float32 numpy arrays.
    """
    t0 = time.perf_counter()
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    fm = _fitted(model_or_path)
    if adata.n_obs < 1:
        raise InputError("no cells to predict: the data has 0 cells")
    if not adata.var_names.is_unique:
        raise InputError("var_names are not unique: call adata.var_names_make_unique() first")
    idx = adata.var_names.get_indexer(fm.var_names)
    missing = [g for g, i in zip(fm.var_names, idx) if i < 0]
    if missing:
        shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise InputError(f"{len(missing)} of the model's {fm.n_genes} genes are not in the data ({shown}): the "
                         "data must hold every fitted gene (preprocessed as for the fit; other genes are dropped)")
    same = adata.n_vars == fm.n_genes and bool(np.all(idx == np.arange(fm.n_genes)))
    view = adata if same else adata[:, idx]
    obs_s = _check_layer(view, spliced_key)
    obs_u = _check_layer(view, unspliced_key)
    out = adata if same else view.copy()

    model, integrator = fm.model, fm.integrator
    project = fm.horizon is not None
    horizon = float(fm.horizon) if project else 0.0
    n = obs_s.shape[0]
    rows = int(min(batch_size, n))
    res, latent, cell_z, r2, ok = evaluate_cells(model, integrator, obs_s, obs_u, horizon=horizon, project=project,
                                                 batch_size=rows)
    if not ok:
        from .._train import solver_failure_message

        raise SolverError(solver_failure_message(integrator, "when evaluating the model on new cells"))
    if not (np.all(np.isfinite(res["velocity"])) and np.all(np.isfinite(res["fit_s"]))):
        raise SolverError("the model gives non-finite velocities on these cells: check that they are preprocessed "
                          "as the training data were")

    for k, layer in res.items():
        out.layers[k] = layer
    if not project:
        out.layers.pop("projected_spliced", None)
    out.obs["latent_time"] = latent
    out.obsm.pop("velode_cell_z", None)
    out.varm.pop("velode_cell_loadings", None)
    if cell_z is not None:
        out.obsm["velode_cell_z"] = cell_z
        out.varm["velode_cell_loadings"] = np.asarray(model.modulator.loadings, np.float32).T
    _write_genes(out, fm)
    out.var["predict_r2"] = r2.astype(np.float32)
    if fm.velocity_genes is not None:
        out.var["velocity_genes"] = np.asarray(fm.velocity_genes, bool)
    else:  # unknown from the training cells: judged on these cells
        out.var["velocity_genes"] = np.isfinite(r2) & (r2 > fm.r2_min)
    info = {
        "predicted_from": fm.source if fm.source is not None else "memory",
        "kinetics": type(model.kinetics).__name__,
        "solver": fm.meta.get("solver", {}).get("name") or ("analytic" if integrator.analytic
                                                               else type(integrator.solver).__name__),
        "horizon": horizon if project else None,
        "r2_min": float(fm.r2_min),
        "n_velocity_genes": int(out.var["velocity_genes"].sum()),
        "n_model_genes": fm.n_genes,
        "n_dropped_genes": int(adata.n_vars - fm.n_genes),
        "spliced_key": spliced_key,
        "unspliced_key": unspliced_key,
        "batch_size": rows,
        "predict_seconds": time.perf_counter() - t0,
    }
    if "velode_version" in fm.meta:
        info["model_version"] = fm.meta["velode_version"]
    if model.modulator is not None:
        info["cell_bound"] = float(model.modulator.bound)
    out.uns["velode"] = info
    return out


def _write_genes(out: AnnData, fm: FittedModel) -> None:
    """The gene-level keys of the fit (var["fit_*"]) from the model's kinetics and the recorded training R^2."""
    from ._fit import write_kinetics

    write_kinetics(out, fm.model.kinetics)
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    if fm.fit_r2 is not None:
        out.var["fit_r2"] = f32(fm.fit_r2)
    elif "fit_r2" in out.var:
        del out.var["fit_r2"]


def _r2_from_sums(sums: np.ndarray, n: int) -> np.ndarray:
    """Per-gene R^2 of the joint (u, s) fit, each layer scaled by its variance, from per-gene sums of (x - mean)^2 and (x - fit)^2 of u (rows 0-1) and s (rows 2-3)."""
    def one(dev, res):
        var = dev / n
        return np.where(var > 0, (res / n) / np.maximum(var, 1e-12), np.inf)

    return 1.0 - 0.5 * (one(*sums[:2]) + one(*sums[2:]))
