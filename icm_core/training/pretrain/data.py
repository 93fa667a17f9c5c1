"""The pretraining scenes: a pool rendered once from the synthetic ``pretrain`` split, whose
scene seeds no downstream split renders (``check_disjoint``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from icm_core.data.synthetic import SPLIT_SIZE, SPLITS, SyntheticScenes
from icm_core.errors import ConfigError
from icm_core.files import atomic_path

log = logging.getLogger("icm.pretrain")


def check_disjoint(dataset) -> tuple[int, int]:
    """Refuse scenes that a downstream split could render; -> (first, last) scene seed.

    The synthetic layout gives split ``SPLITS[k]`` the seed blocks ``b`` with
    ``b % len(SPLITS) == k`` (block = scene_seed // SPLIT_SIZE). The pretraining scenes must
    all lie in one block owned by ``pretrain``: no train/val/test dataset, whatever its seed,
    renders one of them.
    """
    if not isinstance(dataset, SyntheticScenes) or "pretrain" not in SPLITS:
        raise ConfigError(f"pretraining data {type(dataset).__name__} has no scene-seed range "
                          "disjoint from the downstream splits; use SyntheticScenes(split='pretrain')")
    first, last = dataset.scene_seed(0), dataset.scene_seed(len(dataset) - 1)
    blocks = {first // SPLIT_SIZE, last // SPLIT_SIZE}
    owners = {SPLITS[b % len(SPLITS)] for b in blocks}
    if dataset.split != "pretrain" or owners != {"pretrain"} or len(blocks) != 1:
        raise ConfigError(f"scenes {first}..{last} (split {dataset.split!r}, seed {dataset.seed}) "
                          f"lie in seed blocks of {sorted(owners)}: they overlap the downstream "
                          "splits; pretrain on split='pretrain' only")
    return first, last


class _Images(torch.utils.data.Dataset):
    """Scene ``i`` as a uint8 (3, H, W) image: the pool keeps 4x less memory than float."""

    def __init__(self, scenes: SyntheticScenes):
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> torch.Tensor:
        return (self.scenes[i]["image"] * 255).round().clamp(0, 255).to(torch.uint8)


def render_pool(scenes: SyntheticScenes, workers: int = 0, cache: Path | None = None,
                progress: bool = True) -> torch.Tensor:
    """Every scene of ``scenes`` rendered once -> uint8 (N, 3, H, W), cached in ``cache``.

    A cache file is used only when its shape is exactly this pool's (its name holds the
    seed and size); it holds no pickle (``allow_pickle=False``).
    """
    shape = (len(scenes), 3, *scenes.size)
    if cache is not None and cache.is_file():
        try:
            arr = np.load(cache, allow_pickle=False)
            if arr.shape == shape and arr.dtype == np.uint8:
                return torch.from_numpy(arr)
        except (OSError, ValueError) as e:
            log.warning("scene cache %s unreadable (%s): rendering again", cache, e)
    loader = torch.utils.data.DataLoader(_Images(scenes), batch_size=None, num_workers=workers)
    pool = torch.empty(shape, dtype=torch.uint8)
    for i, img in enumerate(tqdm(loader, total=len(scenes), desc="rendering scenes",
                                 disable=not progress, dynamic_ncols=True)):
        pool[i] = img
    if cache is not None:
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.save(f, pool.numpy(), allow_pickle=False)
    return pool


__all__ = ["check_disjoint", "render_pool"]
