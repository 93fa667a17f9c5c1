"""Rate-accuracy evaluation at real bitstream sizes, BD-rate, CompressAI-style result files.

Rates are the bytes of the streams ``ICMModel.encode`` writes (container header included),
per image, over its own pixels. Accuracy is computed on what ``decode`` returns from those
bytes, so every reported point is something a receiver really gets.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

import torch

from icm_core.io import write_text
from icm_core.metrics import make_metric
from icm_core.tasks import get_task


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


@torch.no_grad()
def evaluate(model, dataset, task: str | None = None, *, max_images: int | None = None,
             real_bitstreams: bool = True, device: str = "cpu") -> EvalResult:
    """Score ``task`` on ``dataset``; with compression, through real encode -> bytes -> decode."""
    task = get_task(task or model.task).name
    spec = get_task(task)
    previous = model.task
    model.set_task(task)
    was_training = model.training
    model.eval()
    metric = make_metric(task, dataset=model.dataset)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    bits_real = bits_est = 0.0
    pixels = 0
    try:
        for i in range(n):
            sample = dataset[i]
            image = sample["image"].unsqueeze(0).to(device)
            target = sample[task].unsqueeze(0)
            H, W = image.shape[-2:]
            out = model(image)
            pred = out.prediction
            if model.compression:
                bits_est += float(out.total_bits.sum())
                if real_bitstreams:
                    data = model.encode(image)
                    bits_real += 8 * len(data)
                    pred = model.decode(data).prediction
            metric.update(spec.activate(pred.float()).cpu(), target)
            pixels += H * W
    finally:
        model.train(was_training)
        model.set_task(previous)
    comp = model.compression
    return EvalResult(task, spec.metric, metric.compute(),
                      bits_real / pixels if comp and real_bitstreams else None,
                      bits_est / pixels if comp else None, n, spec.higher_is_better)


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


def bd_rate(anchor: tuple[list, list], test: tuple[list, list], higher_is_better: bool = True) -> float:
    """Bjontegaard delta rate in percent (negative: ``test`` needs fewer bits), Akima interpolation.

    ``anchor`` and ``test`` are (bpp list, metric list). RMSE and mErr (lower is better) are
    negated so the curves increase, as the bjontegaard package expects.
    """
    import bjontegaard as bd

    sign = 1.0 if higher_is_better else -1.0
    return float(bd.bd_rate(anchor[0], [sign * v for v in anchor[1]], test[0], [sign * v for v in test[1]],
                            method="akima"))
