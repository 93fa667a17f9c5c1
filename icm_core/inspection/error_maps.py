"""Per-pixel error maps of one prediction against its label, in each task's own terms.

    classes (semseg, parts)   1 where the arg-max class is wrong, 0 where right
    depth                     |prediction - label| in metres (predictions <= 0 count as 1e-9,
                              as the RMSE metric does)
    normals                   angle in degrees, 2 atan2(|p - t|, |p + t|) of unit vectors
    boundary, saliency        |probability - label|

Pixels the metric ignores (label 255, depth 0, all-zero normals) are NaN, so a heatmap leaves
them blank and ``np.nanmean`` gives the image's error.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from icm_core.errors import ConfigError
from icm_core.tasks.registry import IGNORE_INDEX, get_task

ERROR_UNITS = {"classes": "wrong class", "depth": "absolute error (m)",
               "normals": "angular error (deg)", "binary": "absolute error"}


def error_unit(task: str) -> str:
    spec = get_task(task)
    return ERROR_UNITS[spec.kind if spec.kind != "regression" else spec.name]


def error_map(task: str, prediction: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Raw prediction (C_t, H, W) and label -> (H, W) float64 error, NaN where not scored."""
    spec = get_task(task)
    p = prediction.detach().double().cpu()
    t = target.detach().cpu()
    if p.dim() != 3:
        raise ConfigError(f"prediction of shape {tuple(p.shape)}: give one image (C, H, W)")
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.shape[-2:] != p.shape[-2:]:
        raise ConfigError(f"label of size {tuple(t.shape[-2:])} does not fit the prediction "
                          f"{tuple(p.shape[-2:])} of task {task!r}")
    if spec.kind == "classes":
        lab = t[0].long()
        err = (p.argmax(0) != lab).double()
        valid = lab != IGNORE_INDEX
    elif spec.name == "depth":
        d = torch.where(p[0] > 0, p[0], torch.full_like(p[0], 1e-9))
        err = (d - t[0].double()).abs()
        valid = t[0] > 0
    elif spec.name == "normals":
        u, v = F.normalize(p, dim=0), F.normalize(t.double(), dim=0)
        err = torch.rad2deg(2 * torch.atan2((u - v).norm(dim=0), (u + v).norm(dim=0)))
        valid = t.abs().sum(0) > 0
    elif spec.kind == "binary":
        err = (spec.activate(p[0]) - t[0].double()).abs()
        valid = t[0] != IGNORE_INDEX
    else:  # a task added to the registry without an error rule
        raise ConfigError(f"task {task!r} has no error map; add one to inspect_errors.py")
    return torch.where(valid, err, torch.full_like(err, float("nan"))).numpy()


def readable(task: str, prediction: torch.Tensor) -> np.ndarray:
    """Raw prediction (C_t, H, W) -> what a viewer shows: class ids (H, W), depth (H, W),
    unit normals (3, H, W) or probabilities (H, W)."""
    spec = get_task(task)
    p = prediction.detach().float().cpu()
    if spec.kind == "classes":
        return p.argmax(0).numpy()
    a = spec.activate(p.unsqueeze(0))[0]
    return a.numpy() if spec.name == "normals" else a[0].numpy()


__all__ = ["error_map", "error_unit", "readable"]
