"""Rate-accuracy results: ONE curve type, its CompressAI JSON in and out, and the BD-rate table.

A ``Curve`` is one method's points on one task: a run folder's evaluation (one point), runs that
differ only in lambda (``group_runs``), ``icm eval``'s and ``icm compare``'s results files, a
classical pipeline, a Pareto envelope (``envelope``). Files use CompressAI's layout,
``{"name", "description", "results": {"bpp": [...], <metric>: [...]}}``, plus what a reader
needs (task, metric, direction, kind, the uncompressed baseline, what each point was);
``load_results`` reads CompressAI's own files too. ``bd_rows`` is the one BD-rate table: the
workbench's rate-accuracy panel and ``icm compare``'s ``bd_rate.csv`` are both its rows.

Runs that differ only in lambda are one curve; anything else that differs (adapter, rank,
decoder, steps, weights...) makes another, labelled by what differs, so two curves on a chart
are never silently two settings (``run_settings`` is what tells runs apart).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from icm_core.config.schema import ExperimentConfig
from icm_core.errors import ConfigError, ICMError
from icm_core.evaluation.bdrate import bd_rate, pareto_front
from icm_core.evaluation.evaluate import EvalResult
from icm_core.files import write_text
from icm_core.models.adapters import ADAPTER_KINDS, get_adapter_kind
from icm_core.models.backbone import weights_source
from icm_core.tasks.registry import get_task

ENVELOPE = "best-classical"
PREPROC_ENVELOPE = "best-preproc"
BD_COLUMNS = ("task", "method", "anchor", "rate", "bd_rate_percent", "metric_lo", "metric_hi",
              "reason")
NO_RATE = "a curve without compression has no rate"
RATES = ("file", "payload")
"""How a rate is counted: ``file``, every byte a user stores; ``payload``, the coded bitstream
without container or metadata bytes (a learned stream less its header, a JPEG in abbreviated
form, the AV1 OBUs of an AVIF...: ``icm_core.baselines.payload``)."""
CSV_COLUMNS = ("task", "metric", "value", "bpp", "bpp_estimated", "images")


def run_settings(cfg: ExperimentConfig) -> dict:
    """The settings a researcher tells runs apart by: the Runs table's columns, what groups
    run points into curves (all but ``name`` and ``lmbda``) and what a lambda sweep shares.
    Rank, alpha and targets are None for adapters without them (full, fixed, scratch)."""
    a = cfg.adapter
    low_rank = get_adapter_kind(a.mode).low_rank
    try:
        source = weights_source(cfg.backbone)
    except ICMError:
        source = str(cfg.backbone.weights)
    return {"name": cfg.name, "tasks": list(cfg.tasks), "adapter": a.mode,
            "rank": a.rank if low_rank else None, "alpha": a.alpha if low_rank else None,
            "targets": list(a.targets) if low_rank else None, "lmbda": cfg.lmbda,
            "compression": cfg.model.compression, "decoder": cfg.model.decoder,
            "inter_sup": cfg.model.inter_sup, "backbone": cfg.backbone.name,
            "weights_source": source, "steps": cfg.train.max_steps, "size": list(cfg.data.size),
            "dataset": cfg.data.name,
            # a variable-rate run is a curve by itself, never grouped with per-lambda runs
            **({"variable_rate": True, "rate_lambdas": list(cfg.model.rate_lambdas)}
               if cfg.model.variable_rate and cfg.model.compression else {})}


def sweep_key(settings: dict) -> dict:
    """What runs of one lambda sweep share: their settings less ``lmbda``."""
    return {k: v for k, v in settings.items() if k != "lmbda"}


def _rate_order(bpp: Sequence) -> list[int]:
    """Indices by rate; a point without a rate (no compression) first, as CompressAI's tools."""
    return sorted(range(len(bpp)), key=lambda i: -1.0 if bpp[i] is None else bpp[i])


def _point_text(point: dict) -> str:
    parts = []
    if point.get("rate") is not None:  # a variable-rate model's rate parameter in [0, 1]
        parts.append(f"r={point['rate']:.3g}")
    if point.get("lmbda") is not None:
        parts.append(f"λ={point['lmbda']:g}")
    for k in ("quality", "scale"):
        v = point.get(k)
        if v is not None:
            parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


