"""The task losses, InvPT's conventions: CE (ignore 255), L1 on valid depth, L1 on unit normals,
balanced BCE for boundaries and saliency. ``TaskSpec.loss`` points here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255  # label of pixels no loss or metric counts


def _cross_entropy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    target = target.long()
    if target.dim() == 4:
        target = target[:, 0]
    if (target != IGNORE_INDEX).sum() == 0:
        return pred.sum() * 0.0
    return F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX)


def _depth_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    valid = target > 0
    if valid.sum() == 0:
        return pred.sum() * 0.0
    return (pred - target).abs()[valid].mean()


def _normals_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """InvPT's ``L1Loss(normalize=True)``: |unit(pred) - target| summed over the 3 channels and
    divided by the number of valid pixels (not elements)."""
    valid = target.abs().sum(dim=1, keepdim=True) > 0  # all-zero target = invalid
    n_valid = int(valid.sum())
    if n_valid == 0:
        return pred.sum() * 0.0
    pred = F.normalize(pred, dim=1)
    return (pred - target).abs()[valid.expand_as(pred)].sum() / n_valid


def _weighted_bce(pred: torch.Tensor, target: torch.Tensor, pos_weight: float | None):
    """Mean over valid pixels of -(w y log s + (1 - w)(1 - y) log(1 - s)), s = sigmoid(pred).

    InvPT's ``BalancedBinaryCrossEntropyLoss`` (fixed w) and balanced ``CrossEntropyLoss``
    (w = fraction of negative pixels in the batch, saliency; a 2-way softmax is a sigmoid of the
    logit difference), term by term, so soft labels weigh as InvPT's do too.
    """
    valid = target != IGNORE_INDEX
    if valid.sum() == 0:
        return pred.sum() * 0.0
    logits, y = pred[valid], target[valid].float()
    if pos_weight is None:  # balance by the batch's own label frequencies (saliency)
        pos_weight = float(1.0 - y.mean().clamp(1e-6, 1 - 1e-6))
    w = pos_weight
    loss = w * y * F.softplus(-logits) + (1 - w) * (1 - y) * F.softplus(logits)
    return loss.mean()


def _boundary_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _weighted_bce(pred, target, pos_weight=0.95)


def _saliency_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _weighted_bce(pred, target, pos_weight=None)

