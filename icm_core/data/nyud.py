"""NYUD-v2 (795 train / 654 val images, 40 classes) in the two multi-task layouts in circulation.

============  =====================================  ======================================
task          NYUD_MT (MTL-PyTorch, ATRC)            NYUDv2 (as InvPT reads it)
============  =====================================  ======================================
image         images/ID.jpg                          images/ID.png
semseg        segmentation/ID.png                    segmentation/ID.png
depth         depth/ID.npy (metres, 0 = invalid)     depth/ID.npy (metres, 0 = invalid)
normals       normals/ID.npy (H, W, 3) in [-1, 1]    normals/ID.png, 2x/255 - 1
boundary      edge/ID.npy in {0, 1}                  edge/ID.png, /255
splits        gt_sets/train.txt, gt_sets/val.txt     gt_sets/train.txt, gt_sets/val.txt
============  =====================================  ======================================

In both, segmentation 0 (unlabelled) becomes the ignore label 255 and classes 1..40 become
0..39. Normals whose three values are all zero (in the PNG: black) are invalid; edges are
binarized at 0.5. The layout is detected from the files of the split (``layout``, logged) unless
``layout=`` names it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from icm_core.data.base import (
    FileDataset,
    Scan,
    binary,
    check_file,
    normals_from_png,
    npy_header,
    png_header,
    read_npy,
    read_png,
    read_split,
)
from icm_core.errors import DatasetError
from icm_core.tasks.registry import DATASET_TASKS, IGNORE_INDEX

NUM_CLASSES = 40
FOLDERS = {"semseg": "segmentation", "depth": "depth", "normals": "normals", "boundary": "edge"}
# per layout: task -> (file extension, what the file must be, header check)
LAYOUTS = {
    "NYUD_MT": {
        "image": (".jpg", "a JPEG image", partial(png_header, modes=None)),
        "semseg": (".png", "a grayscale PNG of classes 0 (unlabelled), 1..40", partial(
            png_header, modes=("L", "P", "I", "I;16"))),
        "depth": (".npy", "an (H, W) float array of metres, 0 = invalid", partial(
            npy_header, ndims=(2, 3))),
        "normals": (".npy", "an (H, W, 3) float array in [-1, 1]", partial(
            npy_header, ndims=(3,), channels=3)),
        "boundary": (".npy", "an (H, W) array of 0/1 edges", partial(npy_header, ndims=(2, 3))),
    },
    "NYUDv2": {
        "image": (".png", "a PNG image", partial(png_header, modes=None)),
        "semseg": (".png", "a grayscale PNG of classes 0 (unlabelled), 1..40", partial(
            png_header, modes=("L", "P", "I", "I;16"))),
        "depth": (".npy", "an (H, W) float array of metres, 0 = invalid", partial(
            npy_header, ndims=(2, 3))),
        "normals": (".png", "an RGB PNG of normals as (n + 1) * 255 / 2, black = invalid",
                    partial(png_header, modes=("RGB", "RGBA"))),
        "boundary": (".png", "a grayscale PNG of edges, 255 = edge", partial(
            png_header, modes=("L", "P", "1", "RGB"))),
    },
}


def detect_layout(root: Path, ids: list[str]) -> str:
    """NYUD_MT or NYUDv2: the layout whose image and label files the split's ids match best."""
    probe = ids[:50]
    hits = {}
    for name, spec in LAYOUTS.items():
        n = sum((root / "images" / f"{i}{spec['image'][0]}").is_file() for i in probe)
        n += sum((root / FOLDERS[t] / f"{i}{spec[t][0]}").is_file()
                 for t in ("normals", "boundary") for i in probe)
        hits[name] = n
    if not ids:  # no ids: look at any image file
        jpg = any((root / "images").glob("*.jpg"))
        return "NYUD_MT" if jpg else "NYUDv2"
    return max(hits, key=hits.get)  # ties: NYUD_MT, the first


def semseg_from_png(a: np.ndarray) -> torch.Tensor:
    """NYUD classes 0 (unlabelled) .. 40 -> 0 = ignore (255), c -> c - 1."""
    if a.ndim == 3:
        a = a[..., 0]
    s = a.astype(np.int64)
    s = np.where(s == 0, IGNORE_INDEX, s - 1)
    s[(s < 0) | (s >= NUM_CLASSES)] = IGNORE_INDEX  # out-of-range codes count as unlabelled
    return torch.from_numpy(s)


class NYUD(FileDataset):
    __doc__ = __doc__
    dataset_name = "nyud"
    label_space = "nyud"
    all_tasks = DATASET_TASKS["nyud"]

    @classmethod
    def scan(cls, root: Path, split: str, tasks, layout: str = "auto") -> Scan:
        root = Path(root)
        probe = Scan(root, split, layout)
        ids = read_split(probe, root / "gt_sets" / f"{split}.txt", split)
        if layout == "auto":
            layout = detect_layout(root, ids)
        elif layout not in LAYOUTS:
            raise DatasetError(f"data.layout={layout!r}; choose auto or one of {list(LAYOUTS)}")
        scan = Scan(root, split, layout, ids=ids, problems=probe.problems, notes=probe.notes)
        spec = LAYOUTS[layout]
        for id_ in ids:
            ext, expected, header = spec["image"]
            check_file(scan, "image", id_, root / "images" / f"{id_}{ext}", expected, header)
            for t in tasks:
                ext, expected, header = spec[t]
                check_file(scan, t, id_, root / FOLDERS[t] / f"{id_}{ext}", expected, header)
        return scan

    def load(self, id_: str, task: str, path: Path, shape) -> torch.Tensor:
        if task == "semseg":
            return semseg_from_png(read_png(path, task))
        if task == "depth":
            d = read_npy(path, task).astype(np.float32)
            d = d[..., 0] if d.ndim == 3 else d
            d[~np.isfinite(d) | (d < 0)] = 0.0
            return torch.from_numpy(d)[None]
        if task == "normals":
            if self.layout == "NYUDv2":
                return normals_from_png(read_png(path, task))
            n = read_npy(path, task).astype(np.float32)
            n[~np.isfinite(n)] = 0.0
            return torch.from_numpy(np.ascontiguousarray(n.transpose(2, 0, 1)))
        if task == "boundary":
            a = read_png(path, task) if self.layout == "NYUDv2" else read_npy(path, task)
            return binary(a)
        raise DatasetError(f"NYUD-v2 has no {task!r} labels; its tasks are {list(self.all_tasks)}")
