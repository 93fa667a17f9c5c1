"""The dataset registry: every dataset a ``DataConfig`` can name, one ``register_dataset`` each.

A dataset is a factory ``(cfg: DataConfig, split, tasks) -> torch Dataset`` returning the sample
dict of ``synthetic.sample_from_arrays``. To add one: write its module in ``icm_core/data/`` and
register it here (or from your own code) with ``register_dataset(name, factory, ...)``;
``data.name`` then accepts it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

from icm_core.config.schema import allow_dataset
from icm_core.data.folder import ImageFolder
from icm_core.data.hf import HFDataset
from icm_core.data.nyud import NYUD
from icm_core.data.pascal_context import PASCALContext
from icm_core.data.synthetic import SyntheticScenes
from icm_core.errors import DatasetError


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: ``factory(cfg, split, tasks)``, its label conventions (``None``:
    ``cfg.labels``), whether it has labels, its other names and a one-line description."""

    name: str
    factory: Callable
    label_space: str | None
    labelled: bool = True
    aliases: tuple[str, ...] = ()
    help: str = ""
    cls: type | None = None


_REGISTRY: dict[str, DatasetEntry] = {}
DATASETS = MappingProxyType(_REGISTRY)  # name -> DatasetEntry, in registration order


def register_dataset(name: str, factory: Callable, *, label_space: str | None = None,
                     labelled: bool = True, aliases=(), help: str = "", cls: type | None = None
                     ) -> DatasetEntry:
    """Register ``factory(cfg, split, tasks)`` as ``data=name`` (and ``aliases``)."""
    entry = DatasetEntry(name, factory, label_space, labelled, tuple(aliases), help, cls)
    _REGISTRY[name] = entry
    allow_dataset(name)
    return entry


def get_dataset(name: str) -> DatasetEntry:
    """The entry registered as ``name`` or one of its aliases (``pascal_context``)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for entry in _REGISTRY.values():
        if name in entry.aliases:
            return entry
    raise DatasetError(f"unknown dataset {name!r}; choose one of {dataset_names()}")


def dataset_names(aliases: bool = False) -> list[str]:
    names = list(_REGISTRY)
    return names + [a for e in _REGISTRY.values() for a in e.aliases] if aliases else names


def make_dataset(cfg, split: str, tasks):
    """The dataset a ``DataConfig`` names, for ``split`` (train/val) and ``tasks``."""
    entry = get_dataset(cfg.name)
    if split == "train" and not entry.labelled:
        raise DatasetError(f"data={cfg.name!r} has no labels, so it cannot train a model; use it "
                           "with icm compare, icm eval or the inspector (fidelity to the "
                           "uncompressed model), and train on a labelled dataset")
    return entry.factory(cfg, split, tasks)


# -- the built-in datasets ---------------------------------------------------------------------
def _synthetic(cfg, split, tasks):
    length = cfg.train_length if split == "train" else cfg.val_length
    return SyntheticScenes(split=split, size=tuple(cfg.size), tasks=tasks, seed=cfg.seed,
                           length=length, cache=cfg.cache_scenes and split == "train")


def _files(cls):
    def factory(cfg, split, tasks):
        options = {"layout": cfg.layout} if cls is NYUD else {}
        return cls(cfg.root, split, tasks, size=tuple(cfg.size), augment=cfg.augment,
                   seed=cfg.seed, strict=cfg.strict, **options)
    return factory


def _hf(cfg, split, tasks):
    return HFDataset(cfg.root, split, tasks, columns=dict(cfg.columns or {}), labels=cfg.labels,
                     size=tuple(cfg.size), augment=cfg.augment, seed=cfg.seed)


def _folder(cfg, split, tasks):
    return ImageFolder(cfg.root, split, size=tuple(cfg.size))


register_dataset("synthetic", _synthetic, label_space="synthetic", cls=SyntheticScenes,
                 help="procedurally rendered indoor scenes, every label exact (offline)")
register_dataset("nyud", _files(NYUD), label_space="nyud", cls=NYUD,
                 help="NYUD-v2, NYUD_MT or NYUDv2 layout: semseg, depth, normals, boundary")
register_dataset("pascal", _files(PASCALContext), label_space="pascal", cls=PASCALContext,
                 aliases=("pascal_context",), help="PASCAL-Context, PASCAL_MT layout: semseg, "
                 "human_parts, saliency, normals, boundary")
register_dataset("hf", _hf, cls=HFDataset,
                 help="any Hugging Face dataset, columns mapped to tasks (data.columns)")
register_dataset("folder", _folder, labelled=False, cls=ImageFolder,
                 help="a folder of your photos, no labels: scores fidelity to the uncompressed model")

__all__ = ["DATASETS", "DatasetEntry", "SyntheticScenes", "dataset_names", "get_dataset",
           "make_dataset", "register_dataset"]
