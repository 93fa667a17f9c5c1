"""Datasets: every one returns the same sample dict (see ``synthetic.sample_from_arrays``)."""

from __future__ import annotations

from icm_core.data.synthetic import SyntheticScenes
from icm_core.errors import DatasetError


def make_dataset(cfg, split: str, tasks):
    """The dataset a ``DataConfig`` names, for ``split`` (train/val) and ``tasks``."""
    if cfg.name == "synthetic":
        length = cfg.train_length if split == "train" else cfg.val_length
        return SyntheticScenes(split=split, size=tuple(cfg.size), tasks=tasks, seed=cfg.seed, length=length)
    raise DatasetError(f"data={cfg.name!r}: loaders for real datasets are not in this version yet; "
                       "use data=synthetic")


__all__ = ["SyntheticScenes", "make_dataset"]
