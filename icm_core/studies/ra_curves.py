"""Rate-accuracy curves from run folders: one point per run and task, real bytes.

A variable-rate run (``model.variable_rate``) is a whole curve by itself: it gives one point
per rate of a sweep (``rates``: a count of evenly spaced rates in [0, 1] or the rates; default
``DEFAULT_RATE_POINTS``), each point with its ``rate`` and the lambda that rate stands for.

A run folder (what ``icm train`` writes) becomes a point by evaluating its newest checkpoint on
the validation split through real streams. Points are cached in ``<run>/ra-points.json``,
keyed by the task file's weight fingerprint and the evaluation settings, so the workbench's
rate-accuracy panel and ``icm eval`` share the work and a retrained run is re-evaluated.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from safetensors import safe_open

from icm_core.errors import ConfigError
from icm_core.evaluation.evaluate import DEFAULT_RATE_POINTS
from icm_core.evaluation.results import RAPoint
from icm_core.files import write_text
from icm_core.models import rate as vr
from icm_core.training.checkpoint import load_config_file, resolve_checkpoint_dir

CACHE = "ra-points.json"


def _settings(cfg) -> dict:
    a, m = cfg.adapter, cfg.model
    return {"name": cfg.name, "adapter": a.mode, "rank": a.rank, "targets": list(a.targets),
            "decoder": m.decoder, "inter_sup": m.inter_sup, "compression": m.compression,
            "backbone": cfg.backbone.name, "weights": cfg.backbone.weights,
            "steps": cfg.train.max_steps, "size": list(cfg.data.size),
            # a variable-rate run is its own curve (per-lambda runs keep their old settings)
            **({"variable_rate": True, "rate_lambdas": list(m.rate_lambdas)}
               if m.variable_rate else {})}


def _fingerprint(ckpt: Path, task: str) -> str:
    with safe_open(str(ckpt / f"task-{task}.safetensors"), "pt") as f:
        return (f.metadata() or {}).get("fingerprint", "")


def _rates(cfg, rates) -> list[float | None]:
    """The rates a run is evaluated at (``evaluate.sweep_rates``, from its config alone)."""
    if not (cfg.model.variable_rate and cfg.model.compression):
        if rates is not None:
            raise ConfigError(f"rates={rates!r} given, but run {cfg.name!r} has one fixed rate "
                              "(model.variable_rate=false): drop the rates")
        return [None]
    rates = DEFAULT_RATE_POINTS if rates is None else rates
    if isinstance(rates, int) and not isinstance(rates, bool):
        return vr.sweep(rates)
    return [vr.snap_rate(r, cfg.model.rate_lambdas) for r in rates]


def run_points(run: str | Path, *, max_images: int | None = None, device: str = "cpu",
               cache: bool = True, rates=None) -> list[RAPoint]:
    """Every task's RA point of one run folder (its newest checkpoint), cached; a
    variable-rate run gives one point per task and rate (``rates``, see the module doc)."""
    from icm_core.data.registry import make_dataset
    from icm_core.evaluation.evaluate import evaluate
    from icm_core.training.checkpoint import load_checkpoint

    run = Path(run)
    ckpt = resolve_checkpoint_dir(run)
    cfg = load_config_file(ckpt)
    store = run / CACHE
    try:
        cached = json.loads(store.read_text()) if cache and store.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cached = {}  # a damaged cache is only a cache
    keys = {}
    for t in cfg.tasks:
        for rate in _rates(cfg, rates):  # fixed rate: the key it had before variable rate
            tail = "" if rate is None else f":rate={rate!r}"
            keys[(t, rate)] = (f"{t}:{_fingerprint(ckpt, t)}:{max_images}:{cfg.data.val_length}:"
                               f"{cfg.data.size}{tail}")
    points, model, dataset = [], None, None
    for (task, rate), key in keys.items():
        if key in cached:
            points.append(RAPoint(**cached[key]))
            continue
        if model is None:
            model, _ = load_checkpoint(ckpt, device)
            dataset = make_dataset(model.cfg.data, "val", model.tasks)
        r = evaluate(model, dataset, task, max_images=max_images, device=device, per_image=False,
                     rate=rate)
        lmbda = cfg.lmbda if rate is None else vr.lambda_at(rate, cfg.model.rate_lambdas)
        p = RAPoint(str(run), r.task, r.metric, r.value, r.higher_is_better, r.bpp,
                    r.bpp_estimated, r.images, lmbda, _settings(cfg), rate)
        cached[key] = asdict(p)
        points.append(p)
    if cache and model is not None:
        write_text(store, json.dumps(cached, indent=1))
    return points


def ra_curves(runs, *, max_images: int | None = None, device: str = "cpu",
              cache: bool = True, rates=None) -> dict[str, list[RAPoint]]:
    """Run folders -> {task: points sorted by rate}; folders without a checkpoint are refused.
    A variable-rate run contributes a point per rate of ``rates`` (default: 7 evenly spaced)."""
    curves: dict[str, list[RAPoint]] = {}
    for run in runs:
        if not Path(run).is_dir():
            raise ConfigError(f"{str(run)!r} is not a run folder")
        variable = load_config_file(resolve_checkpoint_dir(run)).model.variable_rate
        for p in run_points(run, max_images=max_images, device=device, cache=cache,
                            rates=rates if variable else None):
            curves.setdefault(p.task, []).append(p)
    for pts in curves.values():
        pts.sort(key=lambda p: (p.bpp if p.bpp is not None else float("inf"), p.lmbda))
    return curves


__all__ = ["RAPoint", "run_points", "ra_curves"]
