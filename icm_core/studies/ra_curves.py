"""Rate-accuracy curves from run folders: one point per run and task, real bytes.

A run folder (what ``icm train`` writes) becomes a point by evaluating its newest checkpoint on
the validation split through real streams. Points are cached in ``<run>/ra-points.json``,
keyed by the task file's weight fingerprint and the evaluation settings, so the workbench's
rate-accuracy panel and ``icm eval`` share the work and a retrained run is re-evaluated. Each
point is a one-point ``Curve`` (``icm_core.evaluation.results``) carrying the run's settings
(``run_settings``, read from its config, never from the cache); ``group_runs`` joins the runs
of a lambda sweep into one curve.

A variable-rate run (``model.variable_rate``) is a whole curve by itself: it gives one point
per rate of a sweep (``rates``: a count of evenly spaced rates in [0, 1] or the rates; default
``DEFAULT_RATE_POINTS``), each point with its ``rate`` and the lambda that rate stands for.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from icm_core.data.registry import make_dataset
from icm_core.errors import ConfigError
from icm_core.evaluation.evaluate import DEFAULT_RATE_POINTS, evaluate
from icm_core.evaluation.results import Curve, group_runs, run_settings
from icm_core.files import write_text
from icm_core.models import rate as vr
from icm_core.training.checkpoint import load_checkpoint, load_config_file, resolve_checkpoint_dir

CACHE = "ra-points.json"
_MEASURED = ("task", "metric", "value", "higher_is_better", "bpp", "bpp_estimated", "images")


def _fingerprint(ckpt: Path, task: str) -> str:
    with safe_open(str(ckpt / f"task-{task}.safetensors"), "pt") as f:
        return (f.metadata() or {}).get("fingerprint", "")


def _rates(cfg, rates) -> list[float | None]:
    """The rates a run is evaluated at (``evaluate.sweep_rates``, from its config alone):
    ``[None]`` for a per-lambda run."""
    if not (cfg.model.variable_rate and cfg.model.compression):
        if rates is not None:
            raise ConfigError(f"rates={rates!r} given, but run {cfg.name!r} has one fixed rate "
                              "(model.variable_rate=false): drop the rates")
        return [None]
    rates = DEFAULT_RATE_POINTS if rates is None else rates
    if isinstance(rates, int) and not isinstance(rates, bool):
        return vr.sweep(rates)
    return [vr.snap_rate(r, cfg.model.rate_lambdas) for r in rates]


def _point(run: Path, cfg, m: dict, rate: float | None) -> Curve:
    point = ({"run": str(run), "lmbda": cfg.lmbda} if rate is None else
             {"run": str(run), "rate": rate, "lmbda": vr.lambda_at(rate, cfg.model.rate_lambdas)})
    return Curve(str(run), m["task"], m["metric"], bool(m["higher_is_better"]), [m["bpp"]],
                 [m["value"]], "learned", points=[point],
                 settings=run_settings(cfg), bpp_estimated=[m["bpp_estimated"]],
                 images=m["images"], bpp_payload=[m.get("bpp_payload")])


def run_points(run: str | Path, *, max_images: int | None = None, device: str = "cpu",
               cache: bool = True, data=None, rates=None) -> list[Curve]:
    """Every task's RA point of one run folder (its newest checkpoint), cached: one one-point
    curve per task (a variable-rate run: per task and rate of ``rates``), named by the run
    folder; on the validation split of ``data`` (a ``DataConfig``; default: the run's own)."""
    run = Path(run)
    ckpt = resolve_checkpoint_dir(run)
    cfg = load_config_file(ckpt)
    store = run / CACHE
    try:
        cached = json.loads(store.read_text()) if cache and store.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cached = {}  # a damaged cache is only a cache
    d = cfg.data if data is None else data
    where = "" if data is None or data == cfg.data else f":{d.name}:{d.root}:{d.layout}"
    keys = {}
    for t in cfg.tasks:
        for rate in _rates(cfg, rates):  # a fixed rate keeps the key it had before variable rate
            tail = "" if rate is None else f":rate={rate!r}"
            keys[(t, rate)] = (f"{t}:{_fingerprint(ckpt, t)}:{max_images}:{d.val_length}:"
                               f"{d.size}{where}{tail}")
    points, model, dataset, wrote = [], None, None, False
    for (task, rate), key in keys.items():
        entry = cached.get(key)
        if isinstance(entry, dict) and all(k in entry for k in _MEASURED):
            points.append(_point(run, cfg, entry, rate))
            continue
        if model is None:
            model, _ = load_checkpoint(ckpt, device)
            dataset = make_dataset(d, "val", model.tasks)
        r = evaluate(model, dataset, task, max_images=max_images, device=device, per_image=False,
                     rate=rate)
        cached[key] = {"task": r.task, "metric": r.metric, "value": r.value,
                       "higher_is_better": r.higher_is_better, "bpp": r.bpp,
                       "bpp_estimated": r.bpp_estimated, "images": r.images,
                       "bpp_payload": r.bpp_payload}
        points.append(_point(run, cfg, cached[key], rate))
        wrote = True
    if cache and wrote:
        write_text(store, json.dumps(cached, indent=1))
    return points


def ra_curves(runs, *, max_images: int | None = None, device: str = "cpu",
              cache: bool = True, rates=None) -> dict[str, list[Curve]]:
    """Run folders -> {task: curves}, one curve per configuration (its runs differ only in
    lambda), points by rate; folders without a checkpoint are refused. A variable-rate run
    contributes a point per rate of ``rates`` (default: ``DEFAULT_RATE_POINTS`` evenly spaced);
    per-lambda runs ignore ``rates``."""
    points: list[Curve] = []
    for run in runs:
        if not Path(run).is_dir():
            raise ConfigError(f"{str(run)!r} is not a run folder")
        variable = load_config_file(resolve_checkpoint_dir(run)).model.variable_rate
        points += run_points(run, max_images=max_images, device=device, cache=cache,
                             rates=rates if variable else None)
    curves: dict[str, list[Curve]] = {}
    for c in group_runs(points):
        curves.setdefault(c.task, []).append(c)
    return curves


__all__ = ["run_points", "ra_curves", "CACHE"]
