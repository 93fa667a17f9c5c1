"""The rate-accuracy objective's task term: w_t * (L_t(final) + L_t(preliminary))."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from icm_core.tasks.registry import get_task

if TYPE_CHECKING:  # the model's output type; models sit above tasks
    from icm_core.models.icm import ICMOutput


def task_loss(out: ICMOutput, target: torch.Tensor, dataset: str, inter_sup: bool) -> torch.Tensor:
    """w_t * (L_t(final) + L_t(preliminary)) for the output's task."""
    spec = get_task(out.task)
    loss = spec.loss(out.prediction.float(), target)
    if inter_sup:
        loss = loss + spec.loss(out.preliminary.float(), target)
    return spec.weight(dataset) * loss
