"""The held-out scenes every method of a comparison is scored on (``icm compare``).

``SyntheticScenes(split="test")`` draws scene seeds no training split uses; the first ``n`` are
rendered once and kept, with their 8-bit images (what a classical codec codes).
"""

from __future__ import annotations

import torch
from PIL import Image

from icm_core.data.images import tensor_to_pil
from icm_core.data.synthetic import SyntheticScenes
from icm_core.errors import ConfigError


class HeldOut(torch.utils.data.Dataset):
    """The first ``n`` scenes of the ``test`` split at ``size``, rendered once and kept."""

    def __init__(self, n: int, size: int | tuple[int, int], tasks):
        if int(n) < 1:
            raise ConfigError(f"images={n!r}: compare on at least 1 image")
        hw = (size, size) if isinstance(size, int) else tuple(size)
        ds = SyntheticScenes("test", size=hw, tasks=list(tasks), length=int(n))
        self.size, self.samples = hw, [ds[i] for i in range(int(n))]
        self.images: list[Image.Image] = [tensor_to_pil(s["image"]) for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]

    @property
    def pixels(self) -> int:
        return sum(im.size[0] * im.size[1] for im in self.images)


__all__ = ["HeldOut"]
