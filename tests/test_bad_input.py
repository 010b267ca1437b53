"""Every kind of bad input, through the `velode` command and through the Python API.

The command exits non-zero with one line on stderr, ``velode: error: <message>``, and writes no
velocity.h5ad; the API raises a ValueError with the same message. Config errors Hydra finds while
composing (an unknown key or group option) end with Hydra's own message instead.
"""

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from helpers import run_cli

import velode

N_CELLS, N_GENES = 60, 20
# Small enough that a case which reaches the fit costs seconds, not minutes.
TINY = ["plots=false", "trainer.max_steps=5", "trainer.progress=false", "model.pretrain_steps=5",
        "model.probe_steps=2", "model.assign_rounds=1"]
TINY_MODEL = {"pretrain_steps": 5, "probe_steps": 2, "assign_rounds": 1}
TINY_TRAINER = {"max_steps": 5, "progress": False}


def _good():
    a = velode.datasets.synthetic(N_CELLS, N_GENES, seed=0)
    a.obs["clusters"] = pd.Categorical(np.where(a.obs["true_time"] < 0.5, "early", "late"))
    return a


def _h5ad(change: Callable | None = None):
    """A writer of the good data, changed by ``change(adata) -> adata`` first."""

    def write(path):
        a = _good()
        a = a if change is None else change(a)
        a.write_h5ad(path)

    return write


def _set(layer, where, value):
    def change(a):
        a.layers[layer][where] = value
        return a

    return change


def _drop(layer):
    def change(a):
        del a.layers[layer]
        return a

    return change


def _all_zero(a):
    a.layers["spliced"][:] = 0
    a.layers["unspliced"][:] = 0
    return a


def _truncated(path):
    _h5ad()(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _unspliced_one_gene_short(path):
    _h5ad()(path)
    with h5py.File(path, "r+") as f:  # anndata refuses to write such a file, so it is edited in place
        del f["layers/unspliced"]
        short = f["layers"].create_dataset("unspliced", data=np.ones((N_CELLS, N_GENES - 1), np.float32))
        short.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})


def _obs_time(value_of_cell_0):
    """obs["t"], a starting clock, with ``value_of_cell_0`` for the first cell."""

    def change(a):
        t = a.obs["true_time"].to_numpy(np.float64).copy()
        t[0] = value_of_cell_0
        a.obs["t"] = t
        return a

    return change


def _preprocessed(path, **kw):
    return velode.pp.preprocess(velode.read(path), method="none", **kw)


def _fit(path, **kw):
    kw = {"model": TINY_MODEL, "trainer": TINY_TRAINER, **kw}
    return velode.tl.fit(_preprocessed(path), **kw)


@dataclasses.dataclass
class Case:
    id: str
    phrase: str  # in the message of the command and of the API alike
    file: Callable | None = _h5ad()  # writes the input file at the path given (None: no file)
    name: str = "data.h5ad"
    overrides: tuple = ()
    preprocess: str = "none"
    api: Callable | None = _preprocessed  # path -> raises ValueError; None: the case is the command's only
    api_phrase: str | None = None  # when the API names it differently
    same: bool = True  # the command prints exactly the API's message
    hydra: bool = False  # Hydra's own message (a config that does not compose)
    with_path: bool = True


