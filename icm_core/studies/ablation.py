"""Adapter ablations (the paper's Fig. 5): a grid of runs, its cost before running, its charts.

``expand_grid`` turns adapter modes x ranks x target sets x lambdas into one override list per
training (rank and targets only where they mean something: dora and lora). With variable rate
(``model.variable_rate=true``) one training covers every rate, so a configuration trains once,
its lambdas the anchors (``model.rate_lambdas``), not once per lambda. ``measure_step_time``
times real optimizer steps of one configuration on this machine and caches the measurement,
so ``estimate_cost`` multiplies trainings x steps x a measured time, never a guess. ``fig5_rows``
turns finished runs into rows (metric against the share of trainable backbone parameters, from
``icm_core.evaluation.accounting``; real-bytes rate); ``save_ablation`` writes them as a plotly
chart (``icm_core.viz.figures.fig5_figure``), HTML and CSV.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import OmegaConf

from icm_core.config import load_config
from icm_core.config.schema import TARGET_NAMES, ExperimentConfig
from icm_core.errors import ConfigError
from icm_core.evaluation.accounting import parameter_counts
from icm_core.evaluation.results import config_label
from icm_core.files import write_text
from icm_core.models.adapters import ADAPTER_KINDS, get_adapter_kind
from icm_core.models.icm import build_model
from icm_core.studies.ra_curves import run_points
from icm_core.training.checkpoint import load_config_file, resolve_checkpoint_dir
from icm_core.training.trainer import Trainer, default_device
from icm_core.viz.figures import fig5_figure

GRID_KEYS = ("adapter.mode", "adapter.rank", "adapter.targets", "lmbda", "out_dir", "resume")
STEP_TIMES = ".step-times.json"  # cache of measured step times, in the workspace


@dataclass(frozen=True)
class GridPoint:
    """One training of a grid: its settings, the overrides that make it, and its length."""

    name: str
    mode: str
    rank: int | None
    targets: tuple[str, ...] | None
    lmbda: float | None  # None: variable rate, one training for every rate
    overrides: tuple[str, ...]  # base overrides (minus what the grid sets) + the grid's
    steps: int
    lambdas: tuple[float, ...] = ()  # what the training covers: (lmbda,), or the rate anchors

    @property
    def variable_rate(self) -> bool:
        return self.lmbda is None


def _fmt(x: float) -> str:
    return f"{x:g}"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _anchors(cfg: ExperimentConfig, lambdas: list) -> tuple[float, ...]:
    """A variable-rate grid's rate anchors: its lambdas (2 or more, ascending), or with none
    given the base's own ``model.rate_lambdas``."""
    if not lambdas:
        return tuple(cfg.model.rate_lambdas)
    anchors = tuple(sorted({float(x) for x in lambdas}))
    if len(anchors) < 2:
        raise ConfigError(f"lambdas {lambdas}: with variable rate (model.variable_rate=true) one "
                          "training covers every rate, and the lambdas are its anchors "
                          "(model.rate_lambdas): give 2 or more, or none to keep the base's "
                          f"{list(cfg.model.rate_lambdas)}")
    return anchors


