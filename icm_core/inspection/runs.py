"""Run folders for the inspector: a run's model (loaded once per checkpoint), its lambda sweep."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from icm_core.errors import ConfigError
from icm_core.evaluation.results import run_settings, sweep_key
from icm_core.training.checkpoint import (
    has_checkpoint,
    load_checkpoint,
    load_config_file,
    resolve_checkpoint_dir,
)

RUN_CACHE_SIZE = 4
"""Models ``load_run`` keeps (least recently used first out): a lambda sweep of 3-4 runs stays
loaded, a long session of clicking through runs does not grow without bound."""
_RUNS: OrderedDict[tuple, object] = OrderedDict()  # (checkpoint, stamp, device) -> model
_RUNS_LOCK = threading.Lock()


def load_run(run_dir: str | Path, device: str = "cpu"):
    """The newest checkpoint of a run folder as a model, loaded once per checkpoint.

    The ``RUN_CACHE_SIZE`` most recently used models are kept (a checkpoint folder rewritten
    since replaces its older model at once). Safe from any thread: one load at a time.
    """
    ckpt = resolve_checkpoint_dir(run_dir)
    stamp = max(p.stat().st_mtime_ns for p in ckpt.iterdir())
    where = str(ckpt.resolve())
    key = (where, stamp, device)
    with _RUNS_LOCK:
        if key in _RUNS:
            _RUNS.move_to_end(key)
            return _RUNS[key]
        model = load_checkpoint(ckpt, device)[0]
        for old in [k for k in _RUNS if k[0] == where and k[2] == device]:
            del _RUNS[old]  # this folder before it was rewritten: never asked for again
        _RUNS[key] = model
        while len(_RUNS) > RUN_CACHE_SIZE:
            _RUNS.popitem(last=False)
        return model


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


__all__ = ["RUN_CACHE_SIZE", "load_run", "sweep_runs"]
