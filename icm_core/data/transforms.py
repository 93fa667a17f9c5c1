"""Shared transforms of real datasets: InvPT's training augmentation and evaluation padding.

Samples are the dict every dataset returns (``synthetic.sample_from_arrays``): ``image`` float
(3, H, W) in [0, 1] and label tensors. Images stay in [0, 1] here: the backbone normalizes them
with its pretrained mean and std (``models.backbone.Backbone.forward``), the one place that
happens. Labels are resized with nearest neighbours (their values stay exact) and padded with
the values no loss or metric counts (``FILL``): 255 for class and binary labels, 0 (invalid) for
depth and normals.

Augmentation draws from a ``torch.Generator`` per sample seeded by (seed, index, epoch), never
from the global RNG, so a sample's crop is the same in every worker and on resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from icm_core.tasks.registry import IGNORE_INDEX

FILL = {"image": 0.0, "semseg": IGNORE_INDEX, "human_parts": IGNORE_INDEX,
        "boundary": IGNORE_INDEX, "saliency": IGNORE_INDEX, "depth": 0.0, "normals": 0.0}
SCALES = (0.5, 2.0)  # InvPT's random scaling range (continuous)


def sample_generator(seed: int, index: int, epoch: int = 0) -> torch.Generator:
    """The generator of one sample's augmentation: a function of (seed, index, epoch) only."""
    state = np.random.SeedSequence([int(seed), int(index), int(epoch)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _coin(g: torch.Generator, p: float = 0.5) -> bool:
    return torch.rand((), generator=g).item() < p


def _keys(sample: dict) -> list[str]:
    return [k for k in sample if k in FILL]


def resize(sample: dict, size: Sequence[int]) -> dict:
    """Every image-like entry resized to ``size`` (H, W): bilinear for the image, nearest
    neighbours for labels."""
    out = dict(sample)
    size = (int(size[0]), int(size[1]))
    for k in _keys(sample):
        t = sample[k]
        if tuple(t.shape[-2:]) == size:
            continue
        x = t.float()[None] if t.dim() == 3 else t.float()[None, None]
        if k == "image":
            y = F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
        else:
            y = F.interpolate(x, size=size, mode="nearest")
        out[k] = (y[0] if t.dim() == 3 else y[0, 0]).to(t.dtype)
    return out


def pad_to(sample: dict, size: Sequence[int]) -> dict:
    """Pad bottom and right up to at least ``size`` with each entry's ignore value (``FILL``)."""
    H, W = sample["image"].shape[-2:]
    ph, pw = max(0, int(size[0]) - H), max(0, int(size[1]) - W)
    if not ph and not pw:
        return dict(sample)
    out = dict(sample)
    for k in _keys(sample):
        out[k] = F.pad(sample[k], (0, pw, 0, ph), value=FILL[k])
    return out


def crop(sample: dict, top: int, left: int, h: int, w: int) -> dict:
    out = dict(sample)
    for k in _keys(sample):
        out[k] = sample[k][..., top:top + h, left:left + w].contiguous()
    return out


def hflip(sample: dict) -> dict:
    """Mirror left-right; the normals' x component changes sign (invalid zeros stay zero)."""
    out = dict(sample)
    for k in _keys(sample):
        out[k] = sample[k].flip(-1)
    if "normals" in out:
        n = out["normals"].clone()
        n[0] = -n[0]
        out["normals"] = n
    return out


def photometric(image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """InvPT's photometric distortion on a [0, 1] image: brightness (+-32/255), contrast and
    saturation (x0.5-1.5), each with probability 1/2."""
    x = image
    if _coin(g):
        x = x + _uniform(g, -32 / 255, 32 / 255)
    if _coin(g):
        x = x * _uniform(g, 0.5, 1.5)
    if _coin(g):
        gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        x = gray + (x - gray) * _uniform(g, 0.5, 1.5)
    return x.clamp(0, 1)


class TrainTransform:
    """InvPT's training augmentation: random scale in ``scales``, photometric jitter, padding
    to ``size`` where smaller, a random ``size`` crop and a random horizontal flip."""

    def __init__(self, size: Sequence[int], scales: tuple[float, float] = SCALES, flip: bool = True,
                 jitter: bool = True):
        self.size = (int(size[0]), int(size[1]))
        self.scales, self.flip, self.jitter = scales, flip, jitter

    def __call__(self, sample: dict, g: torch.Generator) -> dict:
        H, W = sample["image"].shape[-2:]
        s = _uniform(g, *self.scales)
        sample = resize(sample, (max(1, round(H * s)), max(1, round(W * s))))
        if self.jitter:
            sample["image"] = photometric(sample["image"], g)
        sample = pad_to(sample, self.size)
        H, W = sample["image"].shape[-2:]
        h, w = self.size
        top = int(torch.randint(H - h + 1, (), generator=g))
        left = int(torch.randint(W - w + 1, (), generator=g))
        sample = crop(sample, top, left, h, w)
        if self.flip and _coin(g):
            sample = hflip(sample)
        return sample


class EvalTransform:
    """Evaluation at a fixed ``size`` (InvPT: 448x576 for NYUD-v2, 512x512 for PASCAL): an
    image larger than ``size`` is first scaled down to fit (aspect kept), then every entry is
    padded bottom/right with its ignore value. ``meta["valid"]`` = the (h, w) of real pixels."""

    def __init__(self, size: Sequence[int]):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, sample: dict) -> dict:
        H, W = sample["image"].shape[-2:]
        h, w = self.size
        if H > h or W > w:
            f = min(h / H, w / W)
            sample = resize(sample, (min(h, max(1, round(H * f))), min(w, max(1, round(W * f)))))
        valid = tuple(sample["image"].shape[-2:])
        sample = pad_to(sample, self.size)
        sample["meta"] = {**sample.get("meta", {}), "valid": valid}
        return sample
