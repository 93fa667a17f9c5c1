"""The held-out images every method of a comparison is scored on (``icm compare``).

Synthetic scenes by default: ``SyntheticScenes(split)`` with ``split`` ``test`` (report on it:
no training and no choice saw it) or ``val`` (make choices on it), and a ``seed`` (another
seed, other scenes). Or any registered dataset (``data=nyud``, ``pascal``, ``hf``, ``folder``):
its ``val`` images (the split the literature reports on; nyud and pascal have no other held-out
split) fitted and padded to ``size``. The first ``n`` are loaded once and kept, with their
8-bit images (what a classical codec codes).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from PIL import Image

from icm_core.data.images import tensor_to_pil
from icm_core.data.registry import get_dataset, make_dataset
from icm_core.data.synthetic import SyntheticScenes
from icm_core.errors import ConfigError

SPLITS = ("test", "val")


class HeldOut(torch.utils.data.Dataset):
    """The first ``n`` held-out images at ``size``, loaded once and kept.

    Args:
        n: how many images.
        size: side (or (H, W)) of the images.
        tasks: the tasks whose labels are kept.
        split: ``test`` or ``val`` (synthetic scenes; a real dataset gives its ``val``).
        seed: seed of the synthetic scenes (>= 0).
        data: a ``DataConfig`` of a registered dataset; None for the synthetic scenes.
    """

    def __init__(self, n: int, size: int | tuple[int, int], tasks, *, split: str = "test",
                 seed: int = 0, data=None):
        if int(n) < 1:
            raise ConfigError(f"images={n!r}: compare on at least 1 image")
        if split not in SPLITS:
            raise ConfigError(f"split={split!r}: choose test (to report) or val (to choose on)")
        hw = (size, size) if isinstance(size, int) else tuple(size)
        self.split, self.seed, self.size = split, int(seed), hw
        if data is None or data.name == "synthetic":
            ds = SyntheticScenes(split, size=hw, tasks=list(tasks), seed=int(seed), length=int(n))
            self.dataset, self.labelled, self.tasks = "synthetic", True, list(tasks)
        else:
            entry = get_dataset(data.name)
            cfg = replace(data, size=list(hw), augment=False, val_length=int(n))
            ds = make_dataset(cfg, "val", list(tasks) if entry.labelled else None)
            self.dataset, self.labelled = entry.name, bool(entry.labelled)
            self.tasks = list(tasks)
            if self.labelled:
                have = set(getattr(ds, "tasks_available", getattr(ds, "tasks", tasks)))
                missing = [t for t in tasks if t not in have]
                if missing:
                    raise ConfigError(f"data={data.name}: no {missing} labels at {data.root!r}; "
                                      "compare the tasks it has")
        count = min(int(n), len(ds))
        if count < 1:
            raise ConfigError(f"data={getattr(data, 'name', 'synthetic')}: no held-out images")
        self.samples = [ds[i] for i in range(count)]
        self.images: list[Image.Image] = [tensor_to_pil(s["image"]) for s in self.samples]

    def describe(self) -> str:
        """Which images, in words, for results files and logs."""
        h, w = self.size
        if self.dataset == "synthetic":
            return (f"{len(self)} held-out synthetic {self.split} scenes (seed {self.seed}) at "
                    f"{w}x{h}")
        what = "labelled" if self.labelled else "unlabelled (fidelity to the baseline)"
        return f"{len(self)} {what} {self.dataset} val images fitted to {w}x{h}"

    def with_targets(self, task: str, targets) -> _WithTargets:
        """The same images with ``task``'s labels replaced (the baseline's predictions on
        unlabelled images)."""
        return _WithTargets(self, task, list(targets))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]

    @property
    def pixels(self) -> int:
        return sum(im.size[0] * im.size[1] for im in self.images)


class _WithTargets(torch.utils.data.Dataset):
    def __init__(self, base: HeldOut, task: str, targets: list):
        self.base, self.task, self.targets = base, task, targets

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        return {**self.base[i], self.task: self.targets[i]}


__all__ = ["HeldOut", "SPLITS"]
