"""Hugging Face ``datasets``: any dataset as a workbench dataset (``data=hf``), and the synthetic
scenes as a ``datasets.Dataset``.

``HFDataset`` reads a dataset saved with ``save_to_disk``, a parquet file or folder, an image
folder (``imagefolder``), or a hub id (online only), and maps columns to sample keys
(``data.columns={image: img, semseg: label}``; by default columns named like the keys). Values
are taken in the sample-dict convention (``synthetic.sample_from_arrays``): class maps as stored
(255 = ignore); depth in metres (0 = invalid); normals as floats in [-1, 1], or 8-bit images
read as 2x/255 - 1 (black = invalid); boundary and saliency binarized at 0.5 (8-bit: of 255).
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets as hfd
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from icm_core.data.base import SPLIT_NAMES, binary, normals_from_png
from icm_core.data.synthetic import SyntheticScenes
from icm_core.data.transforms import EvalTransform, TrainTransform, sample_generator
from icm_core.errors import DatasetError
from icm_core.tasks.registry import DATASET_TASKS, get_task

log = logging.getLogger("icm.data")
_DTYPES = {"image": "float32", "semseg": "int64", "human_parts": "int64", "depth": "float32",
           "normals": "float32", "boundary": "float32", "saliency": "float32"}
SPLIT_COLUMNS = {"train": ("train",), "val": ("validation", "val", "test"),
                 "test": ("test", "validation", "val")}


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


def load_any(root: str):
    """A ``Dataset`` or ``DatasetDict`` from a saved folder, parquet, an image folder or the hub."""
    p = Path(root).expanduser()
    try:
        if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
            return hfd.load_from_disk(str(p))
        if p.is_file() and p.suffix == ".parquet":
            return hfd.load_dataset("parquet", data_files=str(p))
        if p.is_dir() and any(p.rglob("*.parquet")):
            return hfd.load_dataset("parquet", data_dir=str(p))
        if p.is_dir():
            return hfd.load_dataset("imagefolder", data_dir=str(p))
        if p.exists():
            raise DatasetError(f"data='hf': data.root={root!r} is neither a saved dataset folder, "
                               "a .parquet file nor a folder of parquet files or images")
        return hfd.load_dataset(root)  # a hub id
    except DatasetError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, ConnectionError, ...)
        raise DatasetError(f"data='hf': cannot load data.root={root!r} ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); give a save_to_disk "
                           "folder, parquet, an image folder, or a hub id when online") from e


def pick_split(data, split: str, root: str):
    """The split of a ``DatasetDict`` (val: validation, val or test); a lone Dataset or split
    serves every split (with a warning: train and val are then the same rows)."""
    if isinstance(data, hfd.Dataset):
        log.warning("hf dataset %s has no splits: split %s is the whole dataset", root, split)
        return data
    for name in SPLIT_COLUMNS.get(split, (split,)):
        if name in data:
            return data[name]
    if len(data) == 1:  # e.g. one parquet file: its one split serves all
        (only,) = data
        log.warning("hf dataset %s has only the %s split: split %s uses it", root, only, split)
        return data[only]
    raise DatasetError(f"data='hf' at {root}: no {split} split; it has {list(data)}. Name a "
                       f"split {' or '.join(SPLIT_COLUMNS.get(split, (split,)))}")


def _array(value, where: str) -> np.ndarray:
    if isinstance(value, Image.Image):
        return np.asarray(value)
    if isinstance(value, torch.Tensor):
        return value.numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{where}: cannot read {type(value).__name__} as an array ({e})") from e


def _hwc(a: np.ndarray, channels: int) -> np.ndarray:
    """(C, H, W) -> (H, W, C) when the first axis is the channels and the last is not."""
    if a.ndim == 3 and a.shape[0] == channels and a.shape[-1] != channels:
        return a.transpose(1, 2, 0)
    return a


def image_from(value, where: str) -> torch.Tensor:
    if isinstance(value, Image.Image):
        value = value.convert("RGB")
    a = _array(value, where)
    a = _hwc(a, 3) if a.ndim == 3 else a
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise DatasetError(f"{where}: image of shape {a.shape}; expected (H, W, 3) or (3, H, W)")
    a = a[..., :3]
    if a.dtype == np.uint8:
        x = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        x = a.astype(np.float32) / 65535.0
    else:
        x = a.astype(np.float32)
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise DatasetError(f"{where}: float pixels in {x.min()}..{x.max()}; expected [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def label_from(task: str, value, where: str) -> torch.Tensor:
    a = _array(value, where)
    if task in ("semseg", "human_parts"):
        a = a[..., 0] if a.ndim == 3 and a.shape[-1] in (3, 4) else a.squeeze()
        if a.ndim != 2:
            raise DatasetError(f"{where}: class map of shape {a.shape}; expected (H, W)")
        return torch.from_numpy(a.astype(np.int64))
    if task == "depth":
        d = a.astype(np.float32).squeeze()
        if d.ndim != 2:
            raise DatasetError(f"{where}: depth of shape {a.shape}; expected (H, W)")
        d[~np.isfinite(d) | (d < 0)] = 0.0
        return torch.from_numpy(d)[None]
    if task == "normals":
        a = _hwc(a, 3)
        if a.ndim != 3 or a.shape[-1] not in (3, 4):
            raise DatasetError(f"{where}: normals of shape {a.shape}; expected (H, W, 3)")
        if np.issubdtype(a.dtype, np.integer):
            return normals_from_png(a)
        n = a[..., :3].astype(np.float32)
        n[~np.isfinite(n)] = 0.0
        return torch.from_numpy(np.ascontiguousarray(n.transpose(2, 0, 1)))
    a = a.squeeze()
    if a.ndim != 2:
        raise DatasetError(f"{where}: {task} map of shape {a.shape}; expected (H, W)")
    return binary(a)


class HFDataset(Dataset):
    """A Hugging Face dataset as workbench samples.

    Args:
        root: see ``load_any``; or ``data``: an already loaded ``Dataset``/``DatasetDict``.
        split: train, val (validation/val/test) or test.
        tasks: tasks to read (default: those with a column).
        columns: sample key -> column name (default: columns named like the keys).
        labels: whose label conventions the tasks follow (nyud, pascal, synthetic).
        size, augment, seed: as the real datasets (InvPT's augmentation on train).
    """

    dataset_name = "hf"
    augments = True
    layout = "hf"

    def __init__(self, root: str = "", split: str = "train", tasks=None, *, columns=None,
                 labels: str = "nyud", size=(256, 256), augment: bool = True, seed: int = 0,
                 data=None):
        if data is None:
            if not str(root):
                raise DatasetError("data='hf': data.root is not set; give a save_to_disk folder, "
                                   "a parquet file or folder, an image folder or a hub id")
            data = load_any(str(root))
        if split not in SPLIT_NAMES:
            raise DatasetError(f"split={split!r}; use one of {list(SPLIT_NAMES)}")
        self.root, self.split, self.label_space = str(root), split, labels
        self.data = pick_split(data, split, self.root)
        names = list(self.data.column_names)
        cols = {("boundary" if k == "edge" else k): v for k, v in dict(columns or {}).items()}
        own = DATASET_TASKS[labels]
        for key in cols:
            if key != "image" and get_task(key).name not in own:
                raise DatasetError(f"data.columns: {key!r} is not a task of data.labels={labels!r}; "
                                   f"use image or {list(own)}")
        cols = {k if k == "image" else get_task(k).name: v for k, v in cols.items()}
        cols.setdefault("image", "image")
        for t in own:
            if t not in cols and t in names:
                cols[t] = t
        if tasks is None:
            tasks = [t for t in own if t in cols]
        self.tasks = tuple(get_task(t).name for t in tasks)
        self.tasks_available = self.tasks
        wanted = {"image": cols["image"], **{t: cols.get(t, t) for t in self.tasks}}
        absent = {k: c for k, c in wanted.items() if c not in names}
        if absent:
            raise DatasetError(f"data='hf' at {self.root} (split {split}): no column "
                               + ", ".join(f"{c!r} for {k}" for k, c in absent.items())
                               + f"; its columns are {names}. Map them with data.columns="
                               "{image: COLUMN, TASK: COLUMN}")
        self.columns = wanted
        if len(self.data) == 0:
            raise DatasetError(f"data='hf' at {self.root}: split {split} has no rows")
        self.transform = (TrainTransform(size) if augment and split == "train"
                          else EvalTransform(size))
        self.seed = int(seed)
        log.info("hf: %s split %s: %d rows, columns %s", self.root, split, len(self.data), wanted)

    def __len__(self) -> int:
        return len(self.data)

    def raw(self, index: int) -> dict:
        row = self.data[int(index)]
        where = f"{self.root} row {index}"
        image = image_from(row[self.columns["image"]], f"{where} column {self.columns['image']!r}")
        sample = {"image": image}
        for t in self.tasks:
            c = self.columns[t]
            label = label_from(t, row[c], f"{where} column {c!r} ({t})")
            if tuple(label.shape[-2:]) != tuple(image.shape[-2:]):
                raise DatasetError(f"{where} column {c!r} ({t}): {tuple(label.shape[-2:])} px, the "
                                   f"image {tuple(image.shape[-2:])}; expected the same size")
            sample[t] = label
        rid = row.get("id", index)
        sample["meta"] = {"id": str(rid), "dataset": "hf"}
        return sample

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if not 0 <= index < len(self.data):
            raise IndexError(f"row {index} out of range [0, {len(self.data)})")
        sample = self.raw(index)
        if isinstance(self.transform, TrainTransform):
            return self.transform(sample, sample_generator(self.seed, index, epoch))
        return self.transform(sample)
