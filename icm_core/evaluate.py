"""Rate-accuracy evaluation at real bitstream sizes, BD-rate, CompressAI-style result files.

Rates are the bytes of the streams ``ICMModel.encode`` writes (container header included),
per image, over its own pixels. Accuracy is computed on what ``decode`` returns from those
bytes, so every reported point is something a receiver really gets. The encoder (backbone,
adapter, preliminary decoder, analysis) runs once per image: the same pass gives the stream
and the entropy model's estimate of its size.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from icm_core.io import write_text
from icm_core.metrics import make_metric
from icm_core.tasks import get_task


@dataclass
class ImageRecord:
    """One evaluated image: what it cost and how well its task did on it alone."""

    index: int
    height: int
    width: int
    bytes: int | None  # real stream length; None without compression or real bitstreams
    bits_estimated: float | None  # y + z from the entropy model; None without compression
    metric: float | None  # the task metric of this image alone (None: not computed)

    @property
    def bpp(self) -> float | None:
        return None if self.bytes is None else 8 * self.bytes / (self.height * self.width)

    @property
    def bpp_estimated(self) -> float | None:
        return None if self.bits_estimated is None else self.bits_estimated / (self.height * self.width)


@dataclass
class EvalResult:
    task: str
    metric: str
    value: float
    bpp: float | None  # real bytes; None for models without compression
    bpp_estimated: float | None  # from the entropy model's likelihoods
    images: int
    higher_is_better: bool = True
    extra: dict = field(default_factory=dict)
    records: list[ImageRecord] = field(default_factory=list)
    cancelled: bool = False  # stopped early: the numbers cover ``images`` images only

    def summary(self) -> dict:
        """Plain values (JSON-ready), without the per-image records."""
        return {"task": self.task, "metric": self.metric, "value": self.value, "bpp": self.bpp,
                "bpp_estimated": self.bpp_estimated, "images": self.images,
                "higher_is_better": self.higher_is_better, "cancelled": self.cancelled}


@torch.no_grad()
def evaluate(model, dataset, task: str | None = None, *, max_images: int | None = None,
             real_bitstreams: bool = True, device: str | None = None, per_image: bool = True,
             progress: Callable[[int, int], None] | None = None,
             cancel: threading.Event | None = None,
             metric_options: dict | None = None) -> EvalResult:
    """Score ``task`` on ``dataset``; with compression, through real encode -> bytes -> decode.

    Args:
        per_image: also score each image alone (``EvalResult.records[i].metric``).
        metric_options: passed to ``make_metric`` (e.g. ``{"n_thresholds": 19}`` for odsF).
        progress: called as ``progress(done, total)`` after each image.
        cancel: when set, stop after the current image; the result says ``cancelled``.
    """
    task = get_task(task or model.tasks[0]).name
    spec = get_task(task)
    device = device or str(model.device)
    options = metric_options or {}
    metric = make_metric(task, dataset=model.dataset, **options)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    comp, real = model.compression, model.compression and real_bitstreams
    records: list[ImageRecord] = []
    for i in range(n):
        if cancel is not None and cancel.is_set():
            break
        sample = dataset[i]
        image = sample["image"].unsqueeze(0).to(device)
        target = sample[task].unsqueeze(0)
        H, W = image.shape[-2:]
        if real:
            enc = model.encode(image, task=task)  # the encoder runs once: stream + estimate
            pred, nbytes, est = model.decode(enc).prediction, len(enc), enc.bits_estimated
        else:
            out = model.predict(image, task=task)
            pred, nbytes = out.prediction, None
            est = float(out.total_bits.sum()) if comp else None
        pred = spec.activate(pred.float()).cpu()
        metric.update(pred, target)
        score = None
        if per_image:
            alone = make_metric(task, dataset=model.dataset, **options)
            alone.update(pred, target)
            score = alone.compute()
        records.append(ImageRecord(i, int(H), int(W), nbytes, est, score))
        if progress is not None:
            progress(len(records), n)
    pixels = sum(r.height * r.width for r in records) or 1
    bpp = sum(8 * r.bytes for r in records) / pixels if real else None
    bpp_est = sum(r.bits_estimated for r in records) / pixels if comp else None
    value = metric.compute() if records else float("nan")
    return EvalResult(task, spec.metric, value, bpp, bpp_est, len(records), spec.higher_is_better,
                      records=records, cancelled=len(records) < n)
def compressai_json(name: str, description: str, results: list[EvalResult]) -> dict:
    """CompressAI's result layout: ``{"name", "description", "results": {"bpp": [...], metric: [...]}}``."""
    pts = sorted(results, key=lambda r: (r.bpp if r.bpp is not None else -1.0))
    out = {"bpp": [r.bpp for r in pts], "bpp_estimated": [r.bpp_estimated for r in pts]}
    for r in pts:
        out.setdefault(r.metric, []).append(r.value)
    return {"name": name, "description": description, "results": out,
            "task": pts[0].task if pts else None, "images": pts[0].images if pts else 0}


