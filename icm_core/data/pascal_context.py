"""PASCAL-Context in the PASCAL_MT layout (MTL-PyTorch, ATRC, InvPT): 4998 train / 5105 val.

=============  =========================================================================
image          JPEGImages/ID.jpg; splits ImageSets/Context/{train,val}.txt
semseg         semseg/VOC12/ID.png, else semseg/pascal-context/ID.png: 21 classes, 255 ignore
human_parts    human_parts/ID.mat (PASCAL-Part ``anno``): the person objects' parts grouped
               into 6 parts + background (7 classes); images without a person with parts
               are all ignore (255). ImageSets/Parts/{split}.txt (a JSON {id: [object
               classes]}), when present, says which images have people
saliency       sal_distill/ID.png / 255 above 0.5
normals        normals_distill/ID.png as 2x/255 - 1, kept only on pixels whose PASCAL-Context
               class also exists in NYUD-v2 (``NORMALS_CLASSES``); elsewhere 0 (invalid)
boundary       pascal-context/trainval/ID.mat ``LabelMap``: pixels where the 4-neighbour
               Laplacian of the class map is non-zero, thinned to one pixel
=============  =========================================================================

Training crops and evaluation are 512x512 (``conf/data/pascal.yaml``).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import scipy.io as sio
import torch
from scipy import ndimage
from skimage.morphology import thin

from icm_core.data.base import (
    FileDataset,
    Problem,
    Scan,
    binary,
    check_file,
    normals_from_png,
    png_header,
    read_png,
    read_split,
)
from icm_core.errors import DatasetError
from icm_core.tasks.registry import DATASET_TASKS, IGNORE_INDEX

PERSON = 15  # the PASCAL VOC class of people (the object class in PASCAL-Part annotations)
# the 6-part grouping of PASCAL-Part person parts used by the multi-task literature
PART_GROUPS = {
    1: ("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "mouth", "nose"),
    2: ("neck", "torso"),
    3: ("luarm", "ruarm"),
    4: ("llarm", "rlarm", "lhand", "rhand"),
    5: ("luleg", "ruleg"),
    6: ("llleg", "rlleg", "lfoot", "rfoot"),
}
PART_OF = {name: group for group, names in PART_GROUPS.items() for name in names}
NUM_PARTS = 7
# PASCAL-Context (459-class LabelMap) ids of the classes whose names also are NYUD-v2 classes
# (MTL-PyTorch's db_info name lists, intersected, 'unknown' left out), plus tvmonitor (427):
# the pixels where the distilled normals are trusted
NORMALS_CLASSES = frozenset((
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49,
    50, 51, 53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101,
    104, 105, 107, 111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165,
    172, 174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219, 220, 223, 225, 228,
    230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269, 272, 273, 275,
    281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309, 310, 314, 315, 319,
    323, 329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380,
    383, 384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430,
    432, 440, 441, 442, 443, 444, 446, 454, 457))
LABELMAP = "pascal-context/trainval"
EXPECTED = {
    "image": "a JPEG image",
    "semseg": "a PNG of classes 0..20 (255 = ignore) in semseg/VOC12 or semseg/pascal-context",
    "human_parts": "a PASCAL-Part .mat with an 'anno' struct",
    "saliency": "a grayscale PNG, 255 = salient",
    "normals": "an RGB PNG of normals as (n + 1) * 255 / 2",
    "labelmap": "a .mat with the 'LabelMap' of PASCAL-Context classes",
}


def mat_header(path: Path, key: str) -> str | None:
    try:
        names = [n for n, _shape, _cls in sio.whosmat(path)]
    except (OSError, ValueError, TypeError) as e:
        return f"not a readable .mat file ({e})"
    return None if key in names else f"variables {names}, no {key!r}"


def load_mat(path: Path, key: str, task: str):
    try:
        return sio.loadmat(path)[key]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise DatasetError(f"{path} ({task}): expected {EXPECTED.get(task, 'a .mat file')} "
                           f"({e})") from e


def boundary_from_labelmap(labels: np.ndarray) -> torch.Tensor:
    """Edges where the 4-neighbour Laplacian of the class map is non-zero (borders mirrored),
    thinned to one pixel: float (1, H, W) in {0, 1}."""
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
    lap = ndimage.convolve(labels.astype(np.float64), kernel, mode="mirror")
    return torch.from_numpy(thin(lap != 0).astype(np.float32))[None]


def parts_from_anno(anno) -> np.ndarray | None:
    """PASCAL-Part ``anno`` -> (H, W) int64 parts 0..6 of every person with parts (None: no such
    person). Person pixels no part covers stay 0 (background), as in the literature."""
    objects = anno[0][0][1][0]
    target = None
    for obj in objects:
        parts = obj[3]
        if int(np.asarray(obj[1]).ravel()[0]) != PERSON or parts.size == 0:
            continue
        if target is None:
            target = np.zeros(np.asarray(obj[2]).shape, np.int64)
        for part in parts[0]:
            name = str(np.asarray(part[0]).ravel()[0])
            if name not in PART_OF:
                raise DatasetError(f"unknown person part {name!r}; expected one of "
                                   f"{sorted(PART_OF)}")
            target[np.asarray(part[1]).astype(bool)] = PART_OF[name]
    return target


class PASCALContext(FileDataset):
    __doc__ = __doc__
    dataset_name = "pascal"
    label_space = "pascal"
    all_tasks = DATASET_TASKS["pascal"]

    @classmethod
    def scan(cls, root: Path, split: str, tasks, layout: str = "auto") -> Scan:
        root = Path(root)
        scan = Scan(root, split, "PASCAL_MT")
        scan.ids = read_split(scan, root / "ImageSets" / "Context" / f"{split}.txt", split)
        people = cls._parts_list(scan, root, split) if "human_parts" in tasks else None
        png = partial(png_header, modes=None)
        for id_ in scan.ids:
            check_file(scan, "image", id_, root / "JPEGImages" / f"{id_}.jpg", EXPECTED["image"],
                       png)
            if "semseg" in tasks:
                voc = root / "semseg" / "VOC12" / f"{id_}.png"
                ctx = root / "semseg" / "pascal-context" / f"{id_}.png"
                check_file(scan, "semseg", id_, voc if voc.is_file() else ctx, EXPECTED["semseg"],
                           partial(png_header, modes=("L", "P")))
            if "saliency" in tasks:
                check_file(scan, "saliency", id_, root / "sal_distill" / f"{id_}.png",
                           EXPECTED["saliency"], png)
            if "human_parts" in tasks:
                if people is not None and id_ not in people:  # listed without people: no file needed
                    scan.files.setdefault("human_parts", {})[id_] = None
                else:
                    check_file(scan, "human_parts", id_, root / "human_parts" / f"{id_}.mat",
                               EXPECTED["human_parts"], partial(mat_header, key="anno"))
            needs_map = [t for t in ("normals", "boundary") if t in tasks]
            if needs_map:
                lm = root / LABELMAP / f"{id_}.mat"
                ok = lm.is_file() and mat_header(lm, "LabelMap") is None
                if not ok:
                    kind = "malformed" if lm.is_file() else "missing"
                    scan.problems.extend(Problem(scan.rel(lm), t, EXPECTED["labelmap"], kind)
                                         for t in needs_map)
                if "boundary" in tasks and ok:
                    scan.files.setdefault("boundary", {})[id_] = lm
                if "normals" in tasks and ok:
                    check_file(scan, "normals", id_, root / "normals_distill" / f"{id_}.png",
                               EXPECTED["normals"], partial(png_header, modes=("RGB", "RGBA")))
        return scan

    @staticmethod
    def _parts_list(scan: Scan, root: Path, split: str) -> set[str] | None:
        """Ids of images with a person, from ImageSets/Parts/{split}.txt (None: no such file)."""
        path = root / "ImageSets" / "Parts" / f"{split}.txt"
        if not path.is_file():
            scan.notes.append(f"{scan.rel(path)} not found: people are found in each .mat")
            return None
        try:
            table = json.loads(path.read_text())
            return {str(k) for k, classes in table.items() if PERSON in [int(c) for c in classes]}
        except (ValueError, TypeError, AttributeError) as e:
            scan.malformed("human_parts", path, f"a JSON object {{image id: [object classes]}} ({e})")
            return None

    def raw(self, index: int) -> dict:
        self._labelmap = None  # normals and boundary read the same .mat once per sample
        return super().raw(index)

    def _labels(self, path: Path) -> np.ndarray:
        if self._labelmap is None:
            self._labelmap = np.asarray(load_mat(path, "LabelMap", "boundary"))
        return self._labelmap

    def load(self, id_: str, task: str, path, shape) -> torch.Tensor:
        H, W = shape
        if task == "semseg":
            a = read_png(path, task)
            return torch.from_numpy((a[..., 0] if a.ndim == 3 else a).astype(np.int64))
        if task == "saliency":
            return binary(read_png(path, task))
        if task == "human_parts":
            target = None if path is None else parts_from_anno(load_mat(path, "anno", task))
            if target is None:  # no person with parts: nothing to learn here
                return torch.full((H, W), IGNORE_INDEX, dtype=torch.int64)
            return torch.from_numpy(target)
        if task == "boundary":
            return boundary_from_labelmap(self._labels(path))
        if task == "normals":
            n = normals_from_png(read_png(path, task))
            labels = self._labels(self.root / LABELMAP / f"{id_}.mat")
            if labels.shape != tuple(n.shape[-2:]):
                raise DatasetError(f"{path} (normals): {tuple(n.shape[-2:])} px but its LabelMap "
                                   f"is {labels.shape}; expected the same size")
            keep = torch.from_numpy(np.isin(labels, list(NORMALS_CLASSES)))
            return n * keep
        raise DatasetError(f"PASCAL-Context has no {task!r} labels; its tasks are "
                           f"{list(self.all_tasks)}")
