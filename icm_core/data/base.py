"""What the real datasets share: the scan of a dataset folder (which files each image and task
has, what is missing or malformed) and a torch dataset over the files a scan found.

A scan names every problem by its path relative to the dataset root, its task and what was
expected there. ``icm data check`` prints the scan; a dataset raises ``DatasetError`` with the
same lines at construction, before any model is built. With ``strict=False`` a partial dataset
loads: a missing label file becomes an all-ignore label, and a task without any file is left out
of ``tasks_available``.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from icm_core.data.images import load_image
from icm_core.data.transforms import FILL, EvalTransform, TrainTransform, resize, sample_generator
from icm_core.errors import DatasetError

log = logging.getLogger("icm.data")
SPLIT_NAMES = {"train": "train", "val": "val", "test": "val"}  # test: the held-out val split
MAX_LISTED = 20  # problems quoted in an error message (all of them in `icm data check`)


@dataclass(frozen=True)
class Problem:
    """One missing or malformed file: ``path`` relative to the root, the ``task`` it serves."""

    path: str
    task: str
    expected: str
    kind: str = "missing"  # missing | malformed

    def __str__(self) -> str:
        return f"{self.path} ({self.task}): {self.kind}; expected {self.expected}"


@dataclass
class Scan:
    """What a dataset folder holds for one split."""

    root: Path
    split: str
    layout: str
    ids: list[str] = field(default_factory=list)
    files: dict[str, dict[str, Path]] = field(default_factory=dict)  # task -> id -> file
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix()

    def missing(self, task: str, path: Path, expected: str) -> None:
        self.problems.append(Problem(self.rel(path), task, expected))

    def malformed(self, task: str, path: Path, expected: str) -> None:
        self.problems.append(Problem(self.rel(path), task, expected, "malformed"))

    def counts(self, tasks) -> dict[str, int]:
        return {"images": len(self.files.get("image", {})),
                **{t: len(self.files.get(t, {})) for t in tasks}}


def read_split(scan: Scan, path: Path, what: str) -> list[str]:
    """The image ids a split file lists (one a line, blank lines skipped)."""
    if not path.is_file():
        scan.missing("split", path, f"a text file listing the {what} image ids, one a line")
        return []
    try:
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        scan.malformed("split", path, f"a text file of image ids ({e})")
        return []
    if not ids:
        scan.notes.append(f"{scan.rel(path)} lists no images")
    return ids


def png_header(path: Path, modes: tuple[str, ...] | None = None) -> str | None:
    """None if ``path`` is a readable image (in one of ``modes``); else why not."""
    try:
        with Image.open(path) as im:
            if modes is not None and im.mode not in modes:
                return f"mode {im.mode}, not one of {list(modes)}"
    except (OSError, ValueError, SyntaxError) as e:
        return f"not a readable image ({e})"
    return None


def npy_header(path: Path, ndims: tuple[int, ...], channels: int | None = None) -> str | None:
    """None if ``path`` is a .npy array with one of ``ndims`` dimensions; else why not."""
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        return f"not a readable .npy array ({e})"
    if a.ndim not in ndims or (channels is not None and a.ndim == 3 and a.shape[-1] != channels):
        return f"shape {tuple(a.shape)}"
    return None


def check_file(scan: Scan, task: str, id_: str, path: Path, expected: str, header) -> None:
    """Record ``path`` for (task, id) if it exists and ``header(path)`` finds nothing wrong."""
    if not path.is_file():
        scan.missing(task, path, expected)
        return
    why = header(path) if header is not None else None
    if why:
        scan.malformed(task, path, f"{expected}; found {why}")
        return
    scan.files.setdefault(task, {})[id_] = path


def raise_problems(name: str, scan: Scan, problems: list[Problem], hint: str) -> None:
    if not problems:
        return
    lines = [str(p) for p in problems[:MAX_LISTED]]
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise DatasetError(f"data={name!r} at {scan.root} ({scan.layout} layout, split {scan.split}): "
                       f"{len(problems)} problem(s):\n  " + "\n  ".join(lines) + more + f"\n{hint}")


class FileDataset(Dataset, ABC):
    """A dataset over the files of a ``Scan``: subclasses define ``scan`` and ``load``.

    Args:
        root: the dataset folder.
        split: ``train``, ``val`` (``test``: val).
        tasks: tasks to load (default: every task of the dataset).
        size: training crop / evaluation size (H, W).
        augment: InvPT's random scale, crop, flip and jitter (the train split only).
        seed: augmentation seed.
        strict: refuse missing label files (False: load what is there, see ``missing``).
    """

    dataset_name = "files"
    label_space = "files"
    all_tasks: tuple[str, ...] = ()
    augments = True  # the trainer keys samples by (index, step): a new crop at every draw

    def __init__(self, root, split: str = "train", tasks=None, *, size=(448, 576),
                 augment: bool = True, seed: int = 0, strict: bool = True, **scan_options):
        if not str(root):
            raise DatasetError(f"data={self.dataset_name!r}: data.root is not set; give the dataset "
                               f"folder, e.g. data.root=/data/{self.dataset_name}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"data={self.dataset_name!r}: data.root={str(root)!r} is not a folder")
        if split not in SPLIT_NAMES:
            raise DatasetError(f"split={split!r}; use one of {list(SPLIT_NAMES)}")
        self.split, self.root = split, root
        self.tasks = tuple(self.all_tasks if tasks is None else tasks)
        scan = self.scan(root, SPLIT_NAMES[split], self.tasks, **scan_options)
        self.layout = scan.layout
        image_problems = [p for p in scan.problems if p.task in ("image", "split")]
        label_problems = [p for p in scan.problems if p.task not in ("image", "split")]
        hint = ("Fix or restore these files (icm data check ROOT --dataset "
                f"{self.dataset_name} lists them all)")
        if strict:
            raise_problems(self.dataset_name, scan, scan.problems,
                           hint + ", or load the tasks that are there with data.strict=false")
        else:
            raise_problems(self.dataset_name, scan, [p for p in image_problems if p.task == "split"],
                           hint)
        self.ids = [i for i in scan.ids if i in scan.files.get("image", {})]
        if len(self.ids) < len(scan.ids):
            log.warning("%s %s: %d of %d listed images missing or unreadable (left out), e.g. %s",
                        self.dataset_name, split, len(scan.ids) - len(self.ids), len(scan.ids),
                        next((p.path for p in image_problems if p.task == "image"), "?"))
        if not self.ids:
            raise DatasetError(f"data={self.dataset_name!r} at {root}: split {split} has no images "
                               f"({'; '.join(scan.notes) or 'none found'})")
        self.files = scan.files
        self.missing = {t: [p.path for p in label_problems if p.task == t] for t in self.tasks}
        self.missing = {t: v for t, v in self.missing.items() if v}
        self.tasks_available = tuple(t for t in self.tasks if self.files.get(t))
        absent = [t for t in self.tasks if t not in self.tasks_available]
        if absent:
            raise DatasetError(f"data={self.dataset_name!r} at {root}: no files at all for "
                               f"task(s) {absent} in split {split}; train the tasks that are there: "
                               f"{list(self.tasks_available) or 'none'}")
        for t, paths in self.missing.items():
            log.warning("%s %s: %d %s label file(s) missing (those pixels are ignored), e.g. %s",
                        self.dataset_name, split, len(paths), t, paths[0])
        self.transform = (TrainTransform(size) if augment and split == "train"
                          else EvalTransform(size))
        self.seed = int(seed)
        log.info("%s: %s layout at %s, split %s: %d images, tasks %s", self.dataset_name,
                 self.layout, root, split, len(self.ids), list(self.tasks))

    # -- what each dataset defines ------------------------------------------------------
    @classmethod
    @abstractmethod
    def scan(cls, root: Path, split: str, tasks, **options) -> Scan:
        """Every file of ``split`` under ``root``, per task, and each problem found."""

    @abstractmethod
    def load(self, id_: str, task: str, path: Path, shape: tuple[int, int]) -> torch.Tensor:
        """The label of ``task`` in the sample-dict convention, at the image's ``shape``."""

    # -- the dataset ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def raw(self, index: int) -> dict:
        """Sample ``index`` at its file resolution, before any transform."""
        id_ = self.ids[index]
        image = load_image(self.files["image"][id_])
        shape = tuple(image.shape[-2:])
        sample = {"image": image}
        for t in self.tasks:
            path = self.files[t].get(id_)
            label = self.load(id_, t, path, shape) if path is not None else ignored(t, shape)
            if tuple(label.shape[-2:]) != shape:  # re-hosted copies at other resolutions
                label = resize({t: label}, shape)[t]
            sample[t] = label
        sample["meta"] = {"id": id_, "dataset": self.dataset_name, "layout": self.layout}
        return sample

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if not 0 <= index < len(self.ids):
            raise IndexError(f"sample {index} out of range [0, {len(self.ids)})")
        sample = self.raw(index)
        if isinstance(self.transform, TrainTransform):
            return self.transform(sample, sample_generator(self.seed, index, epoch))
        return self.transform(sample)