CASES = [
    # the file
    Case("missing_file", "file not found", file=None, api=velode.read),
    Case("directory", "is a directory", file=lambda p: p.mkdir(), api=velode.read),
    Case("not_h5ad_or_loom", "velode reads .h5ad and .loom files", file=lambda p: p.write_text("gene,count\n"),
         name="counts.csv", api=velode.read),
    Case("empty_file", "is the file complete", file=lambda p: p.write_bytes(b""), api=velode.read),
    Case("truncated_file", "is the file complete", file=_truncated, api=velode.read),
    Case("path_not_given", "data.path is required", file=None, with_path=False, api=None),
    # the layers and their values
    Case("no_spliced", "layer 'spliced' is missing", file=_h5ad(_drop("spliced"))),
    Case("no_unspliced", "layer 'unspliced' is missing", file=_h5ad(_drop("unspliced"))),
    Case("layer_shapes_differ", "every layer needs one row per cell and one column per gene",
         file=_unspliced_one_gene_short, api=velode.read),
    Case("zero_cells", "0 cells", file=_h5ad(lambda a: a[:0].copy())),
    Case("zero_genes", "0 genes", file=_h5ad(lambda a: a[:, :0].copy())),
    Case("nan", "has 1 NaN entries", file=_h5ad(_set("spliced", (3, 4), np.nan))),
    Case("infinite", "has 1 infinite entries", file=_h5ad(_set("unspliced", (5, 6), np.inf))),
    Case("negative", "has 1 negative entries", file=_h5ad(_set("unspliced", (1, 2), -1.0))),
    Case("all_genes_zero", f"all {N_GENES} genes have zero counts", file=_h5ad(_all_zero)),
    Case("too_few_cells_for_knn", "too few cells for a kNN graph", file=_h5ad(lambda a: a[:2].copy()),
         preprocess="scvelo", api=lambda p: velode.pp.preprocess(velode.read(p), method="scvelo")),
    # names of what is not there
    Case("cluster_key_not_in_obs", "cluster_key='nope' is not a column of obs", overrides=("data.cluster_key=nope",),
         api=lambda p: _fit(p, cluster_key="nope", root_cluster="early"), same=False),
    Case("root_cluster_not_a_category", "root_cluster 'nowhere' is not a category of obs['clusters']",
         overrides=("data.root_cluster=nowhere",), api=lambda p: _fit(p, root_cluster="nowhere")),
    Case("time_key_not_in_obs", "time_key='nope' is not a column of obs", overrides=("data.time_key=nope",),
         api=lambda p: _fit(p, time_key="nope")),
    Case("time_key_with_nan", "obs['t'] has 1 NaN or infinite values", file=_h5ad(_obs_time(np.nan)),
         overrides=("data.time_key=t",), api=lambda p: _fit(p, time_key="t")),
    Case("time_key_not_numeric", "obs['clusters'] holds category values: time_key needs a numeric column",
         overrides=("data.time_key=clusters",), api=lambda p: _fit(p, time_key="clusters")),
    Case("time_key_and_root_cluster", "both start the clock: give one",
         overrides=("data.time_key=true_time", "data.root_cluster=early"),
         api=lambda p: _fit(p, time_key="true_time", root_cluster="early"), same=False),
    Case("gene_not_in_var_names", "1 of 2 genes in the gene list are not in var_names ('nope')",
         overrides=("data.genes=[gene_0,nope]",), api=lambda p: _preprocessed(p, genes=["gene_0", "nope"])),
    Case("empty_gene_list", "the gene list is empty", overrides=("data.genes=[]",),
         api=lambda p: _preprocessed(p, genes=[])),
    # the config
    Case("unknown_group_option", "Could not find 'model/nonsense'", overrides=("model=nonsense",), hydra=True,
         api=lambda p: _fit(p, kinetics="nonsense"), api_phrase="unknown kinetics 'nonsense'"),
    Case("unknown_key", "Key 'nonsense' is not in struct", overrides=("trainer.nonsense=1",), hydra=True,
         api=lambda p: _fit(p, trainer={"nonsense": 1}), api_phrase="unknown trainer option(s) ['nonsense']"),
    Case("appended_unknown_key", "unknown trainer option(s) ['nonsense']", overrides=("+trainer.nonsense=1",),
         api=lambda p: _fit(p, trainer={**TINY_TRAINER, "nonsense": 1})),
    # The command's model group also holds r2_min (an argument of tl.fit of its own): listed there only.
    Case("appended_unknown_model_key", "'probe_steps', 'r2_min', 'rate_max', 'restart_after_probe', 'switch_search',",
         overrides=("+model.nonsense=1",), api=lambda p: _fit(p, model={**TINY_MODEL, "nonsense": 1}),
         api_phrase="unknown model option(s) ['nonsense']: known options are ['assign_gap', 'assign_grid',", same=False),
    Case("appended_unknown_data_key",
         "unknown data option(s) ['nonsense'] for data=h5ad: known options are "
         "['cluster_key', 'genes', 'name', 'path', 'root_cluster', 'stage_order', 'time_key']",
         overrides=("+data.nonsense=1",), api=None),
    Case("appended_unknown_preprocess_key",
         "unknown preprocess option(s) ['nonsense']: known options are "
         "['method', 'min_shared_counts', 'n_neighbors', 'n_pcs', 'n_top_genes']",
         overrides=("+preprocess.nonsense=1",), api=None),
    Case("appended_unknown_solver_key",
         "unknown solver option(s) ['nonsense']: known options are ['max_steps', 'method', 'n_grid', 'name']",
         overrides=("+solver.nonsense=1",), api=None),
    Case("appended_unknown_stepsize_key",
         "unknown stepsize option(s) ['nonsense']: known options are ['atol', 'controller', 'dt', 'n_steps', 'rtol']",
         overrides=("+stepsize.nonsense=1",), api=None),
    Case("appended_unknown_adjoint_key",
         "cannot build the solver, step-size controller or adjoint from solver=tsit5, stepsize, adjoint settings "
         "(RecursiveCheckpointAdjoint.__init__() got an unexpected keyword argument 'nonsense')",
         overrides=("solver=tsit5", "+adjoint.nonsense=1"), api=None),
    Case("unknown_optimizer", "unknown trainer.optimizer 'nonsense'", overrides=("trainer.optimizer=nonsense",),
         api=lambda p: _fit(p, trainer={**TINY_TRAINER, "optimizer": "nonsense"})),
    Case("value_of_wrong_type", "trainer.lr must be a number, got 'fast'", overrides=("trainer.lr=fast",),
         api=lambda p: _fit(p, trainer={**TINY_TRAINER, "lr": "fast"})),
    Case("solver_max_steps_not_an_integer", "solver.max_steps must be an integer >= 1, got 'many'",
         overrides=("solver.max_steps=many",), api=lambda p: _fit(p, max_steps="many")),
]
IDS = [c.id for c in CASES]
assert len(set(IDS)) == len(IDS)


