"""Hydra callbacks of the ``velode`` command."""

import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger("velode")


class SweepSummary(Callback):
    """At the end of a multirun, one line: how many jobs finished ok, which failed, how to aggregate."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        status = {}
        for path in sweep_dir.rglob("metrics.json"):
            try:
                status[str(path.parent.relative_to(sweep_dir))] = json.loads(path.read_text()).get("status", "unknown")
            except (OSError, json.JSONDecodeError):
                status[str(path.parent.relative_to(sweep_dir))] = "unreadable"
        bad = sorted(job for job, s in status.items() if s != "ok")
        log.info(
            "sweep finished: %d jobs, %d ok%s; table and plots: python scripts/aggregate.py %s",
            len(status), len(status) - len(bad), f", not ok: {', '.join(bad)}" if bad else "", sweep_dir,
        )
