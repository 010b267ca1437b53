"""Checkpoints of a fit: the training state and the phase of the fit it belongs to, written atomically.

``checkpoint.eqx`` holds a JSON header (phase, step, plateau counters, history) followed by the
model, the optimiser state, the RNG key and the minibatch permutation, serialised with Equinox.
Header and arrays share one file, so one rename commits both: a run killed at any moment leaves
either the previous checkpoint or the new one. ``checkpoint.json`` repeats the header's summary
for people and scripts; resuming reads ``checkpoint.eqx`` alone.
"""

import hashlib
import json
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from ._errors import ConfigError
from ._outputs import atomic_write

NAME = "checkpoint.eqx"
SIDECAR = "checkpoint.json"
FORMAT = 1
# The phases of velode._fit.fit_arrays in order; a checkpoint sits at (phase, round).
PHASES = ("probe", "round", "main", "cell")
# TrainState fields kept in the header (plain Python values; json round-trips floats exactly).
_SCALARS = ("step", "history", "solver_stats", "status", "message", "stopped_early", "train_seconds",
            "smoothed_loss", "best_loss", "since_best", "batch_pos")


def fingerprint(*parts) -> str:
    """A short hash of what a fit depends on (settings, data), so a checkpoint is never resumed by another fit."""
    h = hashlib.sha256()
    for p in parts:
        if sp.issparse(p):
            h.update(f"sparse{p.shape}".encode())
            for a in (p.data, p.indices, p.indptr):
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
        elif isinstance(p, np.ndarray):
            h.update(f"{p.dtype}{p.shape}".encode())
            h.update(memoryview(np.ascontiguousarray(p)).cast("B"))  # the bytes, not a copy of them
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:16]


def position(header: dict | None) -> tuple:
    """Where a checkpoint sits in the fit, comparable with ``(PHASES.index(phase), round)``."""
    if header is None:
        return (-1, 0)
    return (PHASES.index(header["phase"]), int(header.get("round", 0)))


def _read_header(f) -> dict:
    return json.loads(np.load(f).tobytes().decode())


class Checkpointer:
    """Writes the checkpoint of one fit into ``directory`` and reads it back.

    ``every``: training steps between checkpoints (0: none). ``key``: the fit's fingerprint.
    """

    def __init__(self, directory, every: int, key: str):
        self.directory = Path(directory)
        self.every = int(every)
        self.key = key

    @property
    def path(self) -> Path:
        return self.directory / NAME

    def header(self) -> dict | None:
        """The header of the checkpoint in the directory (None if none); removes temp files of a killed write."""
        for stale in self.directory.glob(f".{NAME}.*.tmp"):
            stale.unlink(missing_ok=True)
        for stale in self.directory.glob(f".{SIDECAR}.*.tmp"):
            stale.unlink(missing_ok=True)
        if not self.path.exists():
            return None
        try:
            with open(self.path, "rb") as f:
                header = _read_header(f)
        except (OSError, ValueError, EOFError):
            raise ConfigError(f"the checkpoint {self.path} cannot be read: start again with overwrite=true "
                              "on the command line, or remove the file") from None
        if header.get("format") != FORMAT or header.get("fingerprint") != self.key:
            raise ConfigError(
                f"the checkpoint {self.path} was written by a fit with other settings or data: resume with the "
                "same settings, or start again (overwrite=true on the command line, or remove the file)"
            )
        return header

    def save(self, state, where: dict) -> None:
        """Write ``state`` (a TrainState) at ``where`` (phase, round and what the fit needs to go on)."""
        header = {"format": FORMAT, "fingerprint": self.key, **where,
                  **{k: getattr(state, k) for k in _SCALARS},
                  "perm": None if (p := state.batch_perm) is None else [int(p.size), str(p.dtype)]}
        text = json.dumps(header)
        arrays = {"model": state.model, "opt_state": state.opt_state, "key": state.key, "perm": state.batch_perm}

        def write(tmp):
            with open(tmp, "wb") as f:
                np.save(f, np.frombuffer(text.encode(), np.uint8))
                eqx.tree_serialise_leaves(f, arrays)

        atomic_write(self.path, write)
        summary = {k: header.get(k) for k in ("phase", "round", "step", "orientation")}
        atomic_write(self.directory / SIDECAR, lambda tmp: Path(tmp).write_text(json.dumps(summary) + "\n"))

    def restore(self, state, header: dict):
        """``state`` (a TrainState of the right structure, e.g. from Trainer.init) filled from the checkpoint."""
        like = {"model": state.model, "opt_state": state.opt_state, "key": state.key,
                "perm": None if header["perm"] is None else jnp.zeros(header["perm"][0], header["perm"][1])}
        with open(self.path, "rb") as f:
            _read_header(f)
            arrays = eqx.tree_deserialise_leaves(f, like)
        state.model, state.opt_state, state.key = arrays["model"], arrays["opt_state"], arrays["key"]
        state.batch_perm = arrays["perm"]
        for k in _SCALARS:
            setattr(state, k, header[k])
        return state


def remove(directory) -> None:
    """Remove the checkpoint in ``directory`` (a finished run's outputs supersede it)."""
    for name in (NAME, SIDECAR):
        (Path(directory) / name).unlink(missing_ok=True)