def ignored(task: str, shape) -> torch.Tensor:
    """An all-ignore label of ``task`` (a missing file in a partial dataset)."""
    H, W = shape
    if task in ("semseg", "human_parts"):
        return torch.full((H, W), FILL[task], dtype=torch.int64)
    channels = 3 if task == "normals" else 1
    return torch.full((channels, H, W), float(FILL[task]))


def read_png(path: Path, task: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, ValueError, SyntaxError) as e:
        raise DatasetError(f"{path} ({task}): not a readable PNG ({e})") from e


def read_npy(path: Path, task: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} ({task}): not a readable .npy array ({e})") from e


def normals_from_png(a: np.ndarray) -> torch.Tensor:
    """RGB PNG normals -> (3, H, W) in [-1, 1] by 2x/255 - 1; all-zero pixels -> 0 (invalid)."""
    rgb = a[..., :3].astype(np.float32)
    n = 2.0 * rgb / 255.0 - 1.0
    n[(a[..., :3] == 0).all(axis=-1)] = 0.0
    return torch.from_numpy(np.ascontiguousarray(n.transpose(2, 0, 1)))


def binary(a: np.ndarray) -> torch.Tensor:
    """A map in [0, 1] (or 0..255 integers) -> float (1, H, W) in {0, 1}, above 0.5 -> 1."""
    x = a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer) and a.size and a.max() > 1:
        x = x / 255.0
    if x.ndim == 3:
        x = x[..., 0]
    return torch.from_numpy((x > 0.5).astype(np.float32))[None]