@dataclass
class Curve:
    """One method's rate-accuracy points on one task (rate: real bits over original pixels).

    ``bpp[i]`` is None for a point without compression. ``points[i]`` says what point ``i``
    was (a run and its lambda; a codec, its quality and scale). ``kind`` is learned,
    classical, preproc or envelope; ``source`` the results file a curve was read from (empty
    when it was computed here); ``settings`` the run settings of a curve of runs;
    ``bpp_estimated`` the entropy model's estimate per point and ``images`` how many images
    each point averages, when known.
    """

    name: str
    task: str
    metric: str
    higher_is_better: bool
    bpp: list
    values: list
    kind: str = ""
    description: str = ""
    uncompressed: float | None = None  # the uncompressed baseline model's metric
    points: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    source: str = ""
    bpp_estimated: list | None = None
    images: int | None = None
    bpp_payload: list | None = None  # the same points' rates without container bytes
    rate: str = "file"  # what ``bpp`` counts: every byte stored, or the payload (``at_rate``)

    @property
    def texts(self) -> list[str]:
        """Each point's label: its lambda, or a codec's quality and scale."""
        return [_point_text(p) for p in self.points] if self.points else [""] * len(self.bpp)

    @property
    def runs(self) -> list:
        """The run folder of each point ([] when the points are not runs)."""
        return [p.get("run") for p in self.points] if any("run" in p for p in self.points) else []

    @property
    def lmbdas(self) -> list:
        return [p.get("lmbda") for p in self.points]

    def sorted(self) -> Curve:
        """The same curve, its points by rate (no rate first)."""
        o = _rate_order(self.bpp)

        def pick(xs):
            return [xs[i] for i in o] if xs else xs
        return Curve(self.name, self.task, self.metric, self.higher_is_better, pick(self.bpp),
                     pick(self.values), self.kind, self.description, self.uncompressed,
                     pick(self.points), dict(self.settings), self.source,
                     pick(self.bpp_estimated), self.images, pick(self.bpp_payload), self.rate)

    def at_rate(self, rate: str) -> Curve:
        """The same curve with ``bpp`` counting ``rate``: ``file`` (every byte a user stores)
        or ``payload`` (the coded bitstream without container or metadata bytes)."""
        if rate not in RATES:
            raise ConfigError(f"rate={rate!r}; choose one of {list(RATES)}")
        if rate == self.rate:
            return self
        if rate == "payload" and self.bpp_payload is None:
            raise ConfigError(f"curve {self.name!r} ({self.task}) has no payload rates; "
                              "it was written before they were counted, or by another tool")
        if rate == "file" and self.rate == "payload":
            raise ConfigError(f"curve {self.name!r} counts only the payload")
        c = replace(self, bpp=list(self.bpp_payload), rate="payload")
        return c.sorted()

    def to_json(self) -> dict:
        """CompressAI's layout (``results: {bpp, <metric>}``), points by rate, plus what a
        reader needs; ``bpp_estimated`` and ``images`` only when known."""
        c = self.sorted()
        results = {"bpp": c.bpp}
        if c.bpp_payload is not None and c.rate == "file":
            results["bpp_payload"] = c.bpp_payload
        if c.bpp_estimated is not None:
            results["bpp_estimated"] = c.bpp_estimated
        results[c.metric] = c.values
        doc = {"name": c.name, "description": c.description, "task": c.task,
               "metric": c.metric, "higher_is_better": c.higher_is_better, "kind": c.kind,
               "uncompressed": c.uncompressed, "rate": c.rate, "results": results,
               "points": c.points}
        if c.images is not None:
            doc["images"] = c.images
        if c.settings:
            doc["settings"] = c.settings
        return doc


def eval_curve(name: str, description: str, results: Sequence[EvalResult], *,
               points: Sequence[dict] | None = None, kind: str = "learned") -> Curve:
    """``evaluate``'s results of one task (one per run, lambda or rate) as a curve, in their
    order; a variable-rate model's points record the ``rate`` each was coded at."""
    if not results:
        raise ConfigError(f"results {name!r}: no evaluation to write")
    r0 = results[0]
    other = [r for r in results if (r.task, r.metric) != (r0.task, r0.metric)]
    if other:
        raise ConfigError(f"results {name!r} mix {r0.task}/{r0.metric} with "
                          f"{other[0].task}/{other[0].metric}; write one file per task")
    points = list(points) if points is not None else []
    if any(r.rate is not None for r in results):
        points = [{**(points[i] if points else {}), "rate": r.rate} for i, r in enumerate(results)]
    return Curve(name, r0.task, r0.metric, r0.higher_is_better, [r.bpp for r in results],
                 [r.value for r in results], kind, description, points=points,
                 bpp_estimated=[r.bpp_estimated for r in results], images=r0.images,
                 bpp_payload=[r.bpp_payload for r in results])


