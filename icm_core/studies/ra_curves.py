"""Rate-accuracy curves from run folders: one point per run and task, real bytes.

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
from icm_core.evaluation.results import RAPoint
from icm_core.files import write_text
from icm_core.training.checkpoint import resolve_checkpoint_dir

CACHE = "ra-points.json"


def _settings(cfg) -> dict:
    a, m = cfg.adapter, cfg.model
    return {"name": cfg.name, "adapter": a.mode, "rank": a.rank, "targets": list(a.targets),
            "decoder": m.decoder, "inter_sup": m.inter_sup, "compression": m.compression,
            "backbone": cfg.backbone.name, "weights": cfg.backbone.weights,
            "steps": cfg.train.max_steps, "size": list(cfg.data.size)}


def _fingerprint(ckpt: Path, task: str) -> str:
    with safe_open(str(ckpt / f"task-{task}.safetensors"), "pt") as f:
        return (f.metadata() or {}).get("fingerprint", "")


def run_points(run: str | Path, *, max_images: int | None = None, device: str = "cpu",
               cache: bool = True, data=None) -> list[RAPoint]:
    """Every task's RA point of one run folder (its newest checkpoint), cached; on the
    validation split of ``data`` (a ``DataConfig``; default: the run's own)."""
    from icm_core.data.registry import make_dataset
    from icm_core.evaluation.evaluate import evaluate
    from icm_core.training.checkpoint import load_checkpoint, load_config_file

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
    keys = {t: f"{t}:{_fingerprint(ckpt, t)}:{max_images}:{d.val_length}:{d.size}{where}"
            for t in cfg.tasks}
    points, model, dataset = [], None, None
    for task, key in keys.items():
        if key in cached:
            points.append(RAPoint(**cached[key]))
            continue
        if model is None:
            model, _ = load_checkpoint(ckpt, device)
            dataset = make_dataset(d, "val", model.tasks)
        r = evaluate(model, dataset, task, max_images=max_images, device=device, per_image=False)
        p = RAPoint(str(run), r.task, r.metric, r.value, r.higher_is_better, r.bpp,
                    r.bpp_estimated, r.images, cfg.lmbda, _settings(cfg))
        cached[key] = asdict(p)
        points.append(p)
    if cache and model is not None:
        write_text(store, json.dumps(cached, indent=1))
    return points


def ra_curves(runs, *, max_images: int | None = None, device: str = "cpu",
              cache: bool = True) -> dict[str, list[RAPoint]]:
    """Run folders -> {task: points sorted by rate}; folders without a checkpoint are refused."""
    curves: dict[str, list[RAPoint]] = {}
    for run in runs:
        if not Path(run).is_dir():
            raise ConfigError(f"{str(run)!r} is not a run folder")
        for p in run_points(run, max_images=max_images, device=device, cache=cache):
            curves.setdefault(p.task, []).append(p)
    for pts in curves.values():
        pts.sort(key=lambda p: (p.bpp if p.bpp is not None else float("inf"), p.lmbda))
    return curves


__all__ = ["RAPoint", "run_points", "ra_curves"]
