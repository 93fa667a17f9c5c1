"""``icm eval``: one run's newest checkpoint scored at real bitstream rates, written as
CompressAI-style ``results-<task>.json`` and ``.csv``, each described by the run's settings and
the backbone's ``weights_source``. The points are the cached ones the workbench's
rate-accuracy panel reads (``run_points``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from icm_core.config.schema import ExperimentConfig
from icm_core.data.registry import get_dataset
from icm_core.errors import ConfigError, DatasetError
from icm_core.evaluation.results import Curve, group_runs, write_results
from icm_core.models.backbone import weights_source
from icm_core.studies.ra_curves import run_points
from icm_core.training.checkpoint import load_config_file, resolve_checkpoint_dir
from icm_core.training.trainer import default_device


def _variable(cfg: ExperimentConfig) -> bool:
    return cfg.model.variable_rate and cfg.model.compression


def run_description(cfg: ExperimentConfig, images: int, points: int = 1) -> str:
    """What a results file says about the run that made it (backbone and its weights_source,
    adapter, lambda or the variable rate's anchors, data)."""
    lams = cfg.model.rate_lambdas
    what = (f"variable rate (anchors' lambdas {', '.join(f'{v:g}' for v in lams)}), "
            f"{points} rates" if _variable(cfg) else f"lambda {cfg.lmbda:g}")
    return (f"{cfg.name}: {cfg.backbone.name} (weights_source={weights_source(cfg.backbone)}), "
            f"adapter {cfg.adapter.mode} r{cfg.adapter.rank}, {what}, {images} "
            f"{cfg.data.name} val images, real bitstreams")


@dataclass(frozen=True)
class RunResult:
    curve: Curve  # the run's newest checkpoint: one point, or a variable-rate run's sweep
    json_path: Path
    csv_path: Path


def evaluate_run(run: str | Path, out: str | Path | None = None, *, max_images: int | None = None,
                 device: str | None = None, data=None, rates=None) -> list[RunResult]:
    """Every task of ``run`` (a run folder or one of its ``ckpt-*``) -> ``out`` (default: the run
    folder) ``results-<task>.json``/``.csv``; -> one ``RunResult`` a task. ``data``: another
    labelled ``DataConfig`` with the run's classes (e.g. the dataset moved); default the run's.
    ``rates``: a variable-rate run's sweep (a count of evenly spaced rates in [0, 1], or the
    rates); refused for a per-lambda run, which is one point."""
    ckpt = resolve_checkpoint_dir(run)
    cfg = load_config_file(ckpt)
    if data is not None and not get_dataset(data.name).labelled:
        raise DatasetError(f"icm eval scores against labels and data={data.name!r} has none; "
                           "score fidelity to the uncompressed model with icm compare RUN "
                           f"--baseline RUN data={data.name} data.root=...")
    if data is not None and data.label_space != cfg.data.label_space:
        raise ConfigError(f"{run} was trained on {cfg.data.label_space} labels and "
                          f"data={data.name} has {data.label_space} labels: its classes differ; "
                          f"evaluate on a {cfg.data.label_space} dataset")
    if rates is not None and not _variable(cfg):
        raise ConfigError(f"--rates {rates}: run {str(run)!r} has one fixed rate "
                          "(model.variable_rate=false), it is one point; drop --rates")
    out = Path(out) if out is not None else ckpt.parent
    written = []
    points = run_points(run, max_images=max_images, device=device or default_device(), data=data,
                        rates=rates)
    for p in group_runs(points):  # one curve per task: a point, or the rates of one model
        lams = cfg.model.rate_lambdas
        name = (f"{cfg.name}-{p.task}-vr{lams[0]:g}-{lams[-1]:g}" if _variable(cfg)
                else f"{cfg.name}-{p.task}-lmbda{cfg.lmbda:g}")
        curve = replace(p, name=name,
                        description=run_description(cfg if data is None else
                                                    replace(cfg, data=data), p.images,
                                                    len(p.bpp)))
        j, c = out / f"results-{p.task}.json", out / f"results-{p.task}.csv"
        write_results(j, c, curve)
        written.append(RunResult(curve, j, c))
    return written


__all__ = ["RunResult", "evaluate_run", "run_description"]