def _input(case: Case, tmp_path):
    path = tmp_path / case.name
    if case.file is not None:
        case.file(path)
    return path


def _api_error(case: Case, path) -> ValueError:
    with pytest.raises(ValueError) as info:
        case.api(path)
    return info.value


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_command_one_line_error_and_nothing_written(case, tmp_path):
    path = _input(case, tmp_path)
    data = ["data=h5ad"] + ([f"data.path={path}"] if case.with_path else [])
    proc, out = run_cli(tmp_path, *data, f"preprocess={case.preprocess}", *TINY, *case.overrides)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("velocity.h5ad"))
    if case.hydra:  # Hydra stops before the job starts: its message, no run folder
        assert case.phrase in proc.stderr, proc.stderr
        assert not out.exists()
        return
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("velode: error: "), proc.stderr
    assert case.phrase in lines[0]
    if case.api is not None and case.same:
        assert lines[0] == f"velode: error: {_api_error(case, path)}"
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("case", [c for c in CASES if c.api is not None], ids=[c.id for c in CASES if c.api])
def test_api_raises_value_error_with_the_message(case, tmp_path):
    err = _api_error(case, _input(case, tmp_path))
    assert isinstance(err, velode.VelodeError)
    message = str(err)
    assert (case.api_phrase or case.phrase) in message
    assert message == " ".join(message.split())  # one line



def test_full_error_shows_the_traceback_too(tmp_path):
    """HYDRA_FULL_ERROR=1: the traceback of velode's error, then the same one line; still nothing written."""
    missing = ["data=h5ad", f"data.path={tmp_path / 'nowhere.h5ad'}", *TINY]
    plain, _ = run_cli(tmp_path, *missing, name="plain")
    full, out = run_cli(tmp_path, *missing, name="full", env={"HYDRA_FULL_ERROR": "1"})
    assert plain.returncode == full.returncode == 1
    assert "Traceback" not in plain.stderr
    line = plain.stderr.strip()
    assert line.startswith("velode: error: ") and "file not found" in line
    lines = [ln for ln in full.stderr.splitlines() if ln.strip()]
    assert lines[0] == "Traceback (most recent call last):", full.stderr
    assert any("InputError" in ln for ln in lines), full.stderr
    assert lines[-1] == line
    assert not list(tmp_path.rglob("velocity.h5ad"))
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"


CONF = Path(__file__).resolve().parents[1] / "conf"


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _shipped():
    """Override lists that choose each shipped option of data, preprocess, solver, stepsize, and each experiment."""
    return [[f"{group}={option}"] for group in ("data", "preprocess", "solver", "stepsize", "experiment")
            for option in _options(group)]


def test_shipped_configs_have_only_known_keys():
    """No shipped option (nor an experiment) holds a key the check refuses."""
    from hydra import compose, initialize_config_dir

    from velode._cli import CONFIG_DIR
    from velode._run import check_group_keys

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for overrides in _shipped():
            check_group_keys(compose("config", overrides=overrides))


def test_data_keys_are_those_of_the_dataset():
    """A key of another dataset is refused too: data.path means nothing to the synthetic data."""
    from hydra import compose, initialize_config_dir

    from velode._cli import CONFIG_DIR
    from velode._errors import ConfigError
    from velode._run import check_group_keys

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        check_group_keys(compose("config", overrides=["data=h5ad", "+data.stage_order={a: 0}"]))
        with pytest.raises(ConfigError, match=r"unknown data option\(s\) \['path'\] for data=synthetic: known "
                                              r"options are \['cluster_key', 'genes', 'n_cells', 'n_genes', 'name', "
                                              r"'root_cluster', 'seed', 'stage_order', 'time_key'\]"):
            check_group_keys(compose("config", overrides=["data=synthetic", "+data.path=x.h5ad"]))


def test_unknown_model_option_lists_the_command_s_other_options():
    from velode.tl._fit import check_settings

    with pytest.raises(velode.VelodeError) as err:
        check_settings(model={"nonsense": 1}, other_model_options=("r2_min",))
    message = str(err.value)
    assert message.startswith("unknown model option(s) ['nonsense']: known options are ['assign_gap', 'assign_grid',")
    assert "'probe_steps', 'r2_min', 'rate_max'" in message
    with pytest.raises(velode.VelodeError) as err:
        check_settings(model={"nonsense": 1})
    assert "r2_min" not in str(err.value)
