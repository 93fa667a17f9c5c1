"""Rate-accuracy evaluation at real bitstream sizes, BD-rate, CompressAI-style result files.

Rates are the bytes of the streams ``ICMModel.encode`` writes (container header included),
per image, over its own pixels. Accuracy is computed on what ``decode`` returns from those
bytes, so every reported point is something a receiver really gets. The encoder (backbone,
adapter, preliminary decoder, analysis) runs once per image: the same pass gives the stream
and the entropy model's estimate of its size.

A variable-rate model (``model.variable_rate``) is one curve: ``evaluate(..., rate=r)`` scores
it at one rate, ``evaluate_rates`` sweeps the rate (``DEFAULT_RATE_POINTS`` evenly spaced rates
in [0, 1] unless told). A per-lambda model is one point: ``evaluate_rates`` gives that point.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from icm_core.codec import coder
from icm_core.errors import ConfigError
from icm_core.models import rate as vr
from icm_core.tasks.metrics import make_metric
from icm_core.tasks.registry import get_task


@dataclass
class ImageRecord:
    """One evaluated image: what it cost and how well its task did on it alone."""

    index: int
    height: int
    width: int
    bytes: int | None  # real stream length; None without compression or real bitstreams
    bits_estimated: float | None  # y + z from the entropy model; None without compression
    metric: float | None  # the task metric of this image alone (None: not computed)
    header_bytes: int | None = None  # the stream's container header (+CRC): bytes - payload

    @property
    def bpp(self) -> float | None:
        return None if self.bytes is None else 8 * self.bytes / (self.height * self.width)

    @property
    def bpp_estimated(self) -> float | None:
        return None if self.bits_estimated is None else self.bits_estimated / (self.height * self.width)

    @property
    def payload_bytes(self) -> int | None:
        """The coded sections without the container header (rate ``payload``)."""
        return None if self.bytes is None else self.bytes - (self.header_bytes or 0)


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
    bpp_payload: float | None = None  # real bytes less each stream's container header
    rate: float | None = None  # variable rate: the rate coded at; None: a fixed-rate model

    def summary(self) -> dict:
        """Plain values (JSON-ready), without the per-image records (``rate``: variable rate)."""
        out = {"task": self.task, "metric": self.metric, "value": self.value, "bpp": self.bpp,
               "bpp_estimated": self.bpp_estimated, "images": self.images,
               "higher_is_better": self.higher_is_better, "cancelled": self.cancelled,
               "bpp_payload": self.bpp_payload}
        return out if self.rate is None else {**out, "rate": self.rate}


DEFAULT_RATE_POINTS = 7  # a variable-rate model's curve: rates 0, 1/6, ..., 1


def sweep_rates(model, rates=None) -> list[float | None]:
    """The rates a curve of ``model`` is evaluated at: ``[None]`` for a per-lambda model (its
    one point; ``rates`` must then be None), else ``rates`` (a count of evenly spaced rates
    in [0, 1], or the rates themselves; default ``DEFAULT_RATE_POINTS``), snapped to the
    stream's grid."""
    if not model.variable_rate:
        if rates is not None:
            raise ConfigError(f"rates={rates!r} given, but this model has one fixed rate "
                              "(model.variable_rate=false): it is one point; drop the rates")
        return [None]
    if rates is None:
        rates = DEFAULT_RATE_POINTS
    if isinstance(rates, int) and not isinstance(rates, bool):
        return vr.sweep(rates)
    out = [vr.snap_rate(r, model.rate_lambdas) for r in rates]
    if not out:
        raise ConfigError("rates=[]: give at least one rate in [0, 1]")
    return out


@torch.no_grad()
def evaluate(model, dataset, task: str | None = None, *, max_images: int | None = None,
             real_bitstreams: bool = True, device: str | None = None, per_image: bool = True,
             progress: Callable[[int, int], None] | None = None,
             cancel: threading.Event | None = None,
             metric_options: dict | None = None, rate: float | None = None) -> EvalResult:
    """Score ``task`` on ``dataset``; with compression, through real encode -> bytes -> decode.

    Args:
        rate: variable-rate models: the rate in [0, 1] to code at (default 1, the highest).
        per_image: also score each image alone (``EvalResult.records[i].metric``).
        metric_options: passed to ``make_metric`` (e.g. ``{"n_thresholds": 19}`` for odsF).
        progress: called as ``progress(done, total)`` after each image.
        cancel: when set, stop after the current image; the result says ``cancelled``.
    """
    task = get_task(task or model.tasks[0]).name
    spec = get_task(task)
    code = model.heads[task].rate_code(rate)  # refuse a bad rate before any work
    rate = None if code is None else vr.rate_of_code(code)
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
            enc = coder.encode(model, image, task=task, rate=rate)  # one encoder pass: stream + estimate
            pred, nbytes, est = coder.decode(model, enc).prediction, len(enc), enc.bits_estimated
            header = enc.sections.header
        else:
            out = model.predict(image, task=task, rate=rate)
            pred, nbytes, header = out.prediction, None, None
            est = float(out.total_bits.sum()) if comp else None
        pred = spec.activate(pred.float()).cpu()
        metric.update(pred, target)
        score = None
        if per_image:
            alone = make_metric(task, dataset=model.dataset, **options)
            alone.update(pred, target)
            score = alone.compute()
        records.append(ImageRecord(i, int(H), int(W), nbytes, est, score, header))
        if progress is not None:
            progress(len(records), n)
    pixels = sum(r.height * r.width for r in records) or 1
    bpp = sum(8 * r.bytes for r in records) / pixels if real else None
    payload = sum(8 * r.payload_bytes for r in records) / pixels if real else None
    bpp_est = sum(r.bits_estimated for r in records) / pixels if comp else None
    value = metric.compute() if records else float("nan")
    return EvalResult(task, spec.metric, value, bpp, bpp_est, len(records), spec.higher_is_better,
                      records=records, cancelled=len(records) < n, bpp_payload=payload,
                      rate=rate)


def evaluate_rates(model, dataset, task: str | None = None, *, rates=None,
                   **kwargs) -> list[EvalResult]:
    """``evaluate`` at every rate of ``sweep_rates(model, rates)``, lowest rate first: a
    variable-rate model's whole curve, or a per-lambda model's one point. ``kwargs`` go to
    ``evaluate``; a ``cancel`` that is set stops the sweep after the current rate."""
    out = []
    for r in sweep_rates(model, rates):
        out.append(evaluate(model, dataset, task, rate=r, **kwargs))
        if out[-1].cancelled:
            break
    return out


