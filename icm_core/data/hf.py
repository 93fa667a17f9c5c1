"""Hugging Face ``datasets`` views of the workbench's datasets (same sample keys)."""

from __future__ import annotations

import datasets as hfd
import numpy as np

from icm_core.data.synthetic import SyntheticScenes

_DTYPES = {"image": "float32", "semseg": "int64", "human_parts": "int64", "depth": "float32",
           "normals": "float32", "boundary": "float32", "saliency": "float32"}


def to_hf_dataset(n: int, seed: int = 0, *, split: str = "train", size=(128, 128),
                  tasks=None) -> hfd.Dataset:
    """``n`` synthetic scenes as a ``datasets.Dataset`` in torch format.

    Rows hold the same keys and shapes as ``SyntheticScenes`` samples; ``meta`` becomes the
    ``id`` column.
    """
    ds = SyntheticScenes(split=split, size=size, tasks=tasks, seed=seed, length=n)
    samples = [ds[i] for i in range(n)]
    keys = ["image", *ds.tasks]
    features = {}
    for k in keys:
        shape = tuple(samples[0][k].shape)
        array_type = hfd.Array2D if len(shape) == 2 else hfd.Array3D
        features[k] = array_type(shape=shape, dtype=_DTYPES[k])
    features["id"] = hfd.Value("string")
    columns = {k: [np.asarray(s[k]) for s in samples] for k in keys}
    columns["id"] = [s["meta"]["id"] for s in samples]
    return hfd.Dataset.from_dict(columns, features=hfd.Features(features)).with_format("torch")
