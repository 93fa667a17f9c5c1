"""Run folders for the inspector: a run's model (loaded once per checkpoint), its lambda sweep."""

from __future__ import annotations

import threading
from pathlib import Path

from icm_core.errors import ConfigError
from icm_core.evaluation.results import run_settings, sweep_key
from icm_core.training.checkpoint import (
    has_checkpoint,
    load_checkpoint,
    load_config_file,
    resolve_checkpoint_dir,
)

_RUNS: dict[tuple, object] = {}
_RUNS_LOCK = threading.Lock()


def load_run(run_dir: str | Path, device: str = "cpu"):
    """The newest checkpoint of a run folder as a model, loaded once per checkpoint."""
    ckpt = resolve_checkpoint_dir(run_dir)
    stamp = max(p.stat().st_mtime_ns for p in ckpt.iterdir())
    key = (str(ckpt.resolve()), stamp, device)
    with _RUNS_LOCK:
        if key not in _RUNS:
            _RUNS[key] = load_checkpoint(ckpt, device)[0]
        return _RUNS[key]


def sweep_runs(run_dir: str | Path) -> list[tuple[float, Path]]:
    """(lambda, folder) of ``run_dir`` and its siblings that differ from it only in lambda
    (a Hydra ``-m lmbda=...`` sweep), by lambda."""
    run = Path(run_dir)
    key = sweep_key(run_settings(load_config_file(resolve_checkpoint_dir(run))))
    found = []
    for d in sorted(p for p in run.resolve().parent.iterdir() if p.is_dir()):
        if not has_checkpoint(d):
            continue
        try:
            cfg = load_config_file(resolve_checkpoint_dir(d))
        except ConfigError:
            continue  # an unrelated or broken folder beside the sweep
        if sweep_key(run_settings(cfg)) == key:
            found.append((cfg.lmbda, d))
    return sorted(found, key=lambda t: t[0])


__all__ = ["load_run", "sweep_runs"]
