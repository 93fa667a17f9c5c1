"""An exponential moving average (EMA) of the trained parameters (``train.ema_decay``).

Only the parameters the run trains are averaged (adapters, heads, the factorized prior's
quantiles): the frozen backbone does not move, so, unlike timm's ``ModelEmaV3`` or torch's
``AveragedModel``, which copy the whole model, no second EVA-02 is held in memory. The decay
warms up as timm's does, ``min(decay, (1 + t) / (10 + t))`` after the t-th update, so the
average does not stay near the random initialisation of the heads in a short run.

The trainer evaluates and checkpoints with the averaged weights (``applied``): the task files a
run writes are the EMA's, and ``trainer.pt`` keeps the raw training weights (``raw_state``) so a
resumed run continues the same optimisation.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of the ``updates``-th update (1-based): warmed up, never above ``decay``."""
    return min(decay, (1 + updates) / (10 + updates))


class ParamEMA:
    """The average of ``params`` (the live tensors the optimizer steps), ``decay`` in (0, 1)."""

    def __init__(self, params, decay: float):
        self.params = list(params)
        self.decay = float(decay)
        self.updates = 0
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """After an optimizer step: shadow <- d * shadow + (1 - d) * param."""
        self.updates += 1
        d = ema_decay_at(self.decay, self.updates)
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)

    @contextmanager
    def applied(self):
        """The averaged weights in the model for the ``with`` block, the raw ones after it.
        Copies go through ``copy_`` so tensor versions change and the entropy model rebuilds
        its rANS tables for whichever weights are in place."""
        raw = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, raw)

    @torch.no_grad()
    def keep_average(self) -> None:
        """The end of a run: the averaged weights stay in the model (as in its checkpoint)."""
        torch._foreach_copy_(self.params, self.shadow)

    def raw_state(self) -> dict:
        """What a checkpoint needs besides the (averaged) task files: the raw weights and the
        update count."""
        return {"raw": [p.detach().clone() for p in self.params],
                "updates": torch.tensor(self.updates)}

    @torch.no_grad()
    def restore(self, state: dict) -> None:
        """Resume: the model holds the averaged weights a checkpoint's task files carry; they
        become the shadow and the raw weights go back into the model."""
        raw = state["raw"]
        if len(raw) != len(self.params) or any(r.shape != p.shape for r, p in zip(raw, self.params)):
            raise ValueError(f"the EMA state holds {len(raw)} tensors that do not match the "
                             f"{len(self.params)} trained parameters")
        self.shadow = [p.detach().clone() for p in self.params]
        torch._foreach_copy_(self.params, [r.to(p.device, p.dtype) for r, p in zip(raw, self.params)])
        self.updates = int(state["updates"])