def expand_grid(modes, ranks, target_sets, lambdas, base=()) -> list[GridPoint]:
    """Every meaningful combination, in order: modes, then ranks, target sets, lambdas.

    full, fixed and scratch take no rank or targets, so they give one training per lambda.
    With variable rate (the base sets ``model.variable_rate=true``) a configuration trains once
    for every rate: the lambdas become its anchors (``model.rate_lambdas``; none given: the
    base's) and the grid has one training per configuration.
    The base is composed once (``ConfigError`` for a bad override names it) and each point's
    settings are validated on it, as the config dataclasses do.
    """
    modes, ranks, lambdas = list(modes), list(ranks), list(lambdas)
    target_sets = [tuple(t) for t in target_sets]
    if not modes:
        raise ConfigError("an ablation grid needs at least one adapter mode")
    bad = [m for m in modes if m not in ADAPTER_KINDS]
    if bad:
        raise ConfigError(f"adapter modes {bad}: choose from {list(ADAPTER_KINDS)}")
    low_rank = {m: get_adapter_kind(m).low_rank for m in modes}
    if any(low_rank.values()):
        if not ranks or not target_sets:
            raise ConfigError("dora/lora in the grid need at least one rank and one target set")
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks):
            raise ConfigError(f"ranks {ranks}: give integers >= 1")
        for ts in target_sets:
            if not ts or any(t not in TARGET_NAMES for t in ts):
                raise ConfigError(f"target set {list(ts)}: choose a non-empty subset of "
                                  f"{list(TARGET_NAMES)}")
    if any(not isinstance(x, (int, float)) or isinstance(x, bool) or not x > 0 for x in lambdas):
        raise ConfigError(f"lambdas {lambdas}: give numbers > 0")
    kept = [o for o in base if _key(o) not in GRID_KEYS]
    cfg = load_config(kept)  # composed once; each point only changes adapter fields and lmbda
    variable = cfg.model.variable_rate and cfg.model.compression
    if not variable and not lambdas:
        raise ConfigError("an ablation grid needs at least one lambda")
    if variable:
        anchors = _anchors(cfg, lambdas)
        if lambdas:  # the grid sets the anchors: the base's are dropped
            kept = [o for o in kept if _key(o) != "model.rate_lambdas"]
    combos: list[tuple] = []
    for mode in dict.fromkeys(modes):
        if low_rank[mode]:
            combos += [(mode, r, ts) for r in dict.fromkeys(ranks) for ts in dict.fromkeys(target_sets)]
        else:
            combos.append((mode, None, None))
    if variable:
        return [_variable_point(cfg, kept, mode, rank, targets, anchors, bool(lambdas),
                                low_rank[mode]) for mode, rank, targets in combos]
    points = []
    for (mode, rank, targets), lmbda in itertools.product(combos, dict.fromkeys(lambdas)):
        grid = [f"adapter.mode={mode}", f"lmbda={_fmt(lmbda)}"]
        if low_rank[mode]:
            grid += [f"adapter.rank={rank}", f"adapter.targets=[{','.join(targets)}]"]
        adapter = replace(cfg.adapter, mode=mode, **({"rank": rank, "targets": list(targets)}
                                                     if low_rank[mode] else {}))
        replace(cfg, adapter=adapter, lmbda=float(lmbda))  # validates the combination
        name = f"{config_label(mode, rank, targets).replace(' ', '-')}-lmbda{_fmt(lmbda)}"
        points.append(GridPoint(name, mode, rank, targets, float(lmbda), (*kept, *grid),
                                cfg.train.max_steps, (float(lmbda),)))
    return points


def _variable_point(cfg: ExperimentConfig, kept: list, mode: str, rank, targets,
                    anchors: tuple[float, ...], set_anchors: bool, low_rank: bool) -> GridPoint:
    """The one training of a variable-rate configuration, at every rate of ``anchors``."""
    grid = [f"adapter.mode={mode}"]
    if low_rank:
        grid += [f"adapter.rank={rank}", f"adapter.targets=[{','.join(targets)}]"]
    if set_anchors:
        grid.append(f"model.rate_lambdas=[{','.join(_fmt(x) for x in anchors)}]")
    adapter = replace(cfg.adapter, mode=mode, **({"rank": rank, "targets": list(targets)}
                                                 if low_rank else {}))
    replace(cfg, adapter=adapter, model=replace(cfg.model, rate_lambdas=list(anchors)))  # validates
    name = (f"{config_label(mode, rank, targets).replace(' ', '-')}-vr"
            f"{'-'.join(_fmt(x) for x in anchors)}")
    return GridPoint(name, mode, rank, targets, None, (*kept, *grid), cfg.train.max_steps, anchors)


def parse_numbers(text: str, kind: type = float, what: str = "values") -> list:
    """'0.5, 2 4' -> [0.5, 2.0, 4.0] (commas or spaces); ConfigError names the bad entry."""
    out = []
    for item in text.replace(",", " ").split():
        try:
            out.append(kind(item))
        except ValueError:
            raise ConfigError(f"{what}: {item!r} is not a{'n integer' if kind is int else ' number'}; "
                              "separate values with commas, e.g. 4, 8") from None
    return out


