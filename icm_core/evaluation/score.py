"""Scoring decoded images: a classical codec's rate and decoded images at one (quality, scale),
and what an uncompressed model makes of them, as ``evaluate`` computes its metric.

These are the "Codec + Baseline" measurements of ``icm compare``: rates are the real file bits
over the original pixels, times are measured per image, the sender's part (downscale, encode)
apart from the receiver's (decode, upscale).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from PIL import Image

from icm_core.baselines.classical import code_at_scale
from icm_core.data.images import pil_to_tensor
from icm_core.tasks.metrics import make_metric
from icm_core.tasks.registry import get_task


@torch.no_grad()
def score(model, task: str, images: Sequence, targets: Sequence[torch.Tensor],
          metric_options: dict | None = None) -> tuple[float, list[float]]:
    """Dataset-level metric of an uncompressed model on ``images`` (PIL or (3, H, W) tensors),
    as ``evaluate`` computes it, and the measured seconds of each forward."""
    metric = make_metric(task, dataset=model.dataset, **(metric_options or {}))
    spec, times = get_task(task), []
    for x, t in zip(images, targets, strict=True):
        x = pil_to_tensor(x) if isinstance(x, Image.Image) else x
        start = time.perf_counter()
        pred = model.predict(x.unsqueeze(0), task=task).prediction
        times.append(time.perf_counter() - start)
        metric.update(spec.activate(pred.float()).cpu(), t.unsqueeze(0))
    return float(metric.compute()), times


class _Timed:
    """A codec that notes when its encode call ends and its decode call starts, so that the
    time of ``code_at_scale`` splits exactly into the sender's part (downscale, encode) and
    the receiver's (decode, upscale)."""

    def __init__(self, codec):
        self.codec, self.name, self.qualities = codec, codec.name, codec.qualities
        self.encoded_at = self.decoding_at = 0.0

    def encode(self, image, quality):
        data = self.codec.encode(image, quality)
        self.encoded_at = time.perf_counter()
        return data

    def decode(self, data):
        self.decoding_at = time.perf_counter()
        return self.codec.decode(data)


def code_images(codec, images: Sequence[Image.Image], quality: int, scale: float
                ) -> tuple[float, list[Image.Image], list[float], list[float]]:
    """Code every image at (quality, scale): (bpp = all file bits / all original pixels,
    decoded images at the original size, measured seconds per image of the sender (downscale +
    encode) and of the receiver (decode + upscale))."""
    bits = pixels = 0
    decoded, enc, dec = [], [], []
    for im in images:
        timed = _Timed(codec)
        start = time.perf_counter()
        point = code_at_scale(timed, im, quality, scale)
        end = time.perf_counter()
        enc.append(timed.encoded_at - start)
        dec.append(end - timed.decoding_at)
        decoded.append(point.decoded)
        bits += 8 * len(point.data)
        pixels += im.size[0] * im.size[1]
    return bits / pixels, decoded, enc, dec


__all__ = ["score", "code_images"]