def load_results(path: str | Path, metric: str | None = None) -> Curve:
    """A results JSON (``icm compare``'s, ``icm eval``'s, or CompressAI's) -> ``Curve``,
    its points by rate, ``source`` the path.

    ``metric`` picks the metric when the file holds several (CompressAI's psnr, ms-ssim...);
    the task defaults to the file's ``task`` key, the direction to the task's.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"{str(path)!r}: cannot read results ({e.strerror or e})") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{str(path)!r} is not JSON ({e}); give a results file written by "
                          "icm compare or icm eval") from e
    res = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(res, dict) or not isinstance(res.get("bpp"), list):
        raise ConfigError(f"{str(path)!r} has no 'results': {{'bpp': [...], <metric>: [...]}} "
                          "(CompressAI's layout)")
    metrics = [k for k in res if k not in ("bpp", "bpp_estimated", "bpp_payload")]
    metric = metric or doc.get("metric") or (metrics[0] if len(metrics) == 1 else None)
    if metric not in res:
        raise ConfigError(f"{str(path)!r}: metric {metric!r} is not in its results; choose one "
                          f"of {metrics}")
    bpp, values = res["bpp"], res[metric]
    if len(bpp) != len(values):
        raise ConfigError(f"{str(path)!r}: {len(bpp)} rates but {len(values)} {metric} values")
    task = doc.get("task")
    hib = doc.get("higher_is_better")
    if hib is None:
        hib = get_task(task).higher_is_better if task else True
    points = doc.get("points") or []
    est = res.get("bpp_estimated")
    pay = res.get("bpp_payload")
    return Curve(str(doc.get("name", path.stem)), task, metric, bool(hib),
                 [None if b is None else float(b) for b in bpp], [float(v) for v in values],
                 doc.get("kind", ""), doc.get("description", ""), doc.get("uncompressed"),
                 points if len(points) == len(bpp) else [], doc.get("settings") or {}, str(path),
                 est if isinstance(est, list) and len(est) == len(bpp) else None,
                 doc.get("images"),
                 [None if b is None else float(b) for b in pay]
                 if isinstance(pay, list) and len(pay) == len(bpp) else None,
                 doc.get("rate", "file") if doc.get("rate") in RATES else "file").sorted()


def results_csv(curve: Curve) -> str:
    """One row per point, in the curve's order: task, metric, value, bpp, bpp_estimated, images
    (and ``rate_param``, the rate in [0, 1] each point was coded at, for a variable-rate model)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    rated = any(p.get("rate") is not None for p in curve.points)
    w.writerow(CSV_COLUMNS + ("rate_param",) * rated)
    est = curve.bpp_estimated or [None] * len(curve.bpp)
    pts = curve.points or [{}] * len(curve.bpp)
    for b, v, e, p in zip(curve.bpp, curve.values, est, pts):
        w.writerow([curve.task, curve.metric, v, b, e, curve.images] + [p.get("rate")] * rated)
    return buf.getvalue()


def write_results(path_json: str | Path, path_csv: str | Path | None, curve: Curve) -> dict:
    """The curve's JSON (and its CSV when ``path_csv`` is given), each written atomically."""
    doc = curve.to_json()
    write_text(path_json, json.dumps(doc, indent=2))
    if path_csv is not None:
        write_text(path_csv, results_csv(curve))
    return doc


# -- curves of runs ---------------------------------------------------------------------------
def config_label(mode: str, rank: int | None = None, targets=None) -> str:
    """'dora r8 qkv', 'full': how an adapter configuration is named in legends and run names."""
    return get_adapter_kind(mode).label(rank, targets)


def run_label(s: dict) -> str:
    """'dora r8 qkv', 'full full-dec': a curve of runs named by its settings."""
    mode = s.get("adapter", "?")
    kind = ADAPTER_KINDS.get(mode) if isinstance(mode, str) else None  # a foreign file: its text
    label = kind.label(s.get("rank"), s.get("targets")) if kind else str(mode)
    if s.get("decoder") == "full":
        label += " full-dec"
    if s.get("inter_sup") is False:
        label += " no-intersup"
    if s.get("compression") is False:
        label += " uncompressed"
    if s.get("variable_rate"):
        label += " variable-rate"
    return label


