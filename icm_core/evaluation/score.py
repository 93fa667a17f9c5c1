"""Scoring decoded images: a classical codec's rate and decoded images at one (quality, scale),
and what an uncompressed model makes of them, as ``evaluate`` computes its metric.

These are the "Codec + Baseline" measurements of ``icm compare``: rates are the real file bits
over the original pixels, times are measured per image, the sender's part (downscale, encode)
apart from the receiver's (decode, upscale).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from icm_core.baselines.classical import code_at_scale
from icm_core.data.images import pil_to_tensor
from icm_core.errors import ConfigError
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


def pseudo_label(task: str, activated: torch.Tensor) -> torch.Tensor:
    """What a metric takes as the label, made from a model's activated prediction (C, H, W):
    the likeliest class for class tasks, the 0/1 mask above 0.5 for binary ones, the values
    themselves for regression (depth, unit normals)."""
    kind = get_task(task).kind
    if kind == "classes":
        return activated.argmax(0, keepdim=True)
    if kind == "binary":
        return (activated > 0.5).float()
    return activated


@torch.no_grad()
def reference_targets(dataset, task: str, baseline=None) -> list[torch.Tensor]:
    """The labels every method of a comparison is scored against: the dataset's own, or,
    for images without labels (a folder of photos), the uncompressed ``baseline``'s
    predictions on the original images (fidelity to the uncompressed model, the usual ICM
    measure without labels)."""
    if getattr(dataset, "labelled", True):
        return [s[task] for s in dataset.samples]
    if baseline is None:
        raise ConfigError(f"task {task!r}: the images have no labels, so the uncompressed "
                          "baseline's predictions are the reference; give a --baseline run for it")
    spec = get_task(task)
    return [pseudo_label(task, spec.activate(baseline.predict(s["image"].unsqueeze(0),
                                                              task=task).prediction.float())[0].cpu())
            for s in dataset.samples]


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

    def __getattr__(self, name):  # chroma, version, encoder_command...: the codec's own
        return getattr(self.codec, name)


@dataclass
class CodedSet:
    """A set of images coded at one (quality, scale): rates over all original pixels, counted
    two ways (``file``: every byte stored; ``payload``: the coded bitstream without container
    or metadata, ``icm_core.baselines.payload``), the decoded images at the original size, the
    measured seconds per image of the sender and of the receiver, and how it was encoded."""

    bpp: float
    bpp_payload: float
    decoded: list[Image.Image]
    encode_seconds: list[float]
    decode_seconds: list[float]
    encoder_command: tuple[str, ...] = ()
    encoder_version: str = ""

    def rate(self, rate: str) -> float:
        return {"file": self.bpp, "payload": self.bpp_payload}[rate]


def code_images(codec, images: Sequence[Image.Image], quality: int, scale: float) -> CodedSet:
    """Code every image at (quality, scale) -> ``CodedSet`` (both rate counts, decoded images,
    sender and receiver seconds, the encoder's command and version)."""
    bits = payload = pixels = 0
    decoded, enc, dec = [], [], []
    point = None
    for im in images:
        timed = _Timed(codec)
        start = time.perf_counter()
        point = code_at_scale(timed, im, quality, scale)
        end = time.perf_counter()
        enc.append(timed.encoded_at - start)
        dec.append(end - timed.decoding_at)
        decoded.append(point.decoded)
        bits += 8 * len(point.data)
        payload += 8 * point.payload_bytes
        pixels += im.size[0] * im.size[1]
    if point is None:
        raise ConfigError("code_images needs at least one image")
    return CodedSet(bits / pixels, payload / pixels, decoded, enc, dec,
                    tuple(point.encoder_command), point.encoder_version)


__all__ = ["CodedSet", "score", "code_images", "pseudo_label", "reference_targets"]
