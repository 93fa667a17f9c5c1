"""DoRA, taken apart on one adapted layer of a trained model (for teaching).

peft's DoRA (Liu et al. 2024, paper eq. 1) for an ``nn.Linear`` weight W0 of shape (out, in)::

    W' = m * (W0 + s B A) / ||W0 + s B A||      s = lora_alpha / r, B (out, r), A (r, in)

where the norm is taken per output unit (each row of the torch weight: ``dim=1`` in peft's
``DoraLinearLayer.get_weight_norm``; the DoRA paper's "column" norm of its (in, out) matrix).
m starts at ||W0|| per row and B at 0, so W' = W0 at initialization. LoRA is W' = W0 + s B A:
its magnitude is whatever the row norms of W' come out as.

The view: m against ||W0|| per row (the magnitude change), the cosine between each row of W0
and of W' (the direction change), and the singular values of W' - W0 beside those of s B A:
s B A has rank <= r, while DoRA's rescaling of W0's rows makes W' - W0 full rank in general.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from peft.tuners.lora import LoraLayer

from icm_core.errors import ConfigError
from icm_core.models.adapters import get_adapter_kind

_PREFIX = "base_model.model."


def adapted_layers(model) -> list[str]:
    """Names (inside the timm model) of the layers that carry adapters."""
    return [n.removeprefix(_PREFIX) for n, m in model.backbone.model.named_modules()
            if isinstance(m, LoraLayer)]


def _layer(model, name: str) -> LoraLayer:
    if not get_adapter_kind(model.cfg.adapter.mode).low_rank:
        raise ConfigError(f"adapter.mode={model.cfg.adapter.mode!r} has no low-rank adapters to "
                          "take apart; open a dora or lora run")
    mods = dict(model.backbone.model.named_modules())
    layer = mods.get(_PREFIX + name, mods.get(name))
    if not isinstance(layer, LoraLayer):
        raise ConfigError(f"layer {name!r} has no adapter; adapted layers: "
                          f"{adapted_layers(model)[:6]}...")
    return layer


@dataclass(frozen=True)
class DoraView:
    """One task's adapter on one layer, decomposed; arrays are float64 numpy."""

    layer: str
    task: str
    mode: str  # dora or lora
    rank: int
    scaling: float  # s = alpha / r
    w0: np.ndarray  # (out, in) frozen weight
    lora_update: np.ndarray  # (out, in) s B A
    weight: np.ndarray  # (out, in) W', recomposed from the parts
    magnitude: np.ndarray  # (out,) m (DoRA) or ||W'|| per row (LoRA)
    w0_norms: np.ndarray  # (out,) ||W0|| per row: where m starts
    direction_cosine: np.ndarray  # (out,) cos(W0 row, W' row)
    delta_singular_values: np.ndarray  # of W' - W0, descending
    lora_singular_values: np.ndarray  # of s B A, descending (<= rank non-zero)
    w0_spectral_norm: float  # largest singular value of W0: the scale of "small"

    @property
    def delta(self) -> np.ndarray:
        return self.weight - self.w0

    def rank_of(self, which: str = "delta", rtol: float = 1e-5) -> int:
        """Numerical rank of W' - W0 (``delta``) or of s B A (``lora``): singular values above
        ``rtol`` x the largest of W0 (the weights are float32: smaller is rounding noise)."""
        sv = self.delta_singular_values if which == "delta" else self.lora_singular_values
        return int((sv > rtol * self.w0_spectral_norm).sum())


def dora_view(model, task: str, layer: str) -> DoraView:
    """Decompose ``task``'s adapter on ``layer`` (a name from ``adapted_layers``)."""
    task = model.task_arg(task)
    lay = _layer(model, layer)
    if task not in lay.lora_A:
        raise ConfigError(f"layer {layer!r} has no adapter for task {task!r}")
    with model.lock, torch.no_grad():
        w0 = lay.get_base_layer().weight.detach().double().cpu()
        A = lay.lora_A[task].weight.detach().double().cpu()
        B = lay.lora_B[task].weight.detach().double().cpu()
        s = float(lay.scaling[task])
        mag = lay.lora_magnitude_vector[task].weight if task in lay.lora_magnitude_vector else None
        mag = None if mag is None else mag.detach().double().cpu().reshape(-1)
    if getattr(lay, "fan_in_fan_out", False):
        raise ConfigError(f"layer {layer!r} stores its weight transposed (fan_in_fan_out); "
                          "only nn.Linear layers are decomposed")
    update = s * (B @ A)
    direction = w0 + update
    if mag is not None:
        weight = mag[:, None] * direction / direction.norm(dim=1, keepdim=True)
        magnitude = mag
    else:
        weight = direction
        magnitude = weight.norm(dim=1)
    cos = torch.nn.functional.cosine_similarity(w0, weight, dim=1)
    return DoraView(layer, task, "dora" if mag is not None else "lora", A.shape[0], s,
                    w0.numpy(), update.numpy(), weight.numpy(), magnitude.numpy(),
                    w0.norm(dim=1).numpy(), cos.numpy(),
                    torch.linalg.svdvals(weight - w0).numpy(), torch.linalg.svdvals(update).numpy(),
                    float(torch.linalg.matrix_norm(w0, ord=2)))


def merged_weight(model, task: str, layer: str) -> torch.Tensor:
    """W' as peft's own ``merge`` writes it into a copy of the layer (the model is untouched)."""
    task = model.task_arg(task)
    with model.lock:
        lay = copy.deepcopy(_layer(model, layer))
    lay.merge(adapter_names=[task])
    return lay.get_base_layer().weight.detach()


@dataclass(frozen=True)
class AdapterComparison:
    """Two tasks' adapters on one layer."""

    a: DoraView
    b: DoraView
    update_cosine: float  # cosine between the two W' - W0 (as flat vectors)
    magnitude_correlation: float  # correlation of the two magnitude changes m - ||W0||


def compare_tasks(model, task_a: str, task_b: str, layer: str) -> AdapterComparison:
    a, b = dora_view(model, task_a, layer), dora_view(model, task_b, layer)
    da, db = a.delta.ravel(), b.delta.ravel()
    den = float(np.linalg.norm(da) * np.linalg.norm(db))
    ma, mb = a.magnitude - a.w0_norms, b.magnitude - b.w0_norms
    corr = float(np.corrcoef(ma, mb)[0, 1]) if ma.std() > 0 and mb.std() > 0 else float("nan")
    return AdapterComparison(a, b, float(da @ db) / den if den > 0 else float("nan"), corr)


__all__ = ["adapted_layers", "dora_view", "merged_weight", "compare_tasks", "DoraView",
           "AdapterComparison"]
