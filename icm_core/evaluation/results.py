"""Rate-accuracy curves as the workbench compares them: runs grouped by configuration, results
files (CompressAI layout) beside them, and a BD-rate table against an anchor curve.

Runs that differ only in lambda are one curve; anything else that differs (adapter, rank,
decoder, steps, weights...) makes another, labelled by what differs, so two curves on a chart
are never silently two settings.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

from icm_core.evaluation.bdrate import bd_rate
from icm_core.evaluation.evaluate import EvalResult
from icm_core.files import write_text
from icm_core.models.adapters import ADAPTER_KINDS


@dataclass(frozen=True)
class Curve:
    label: str
    task: str
    metric: str
    higher_is_better: bool
    bpp: tuple  # real bytes, sorted by rate; None for an uncompressed run
    values: tuple
    lmbdas: tuple = ()  # per point (runs); empty for a results file
    runs: tuple = ()  # run folder per point (runs)
    settings: dict = field(default_factory=dict)
    source: str = "runs"  # 'runs' or the results file's path
    texts: tuple = ()  # the label of each point: its lambda, or a codec's quality and scale
    uncompressed: float | None = None  # a results file's uncompressed-baseline metric


def _base_label(s: dict) -> str:
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


def curves_from_points(points: list[RAPoint]) -> list[Curve]:
    """Group run points by task and by every setting except lambda, one curve per group."""
    groups: dict[tuple, list[RAPoint]] = {}
    for p in points:
        key = tuple(sorted((k, repr(v)) for k, v in p.settings.items() if k != "name"))
        groups.setdefault((p.task, key), []).append(p)
    labels = {g: _base_label(pts[0].settings) for g, pts in groups.items()}
    for g, lab in labels.items():  # disambiguate equal labels by the settings that differ
        twins = [h for h in groups if h != g and h[0] == g[0] and labels[h] == lab]
        if twins:
            mine = dict(g[1])
            differ = sorted({k for h in twins for k, v in h[1] if mine.get(k) != v})
            extra = ", ".join(f"{k}={groups[g][0].settings.get(k)}" for k in differ)
            labels[g] = f"{lab} ({extra})"
    curves = []
    for g, pts in groups.items():
        pts = sorted(pts, key=lambda p: (p.bpp is None, p.bpp or 0.0, p.lmbda))
        first = pts[0]
        curves.append(Curve(labels[g], first.task, first.metric, first.higher_is_better,
                            tuple(p.bpp for p in pts), tuple(p.value for p in pts),
                            tuple(p.lmbda for p in pts), tuple(p.run for p in pts),
                            {k: v for k, v in first.settings.items() if k != "name"},
                            texts=tuple(f"λ={p.lmbda:g}" if p.rate is None
                                        else f"r={p.rate:.3g} λ={p.lmbda:.3g}" for p in pts)))
    return sorted(curves, key=lambda c: (c.task, c.label))


def _point_text(point: dict) -> str:
    parts = [f"{k}={point[k]:g}" if isinstance(point[k], float) else f"{k}={point[k]}"
             for k in ("rate", "lmbda", "quality", "scale") if point.get(k) is not None]
    return " ".join(parts)


def curve_from_results(res, path: str) -> Curve:
    """A results file (``icm_core.studies.compare.load_results``) as a curve, sorted by rate."""
    pts = list(res.points) if len(res.points or ()) == len(res.bpp) else [{}] * len(res.bpp)
    order = sorted(range(len(res.bpp)), key=lambda i: (res.bpp[i] is None, res.bpp[i] or 0.0))
    return Curve(str(res.name), str(res.task or "(no task)"), str(res.metric),
                 bool(res.higher_is_better), tuple(res.bpp[i] for i in order),
                 tuple(res.values[i] for i in order), source=str(path),
                 texts=tuple(_point_text(pts[i]) for i in order),
                 uncompressed=getattr(res, "uncompressed", None))


def bd_table(curves: list[Curve], anchor: str) -> list[dict]:
    """BD-rate of every curve against the curve labelled ``anchor``, task by task.

    A task without the anchor curve gets no rows; curves without compression (no rate) are
    reported as not comparable with the reason.
    """
    rows = []
    for task in dict.fromkeys(c.task for c in curves):
        same = [c for c in curves if c.task == task]
        ref = next((c for c in same if c.label == anchor), None)
        if ref is None:
            continue
        for c in same:
            if c is ref:
                continue
            if any(b is None for b in (*ref.bpp, *c.bpp)):
                rows.append({"task": task, "curve": c.label, "anchor": anchor, "bd_rate": None,
                             "note": "a curve without compression has no rate"})
                continue
            r = bd_rate((list(ref.bpp), list(ref.values)), (list(c.bpp), list(c.values)),
                        c.higher_is_better)
            rows.append({"task": task, "curve": c.label, "anchor": anchor, "bd_rate": r.value,
                         "note": r.reason or f"{c.metric} range {r.metric_range[0]:.4g}-"
                                               f"{r.metric_range[1]:.4g}"})
    return rows


__all__ = ["Curve", "curves_from_points", "curve_from_results", "bd_table"]


@dataclass(frozen=True)
class RAPoint:
    """One run's result for one task."""

    run: str
    task: str
    metric: str
    value: float
    higher_is_better: bool
    bpp: float | None  # real bytes; None without compression
    bpp_estimated: float | None
    images: int
    lmbda: float
    settings: dict = field(default_factory=dict)  # what the run was (adapter, decoder, steps...)
    rate: float | None = None  # variable-rate runs: the rate in [0, 1] (lmbda: what it stands for)


def compressai_json(name: str, description: str, results: list[EvalResult]) -> dict:
    """CompressAI's result layout: ``{"name", "description", "results": {"bpp": [...], metric: [...]}}``."""
    pts = sorted(results, key=lambda r: (r.bpp if r.bpp is not None else -1.0))
    out = {"bpp": [r.bpp for r in pts], "bpp_estimated": [r.bpp_estimated for r in pts]}
    for r in pts:
        out.setdefault(r.metric, []).append(r.value)
    doc = {"name": name, "description": description, "results": out,
           "task": pts[0].task if pts else None, "images": pts[0].images if pts else 0}
    if any(r.rate is not None for r in pts):  # a variable-rate model: each point's rate
        doc["points"] = [{"rate": r.rate} for r in pts]
    return doc



def results_csv(results: list[EvalResult]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    rated = any(r.rate is not None for r in results)  # variable rate: a rate column
    w.writerow(["task", "metric", "value", "bpp", "bpp_estimated", "images"] + ["rate"] * rated)
    for r in results:
        w.writerow([r.task, r.metric, r.value, r.bpp, r.bpp_estimated, r.images]
                   + [r.rate] * rated)
    return buf.getvalue()



def write_results(path_json, path_csv, name: str, description: str, results: list[EvalResult]) -> dict:
    doc = compressai_json(name, description, results)
    write_text(path_json, json.dumps(doc, indent=2))
    write_text(path_csv, results_csv(results))
    return doc
