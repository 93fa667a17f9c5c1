"""Task registry: what each dense prediction task outputs, how it is trained and scored.

Losses follow InvPT/ATRC (DESIGN.md): cross-entropy with ignore index 255 for semantic
segmentation and human parts, L1 on valid pixels for depth, L1 on unit-normalized normals
(summed over channels, averaged over pixels), balanced binary cross-entropy (positive weight
0.95) for boundaries and a batch-balanced binary cross-entropy for saliency
(InvPT losses/loss_functions.py, utils/common_config.py ``get_loss``).

Every task's network output is a tensor of *raw* values (logits for classification tasks);
``TaskSpec.activate`` turns it into what metrics and viewers take.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn.functional as F

from icm_core.errors import ConfigError
from icm_core.tasks.losses import (  # noqa: F401 (IGNORE_INDEX: the tasks' constant, re-exported)
    IGNORE_INDEX,
    _boundary_loss,
    _cross_entropy,
    _depth_l1,
    _normals_l1,
    _saliency_loss,
)


def _softmax(x: torch.Tensor) -> torch.Tensor:
    return x.softmax(dim=1)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1)


@dataclass(frozen=True)
class TaskSpec:
    """One dense prediction task.

    Args:
        name: registry key, also the sample-dict key of its label.
        channels: output channels per dataset (``None`` entry: task absent there).
        loss: ``loss(raw_prediction, target) -> scalar``.
        weights: default loss weight per dataset (InvPT's).
        metric: name of the metric reported for the task.
        higher_is_better: direction of that metric.
        colormap: how viewers colour it: ``labels``, ``depth``, ``normals`` or ``gray``.
        activate: raw network output -> what metrics take (probabilities, unit vectors...).
        kind: ``classes`` (integer labels), ``regression`` or ``binary``.
    """

    name: str
    channels: Mapping[str, int]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    weights: Mapping[str, float]
    metric: str
    higher_is_better: bool
    colormap: str
    activate: Callable[[torch.Tensor], torch.Tensor]
    kind: str
    aliases: tuple[str, ...] = field(default=())

    def out_channels(self, dataset: str) -> int:
        if dataset not in self.channels:
            raise ConfigError(
                f"task {self.name!r} has no labels in dataset {dataset!r}; "
                f"it exists in: {sorted(self.channels)}"
            )
        return self.channels[dataset]

    def weight(self, dataset: str) -> float:
        return self.weights.get(dataset, 1.0)


SYNTHETIC_CLASSES = ("wall", "floor", "ceiling", "plain", "hstripes", "vstripes", "checks", "dots",
                     "grain", "ridged", "pole", "ball")
SYNTHETIC_PARTS = ("background", "top", "side")

TASKS: Mapping[str, TaskSpec] = MappingProxyType(
    {
        "semseg": TaskSpec(
            name="semseg",
            channels={"nyud": 40, "pascal": 21, "synthetic": len(SYNTHETIC_CLASSES)},
            loss=_cross_entropy,
            weights={"nyud": 1.0, "pascal": 1.0, "synthetic": 1.0},
            metric="mIoU",
            higher_is_better=True,
            colormap="labels",
            activate=_softmax,
            kind="classes",
        ),
        "depth": TaskSpec(
            name="depth",
            channels={"nyud": 1, "synthetic": 1},
            loss=_depth_l1,
            weights={"nyud": 1.0, "synthetic": 1.0},
            metric="RMSE",
            higher_is_better=False,
            colormap="depth",
            activate=_identity,
            kind="regression",
        ),
        "normals": TaskSpec(
            name="normals",
            channels={"nyud": 3, "pascal": 3, "synthetic": 3},
            loss=_normals_l1,
            weights={"nyud": 10.0, "pascal": 10.0, "synthetic": 10.0},
            metric="mErr",
            higher_is_better=False,
            colormap="normals",
            activate=_unit,
            kind="regression",
        ),
        "boundary": TaskSpec(
            name="boundary",
            channels={"nyud": 1, "pascal": 1, "synthetic": 1},
            loss=_boundary_loss,
            weights={"nyud": 50.0, "pascal": 50.0, "synthetic": 50.0},
            metric="odsF",
            higher_is_better=True,
            colormap="gray",
            activate=torch.sigmoid,
            kind="binary",
            aliases=("edge",),
        ),
        "human_parts": TaskSpec(
            name="human_parts",
            channels={"pascal": 7, "synthetic": len(SYNTHETIC_PARTS)},
            loss=_cross_entropy,
            weights={"pascal": 2.0, "synthetic": 2.0},
            metric="mIoU",
            higher_is_better=True,
            colormap="labels",
            activate=_softmax,
            kind="classes",
            aliases=("parts",),
        ),
        "saliency": TaskSpec(
            name="saliency",
            channels={"pascal": 1, "synthetic": 1},
            loss=_saliency_loss,
            weights={"pascal": 5.0, "synthetic": 5.0},
            metric="maxF",
            higher_is_better=True,
            colormap="gray",
            activate=torch.sigmoid,
            kind="binary",
            aliases=("sal",),
        ),
    }
)

DATASET_TASKS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "nyud": ("semseg", "depth", "normals", "boundary"),
        "pascal": ("semseg", "human_parts", "saliency", "boundary", "normals"),
        "synthetic": ("semseg", "depth", "normals", "boundary", "human_parts", "saliency"),
    }
)


def get_task(name: str) -> TaskSpec:
    """Look a task up by name or alias (``edge`` -> ``boundary``)."""
    if name in TASKS:
        return TASKS[name]
    for spec in TASKS.values():
        if name in spec.aliases:
            return spec
    raise ConfigError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")


def resolve_tasks(names, dataset: str) -> tuple[str, ...]:
    """Canonical task names, checked against what ``dataset`` labels."""
    if dataset not in DATASET_TASKS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASET_TASKS)}")
    if isinstance(names, str):
        names = [names]
    out = []
    for n in names:
        spec = get_task(n)
        if spec.name not in DATASET_TASKS[dataset]:
            raise ConfigError(
                f"dataset {dataset!r} has no {spec.name!r} labels; its tasks are "
                f"{list(DATASET_TASKS[dataset])}"
            )
        out.append(spec.name)
    if len(set(out)) != len(out):
        raise ConfigError(f"task list {list(names)} names a task twice")
    return tuple(out)