def results_csv(results: list[EvalResult]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["task", "metric", "value", "bpp", "bpp_estimated", "images"])
    for r in results:
        w.writerow([r.task, r.metric, r.value, r.bpp, r.bpp_estimated, r.images])
    return buf.getvalue()


def write_results(path_json, path_csv, name: str, description: str, results: list[EvalResult]) -> dict:
    doc = compressai_json(name, description, results)
    write_text(path_json, json.dumps(doc, indent=2))
    write_text(path_csv, results_csv(results))
    return doc


@dataclass(frozen=True)
class BDRate:
    """Bjontegaard delta rate of a test curve against an anchor.

    ``value`` is in percent (negative: the test needs fewer bits for the same accuracy), or
    ``None`` with ``reason`` when the curves cannot be compared honestly. ``metric_range`` is
    the accuracy interval both curves cover, over which the rates were averaged (in the
    metric's own units and direction).
    """

    value: float | None
    reason: str | None
    metric_range: tuple[float, float] | None
    method: str

    @property
    def comparable(self) -> bool:
        return self.value is not None

    def __str__(self) -> str:
        return f"{self.value:+.2f} %" if self.value is not None else f"n/a ({self.reason})"


def pareto_front(rates, values, higher_is_better: bool = True) -> tuple[list[float], list[float]]:
    """The points no cheaper point beats, sorted by rate: accuracy strictly improves with rate.

    A codec's quality ladder or a noisy lambda sweep is not monotone; BD-rate interpolates
    log-rate as a function of accuracy, which needs a strictly monotone curve. Dominated points
    (more bits, no better accuracy) are what a user would never pick, so they are dropped.
    """
    sign = 1.0 if higher_is_better else -1.0
    pts = sorted((float(r), sign * float(v)) for r, v in zip(rates, values)
                 if r is not None and v is not None and r > 0 and v == v)
    front: list[tuple[float, float]] = []
    for r, v in pts:
        if not front or v > front[-1][1]:
            if front and r == front[-1][0]:
                front[-1] = (r, v)
            else:
                front.append((r, v))
    return [r for r, _ in front], [sign * v for _, v in front]


def bd_rate(anchor: tuple[list, list], test: tuple[list, list], higher_is_better: bool = True, *,
            method: str = "pchip", min_overlap: float = 0.1) -> BDRate:
    """BD-rate of ``test`` against ``anchor``, each a (bpp list, metric list) of any length.

    Each curve is reduced to its Pareto front, log-rate is interpolated as a function of the
    metric (RMSE and mErr negated so it increases with rate) and averaged over the metric
    interval both fronts cover. PCHIP is the default: it is monotone between points, so it
    never dips below a curve's real rates; Akima and cubic splines overshoot on the
    flat-then-steep curves of classical codecs fed to task networks (a measured -31.6 %
    where PCHIP and linear both give -79 % on the same points). The result is "not
    comparable" (``value=None``, with the reason) when a front has fewer than two points or
    the shared metric interval is under ``min_overlap`` of the union of both.
    """
    import warnings

    import bjontegaard as bd

    if method not in ("pchip", "akima", "cubic"):
        raise ValueError(f"method={method!r}; choose pchip, akima or cubic")
    (ra, va), (rt, vt) = (pareto_front(*anchor, higher_is_better), pareto_front(*test, higher_is_better))
    for name, r in (("anchor", ra), ("test", rt)):
        if len(r) < 2:
            return BDRate(None, f"the {name} curve has {len(r)} useful point(s); BD-rate needs 2",
                          None, method)
    sign = 1.0 if higher_is_better else -1.0
    sa, st = [sign * v for v in va], [sign * v for v in vt]
    lo, hi = max(min(sa), min(st)), min(max(sa), max(st))
    span = max(max(sa), max(st)) - min(min(sa), min(st))
    if hi <= lo or (span > 0 and (hi - lo) / span < min_overlap):
        return BDRate(None, f"the curves share too little of their accuracy range "
                      f"({max(hi - lo, 0) / span:.0%} < {min_overlap:.0%})" if span > 0 else
                      "both curves have a single accuracy value", None, method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # our own overlap rule replaces the package's warning
        value = float(bd.bd_rate(ra, sa, rt, st, method=method, require_matching_points=False,
                                 min_overlap=0))
    rng = (lo, hi) if higher_is_better else (-hi, -lo)
    return BDRate(value, None, rng, method)
