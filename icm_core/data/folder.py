"""A folder of your own photos, without labels (``data=folder data.root=DIR``).

Every image file under the folder (sorted by path) is a sample; each is fitted into
``data.size`` (scaled down where larger, aspect kept) and padded, as real datasets evaluate.
Samples hold the image only: ``labelled`` is False, ``tasks`` is empty, and comparisons score
*fidelity to the uncompressed model* (its predictions on the original photo are the reference),
the usual image-coding-for-machines measure when labels are missing. Such a folder cannot train
a model.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from icm_core.data.base import SPLIT_NAMES, Problem, Scan, png_header
from icm_core.data.images import load_image
from icm_core.data.transforms import EvalTransform
from icm_core.errors import DatasetError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def scan_folder(root: Path, headers: bool = True) -> Scan:
    """Every image file under ``root``; unreadable ones are problems."""
    scan = Scan(Path(root), "all", "images")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or path.suffix.lower() not in EXTENSIONS:
                continue
            why = png_header(path) if headers else None
            rel = scan.rel(path)
            if why:
                scan.problems.append(Problem(rel, "image", f"a readable image; found {why}",
                                             "malformed"))
            else:
                scan.ids.append(rel)
                scan.files.setdefault("image", {})[rel] = path
    if not scan.ids and not scan.problems:
        scan.problems.append(Problem(".", "image", f"image files ({', '.join(EXTENSIONS)})"))
    return scan


class ImageFolder(Dataset):
    """Args:
    root: the folder (searched recursively, hidden entries skipped).
    split: any split name: every split is the whole folder.
    size: (H, W) every photo is fitted into and padded to (``meta["valid"]``: the real pixels).
    """

    dataset_name = "folder"
    labelled = False
    tasks: tuple[str, ...] = ()
    tasks_available: tuple[str, ...] = ()
    layout = "images"

    def __init__(self, root, split: str = "val", size=(512, 512)):
        if not str(root):
            raise DatasetError("data='folder': data.root is not set; give the folder of your photos, "
                               "e.g. data.root=~/Pictures/test")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"data='folder': data.root={str(root)!r} is not a folder")
        if split not in SPLIT_NAMES:
            raise DatasetError(f"split={split!r}; use one of {list(SPLIT_NAMES)}")
        scan = scan_folder(root)
        if scan.problems:
            raise DatasetError(f"data='folder' at {root}: " + "; ".join(map(str, scan.problems)))
        self.root, self.split, self.ids = root, split, scan.ids
        self.files = scan.files["image"]
        self.transform = EvalTransform(size)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key) -> dict:
        index = key[0] if isinstance(key, tuple) else key
        if not 0 <= index < len(self.ids):
            raise IndexError(f"image {index} out of range [0, {len(self.ids)})")
        id_ = self.ids[index]
        sample = {"image": load_image(self.files[id_]),
                  "meta": {"id": id_, "dataset": "folder", "labelled": False}}
        return self.transform(sample)