def parse_target_sets(text: str) -> list[tuple[str, ...]]:
    """'q,v; q,k,v,up,down' -> [('q','v'), ('q','k','v','up','down')]: sets split by ';'."""
    sets = []
    for part in text.split(";"):
        names = tuple(part.replace(",", " ").split())
        if not names:
            continue
        bad = [n for n in names if n not in TARGET_NAMES]
        if bad:
            raise ConfigError(f"target set {part.strip()!r}: {bad} are not projections; choose from "
                              f"{list(TARGET_NAMES)}, sets separated by ';' (e.g. q,v; q,k,v)")
        sets.append(names)
    return sets


# -- cost -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepTime:
    """A measured training step time (seconds) and how it was measured."""

    seconds: float
    steps: int  # timed steps (after one untimed warm-up step)
    label: str
    device: str
    threads: int
    measured_at: str  # ISO time, UTC
    cached: bool = False

    def describe(self) -> str:
        src = "cached measurement" if self.cached else "measured"
        return (f"{src}: {self.seconds:.3f} s/step, mean of {self.steps} real steps of "
                f"{self.label} on {self.device} ({self.threads} threads), {self.measured_at}")


def _time_key(cfg: ExperimentConfig, device: str, threads: int) -> str:
    """What the step time depends on: the config less what does not change a step's work."""

    tree = OmegaConf.to_container(OmegaConf.structured(cfg))
    for k in ("name", "out_dir", "resume", "lmbda"):
        tree.pop(k, None)
    for k in ("max_steps", "eval_every", "checkpoint_every", "seed", "lr", "head_lr",
              "backbone_lr"):
        tree["train"].pop(k, None)
    blob = json.dumps([tree, device, threads], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def measure_step_time(overrides, cache_dir: str | Path | None = None, steps: int = 2,
                      device: str | None = None) -> StepTime:
    """Time ``steps`` real optimizer steps (after one warm-up) of the config ``overrides`` make.

    Trains in a temporary folder, deleted afterwards. The result is cached in
    ``cache_dir/.step-times.json`` by config, device and thread count.
    """


    if steps < 1:
        raise ConfigError(f"steps={steps}: time at least one step")
    kept = [o for o in overrides if _key(o) not in ("out_dir", "resume", "train.eval_every",
                                                      "train.checkpoint_every")]
    cfg = load_config(kept)
    device = device or default_device()
    threads = torch.get_num_threads()
    key = _time_key(cfg, device, threads)
    label = config_label(cfg.adapter.mode, cfg.adapter.rank, cfg.adapter.targets)
    store = Path(cache_dir) / STEP_TIMES if cache_dir is not None else None
    cache = {}
    if store is not None and store.is_file():
        try:
            cache = json.loads(store.read_text())
        except (OSError, ValueError):
            cache = {}  # a damaged cache is only a cache
        if isinstance(cache, dict) and isinstance(cache.get(key), dict):
            try:
                return StepTime(**{**cache[key], "cached": True})
            except TypeError:
                pass
    tmp = Path(tempfile.mkdtemp(prefix="icm-steptime-"))
    try:
        length = max(cfg.train.max_steps, steps + 1)
        cfg = load_config([*kept, f"out_dir={tmp}", "resume=false", "train.eval_every=0",
                           "train.checkpoint_every=0", f"train.max_steps={length}"])
        trainer = Trainer(cfg, device=device)
        trainer.step()  # warm-up: loader start, first allocations
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        seconds = (time.perf_counter() - t0) / steps
        del trainer  # its loader's worker processes end with it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result = StepTime(seconds, steps, label, device, threads, now)
    if store is not None:
        cache = cache if isinstance(cache, dict) else {}
        cache[key] = {k: v for k, v in asdict(result).items() if k != "cached"}
        write_text(store, json.dumps(cache, indent=1))
    return result


@dataclass(frozen=True)
class GridCost:
    runs: int  # trainings: one per configuration and lambda, or per configuration (variable rate)
    steps: int  # optimizer steps of all runs together
    step_time: StepTime
    seconds: float  # steps x the measured step time (evaluations and model builds not included)
    variable_rate: bool = False
    lambdas: tuple[float, ...] = ()  # variable rate: the anchors each training covers

    def describe(self) -> str:
        if self.variable_rate:
            what = ("variable rate: one per configuration covers every rate, lambdas "
                    f"{', '.join(_fmt(x) for x in self.lambdas)}")
        else:
            what = "one per configuration and lambda"
        return (f"{self.runs} training{'s' if self.runs != 1 else ''} ({what}), {self.steps} "
                f"steps x {self.step_time.seconds:.3f} s = {_duration(self.seconds)} of training "
                f"({self.step_time.describe()}; evaluations and model builds come on top)")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def estimate_cost(points: list[GridPoint], step_time: StepTime) -> GridCost:
    """trainings x steps x the measured step time of the first configuration. A point is one
    training: with variable rate, one per configuration for every rate (``expand_grid``)."""
    if not points:
        raise ConfigError("an empty grid has no cost: give at least one adapter mode and lambda")
    steps = sum(p.steps for p in points)
    variable = points[0].variable_rate
    return GridCost(len(points), steps, step_time, steps * step_time.seconds, variable,
                    points[0].lambdas if variable else ())


# -- Fig. 5 data ----------------------------------------------------------------------------
_SHARES: dict[str, tuple[int, int]] = {}


def trainable_share(cfg: ExperimentConfig, task: str | None = None) -> tuple[int, int]:
    """(trainable backbone parameters, all backbone parameters) of ``cfg``, exact: the
    accounting's ``parameter_counts`` (``icm info``'s numbers) of a meta build (no weights);
    memoized by the settings that decide it."""
    key = json.dumps([OmegaConf.to_container(OmegaConf.structured(cfg.backbone)),
                      OmegaConf.to_container(OmegaConf.structured(cfg.adapter)),
                      list(cfg.tasks), task], sort_keys=True)
    if key not in _SHARES:
        c = parameter_counts(build_model(cfg, "meta"), task)
        _SHARES[key] = (c["trainable_backbone_params"], c["backbone_params"])
    return _SHARES[key]


FIG5_COLUMNS = ("run", "label", "adapter", "rank", "targets", "lmbda", "rate", "task", "metric",
                "value", "higher_is_better", "bpp", "trainable_params", "backbone_params",
                "trainable_percent")


def fig5_rows(runs, *, max_images: int | None = None, device: str = "cpu") -> list[dict]:
    """One row per run and task (a variable-rate run: per task and rate): its real-bytes RA
    point (``ra_curves.run_points``, cached) and the share of backbone parameters its adapter
    trains. ``lmbda`` is the point's (a variable-rate point's: the lambda its rate stands for).
    ``runs``: folders or RunInfo."""
    rows = []
    for run in runs:
        path = Path(getattr(run, "path", run))
        cfg = load_config_file(resolve_checkpoint_dir(path))
        a = cfg.adapter
        low = get_adapter_kind(a.mode).low_rank
        for p in run_points(path, max_images=max_images, device=device):
            trainable, total = trainable_share(cfg, p.task)
            rows.append({"run": str(path), "label": config_label(a.mode, a.rank, a.targets),
                         "adapter": a.mode, "rank": a.rank if low else None,
                         "targets": "".join(a.targets) if low else None, "lmbda": p.lmbdas[0],
                         "rate": p.points[0].get("rate"), "task": p.task, "metric": p.metric, "value": p.values[0],
                         "higher_is_better": p.higher_is_better, "bpp": p.bpp[0],
                         "trainable_params": trainable, "backbone_params": total,
                         "trainable_percent": 100.0 * trainable / total})
    return sorted(rows, key=lambda r: (r["task"], r["trainable_percent"], r["label"], r["lmbda"]))


def rows_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIG5_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def save_ablation(rows: list[dict], out_dir: str | Path, name: str = "ablation",
                  fig=None) -> tuple[Path, Path]:
    """``out_dir/name.html`` (self-contained plotly, works offline) and ``name.csv``, atomic."""
    out = Path(out_dir)
    fig = fig if fig is not None else fig5_figure(rows)
    html, table = out / f"{name}.html", out / f"{name}.csv"
    write_text(html, fig.to_html(full_html=True, include_plotlyjs=True))
    write_text(table, rows_csv(rows))
    return html, table


__all__ = ["parse_numbers", "parse_target_sets", "GridPoint", "StepTime", "GridCost", "config_label", "expand_grid", "measure_step_time",
           "estimate_cost", "trainable_share", "fig5_rows", "rows_csv",
           "save_ablation", "FIG5_COLUMNS"]
