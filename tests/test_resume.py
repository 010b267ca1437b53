"""Checkpoints and resuming: a killed run goes on to the same result, and a run folder is never overwritten unasked."""

import json
import os
import signal
import subprocess
import sys
import time

import anndata as ad
import jax
import numpy as np
import pytest

import velode
from velode import _checkpoint
from velode._errors import ConfigError, RunFolderError
from velode._run import check_run_folder

# experiment=quick: 200 steps (20 per probe, one assignment round, the last 30 cell-specific).
QUICK = ["experiment=quick", "plots=false", "seed=1"]


def _velode(out, *overrides):
    return [sys.executable, "-m", "velode._cli", f"hydra.run.dir={out}", *QUICK, *overrides]


def _same_fit(a, b):
    for key in ["velocity", "velocity_u", "fit_s", "fit_u", "projected_spliced"]:
        np.testing.assert_array_equal(a.layers[key], b.layers[key], err_msg=key)
    np.testing.assert_array_equal(a.obs["latent_time"], b.obs["latent_time"])
    for key in ["fit_alpha", "fit_beta", "fit_gamma", "fit_scaling", "fit_alpha0", "fit_t_", "fit_r2"]:
        np.testing.assert_array_equal(a.var[key], b.var[key], err_msg=key)
    np.testing.assert_array_equal(a.obsm["velode_cell_z"], b.obsm["velode_cell_z"])


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    """kill -9 mid-training, then `trainer.resume=true` in the same folder: bit for bit the uninterrupted run."""
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = subprocess.Popen(_velode(killed, "trainer.checkpoint_every=5"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    sidecar = killed / _checkpoint.SIDECAR
    where = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if sidecar.exists():
                where = json.loads(sidecar.read_text())
                if where["phase"] != "probe":  # the direction of time is settled: kill it in the training proper
                    break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert where is not None and where["phase"] in ("round", "main") and where["step"] < 200, where
    assert not (killed / "velocity.h5ad").exists() and not (killed / "metrics.json").exists()

    # Without trainer.resume=true the folder of the killed run is refused, and left as it was.
    again = subprocess.run(_velode(killed), capture_output=True, text=True, timeout=300)
    assert again.returncode != 0
    lines = [ln for ln in again.stderr.splitlines() if ln.startswith("velode: error:")]
    assert len(lines) == 1 and "trainer.resume=true" in lines[0] and "unfinished" in lines[0], again.stderr
    assert (killed / _checkpoint.NAME).exists() and not (killed / "metrics.json").exists()

    resumed = subprocess.run(_velode(killed, "trainer.resume=true"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The uninterrupted run writes no checkpoints: checkpoint writes do not change a result either.
    ref = subprocess.run(_velode(whole, "trainer.checkpoint_every=0"), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    m_resumed = json.loads((killed / "metrics.json").read_text())
    m_whole = json.loads((whole / "metrics.json").read_text())
    assert m_resumed["resumed_from"] >= where["step"] and m_whole["resumed_from"] is None
    for key in ["steps", "final_loss", "orientation", "probe_losses", "n_velocity_genes", "final_terms"]:
        assert m_resumed[key] == m_whole[key], key
    assert json.loads((killed / "history.json").read_text()) == json.loads((whole / "history.json").read_text())
    _same_fit(ad.read_h5ad(killed / "velocity.h5ad"), ad.read_h5ad(whole / "velocity.h5ad"))
    # A finished run keeps no checkpoint, and no temporary file of a killed write survives.
    assert not (killed / _checkpoint.NAME).exists() and not (killed / _checkpoint.SIDECAR).exists()
    assert not [p.name for p in killed.iterdir() if p.name.endswith(".tmp")]

    # A finished run is not overwritten unless asked; resuming it again has nothing to do.
    stamp = (whole / "metrics.json").stat().st_mtime_ns, (whole / "velocity.h5ad").stat().st_mtime_ns
    refused = subprocess.run(_velode(whole), capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    lines = [ln for ln in refused.stderr.splitlines() if ln.startswith("velode: error:")]
    assert len(lines) == 1 and "overwrite=true" in lines[0] and "hydra.run.dir" in lines[0], refused.stderr
    done = subprocess.run(_velode(whole, "trainer.resume=true"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ((whole / "metrics.json").stat().st_mtime_ns, (whole / "velocity.h5ad").stat().st_mtime_ns) == stamp
    assert json.loads((whole / "metrics.json").read_text())["status"] == "ok"


# The Python API, interrupted in every phase of the fit (an exception right after a checkpoint is written).
FIT = dict(trainer={"progress": False, "max_steps": 120, "batch_size": 64, "checkpoint_every": 7},
           model={"probe_steps": 10, "pretrain_steps": 30, "assign_rounds": 2})


def _small():
    return velode.pp.preprocess(velode.datasets.simulation(n_cells=120, n_genes=12, seed=2), method="none")


class _Killed(Exception):
    pass


def _interrupted_fit(monkeypatch, directory, stop_at, kwargs):
    save = _checkpoint.Checkpointer.save

    def save_then_die(self, state, where):
        save(self, state, where)
        if state.step >= stop_at:
            raise _Killed(where["phase"])

    with monkeypatch.context() as m:
        m.setattr(_checkpoint.Checkpointer, "save", save_then_die)
        with pytest.raises(_Killed) as err:
            velode.tl.fit(_small(), checkpoint_dir=directory, **kwargs)
    return str(err.value)


@pytest.mark.slow
def test_resumed_again_and_again_in_every_phase_is_exact(tmp_path, monkeypatch):
    ref = _small()
    r_ref = velode.tl.fit(ref, **FIT)
    # Steps: probes to 10, two rounds of 30, main to 102, cell-specific to 120; checkpoints every 7.
    # Each fit is killed after the first checkpoint at or past its step, and the next one resumes it.
    resume = {**FIT, "trainer": {**FIT["trainer"], "resume": True}}
    phases = [_interrupted_fit(monkeypatch, tmp_path, 5, FIT)]
    for stop_at in (30, 80, 110):
        phases.append(_interrupted_fit(monkeypatch, tmp_path, stop_at, resume))
    assert phases == ["probe", "round", "main", "cell"]
    a = _small()
    r = velode.tl.fit(a, checkpoint_dir=tmp_path, **resume)
    assert r.resumed_from == 112 and r.state.step == r_ref.state.step
    assert r.state.history == r_ref.state.history
    for x, y in zip(jax.tree_util.tree_leaves(r.model), jax.tree_util.tree_leaves(r_ref.model)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    _same_fit(a, ref)


@pytest.fixture(scope="module")
def short_fit(tmp_path_factory):
    """A 30-step fit asked to resume from an empty folder: it starts afresh (with a warning) and writes checkpoints."""
    directory = tmp_path_factory.mktemp("short")
    trainer = {**FIT["trainer"], "max_steps": 30, "resume": True}
    with pytest.warns(UserWarning, match="no checkpoint") as record:
        r = velode.tl.fit(_small(), checkpoint_dir=directory, trainer=trainer, model=FIT["model"])
    return directory, r, trainer, record


def test_resume_without_a_checkpoint_starts_afresh(short_fit):
    directory, r, _, record = short_fit
    assert "starts from the beginning" in str(record[0].message)
    assert r.resumed_from is None and r.state.step == 30
    assert json.loads((directory / _checkpoint.SIDECAR).read_text())["step"] == 28


def test_checkpoint_of_other_settings_is_refused(short_fit):
    directory, _, trainer, _ = short_fit
    with pytest.raises(ConfigError, match="other settings or data"):
        velode.tl.fit(_small(), checkpoint_dir=directory, trainer=trainer, model=FIT["model"], seed=1)


def test_checkpoint_write_is_atomic(short_fit, monkeypatch):
    """A write that dies half-way leaves the previous checkpoint whole and no temporary file."""
    tmp_path, r, _, _ = short_fit
    before = (tmp_path / _checkpoint.NAME).read_bytes()
    ckpt = _checkpoint.Checkpointer(tmp_path, 7, "any")

    def dies(f, tree):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(_checkpoint.eqx, "tree_serialise_leaves", dies)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(r.state, {"phase": "main", "round": 0})
    assert (tmp_path / _checkpoint.NAME).read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_run_folder_check(tmp_path):
    assert check_run_folder(tmp_path, resume=False, overwrite=False) is None  # empty: fine
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "failed"}))
    assert check_run_folder(tmp_path, resume=False, overwrite=False) is None  # a failed run may be run again
    (tmp_path / _checkpoint.NAME).write_bytes(b"")
    (tmp_path / _checkpoint.SIDECAR).write_text(json.dumps({"phase": "main", "step": 40}))
    with pytest.raises(RunFolderError, match="checkpoint at step 40.*trainer.resume=true"):
        check_run_folder(tmp_path, resume=False, overwrite=False)
    assert check_run_folder(tmp_path, resume=True, overwrite=False) is None  # goes on from the checkpoint
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "ok", "final_loss": 0.5}))
    (tmp_path / "velocity.h5ad").write_bytes(b"")
    with pytest.raises(RunFolderError, match="finished run.*overwrite=true.*hydra.sweep.dir"):
        check_run_folder(tmp_path, resume=False, overwrite=False, dir_key="hydra.sweep.dir")
    assert check_run_folder(tmp_path, resume=True, overwrite=False)["final_loss"] == 0.5  # nothing to resume
    assert check_run_folder(tmp_path, resume=False, overwrite=True) is None
    left = {p.name for p in tmp_path.iterdir()}
    assert not {"metrics.json", "velocity.h5ad", _checkpoint.NAME, _checkpoint.SIDECAR} & left