def group_runs(points: Sequence[Curve]) -> list[Curve]:
    """Run curves (``run_points``: one point each) -> one curve per task and per settings less
    the lambda, named by its settings, by what differs where two names would be equal."""
    groups: dict[tuple, list[Curve]] = {}
    for p in points:
        key = tuple(sorted((k, repr(v)) for k, v in p.settings.items() if k not in ("name", "lmbda")))
        groups.setdefault((p.task, key), []).append(p)
    base = {g: run_label(pts[0].settings) for g, pts in groups.items()}
    labels = dict(base)
    for g, lab in base.items():  # disambiguate equal labels by the settings that differ
        twins = [h for h in groups if h != g and h[0] == g[0] and base[h] == lab]
        if twins:
            mine = dict(g[1])
            differ = sorted({k for h in twins for k, v in h[1] if mine.get(k) != v})
            extra = ", ".join(f"{k}={groups[g][0].settings.get(k)}" for k in differ)
            labels[g] = f"{lab} ({extra})"
    curves = []
    for g, pts in groups.items():
        pts = sorted(pts, key=lambda p: (p.bpp[0] is None, p.bpp[0] or 0.0,
                                         p.points[0].get("lmbda", 0.0) if p.points else 0.0))
        first = pts[0]
        curves.append(Curve(
            labels[g], first.task, first.metric, first.higher_is_better,
            [p.bpp[0] for p in pts], [p.values[0] for p in pts], "learned",
            f"{len(pts)} run(s) of {labels[g]}", None, [dict(p.points[0]) for p in pts],
            {k: v for k, v in first.settings.items() if k not in ("name", "lmbda")},
            bpp_estimated=[(p.bpp_estimated or [None])[0] for p in pts], images=first.images,
            bpp_payload=([(p.bpp_payload or [None])[0] for p in pts]
                         if all(p.bpp_payload for p in pts) else None)))
    return sorted(curves, key=lambda c: (c.task, c.name))


# -- envelopes and BD-rates -------------------------------------------------------------------
def envelope(curves: Sequence[Curve], description: str = "", kind: str = "classical",
             name: str = ENVELOPE) -> Curve | None:
    """``best-classical``: the Pareto front of every point of the curves of ``kind`` on one task
    (any codec, any scale), i.e. the best such pipeline at each rate; None without such curves.
    ``kind="preproc", name=PREPROC_ENVELOPE``: the same over the pre-processor pipelines."""
    members = [c for c in curves if c.kind == kind]
    if not members:
        return None
    c0 = members[0]
    rates, values = pareto_front([b for c in members for b in c.bpp],
                                 [v for c in members for v in c.values], c0.higher_is_better)
    if any(c.rate != c0.rate for c in members):
        raise ConfigError(f"envelope of {name!r}: its curves count rates differently "
                          f"({sorted({c.rate for c in members})}); take at_rate() of each first")
    return Curve(name, c0.task, c0.metric, c0.higher_is_better, rates, values, "envelope",
                 description, c0.uncompressed, rate=c0.rate)


def bd_rows(curves: Sequence[Curve], anchors: Sequence[Curve]) -> list[dict]:
    """The BD-rate table: every curve against every anchor of its task (never against itself),
    task by task, method by method: rows of ``BD_COLUMNS``.

    ``bd_rate_percent`` is None with the ``reason`` when the two cannot be compared (a curve
    without a rate, too few points, too little shared accuracy); otherwise ``metric_lo`` /
    ``metric_hi`` is the accuracy interval the rates were averaged over.
    """
    rows = []
    for task in dict.fromkeys(c.task for c in curves):
        refs = [a for a in anchors if a.task == task]
        for m in (c for c in curves if c.task == task):
            for a in refs:
                if a is m or a.name == m.name:
                    continue
                if a.rate != m.rate:
                    raise ConfigError(f"BD-rate of {m.name!r} ({m.rate} rate) against {a.name!r} "
                                      f"({a.rate} rate): count both the same way (at_rate)")
                if any(b is None for b in (*a.bpp, *m.bpp)):
                    rows.append({"task": task, "method": m.name, "anchor": a.name,
                                 "rate": m.rate, "bd_rate_percent": None, "metric_lo": None,
                                 "metric_hi": None, "reason": NO_RATE})
                    continue
                r = bd_rate((list(a.bpp), list(a.values)), (list(m.bpp), list(m.values)),
                            m.higher_is_better)
                lo, hi = r.metric_range or (None, None)
                rows.append({"task": task, "method": m.name, "anchor": a.name, "rate": m.rate,
                             "bd_rate_percent": r.value, "metric_lo": lo, "metric_hi": hi,
                             "reason": r.reason or ""})
    return rows


__all__ = ["Curve", "run_settings", "sweep_key", "config_label", "run_label", "eval_curve", "load_results",
           "results_csv", "write_results", "group_runs", "envelope", "bd_rows", "BD_COLUMNS",
           "ENVELOPE", "PREPROC_ENVELOPE", "RATES"]
