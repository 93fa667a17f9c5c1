"""Section 2.2 (DoRA): task-specific low-rank adaptation of the frozen backbone, via peft.

DoRA (Liu et al. 2024) re-parameterizes each adapted weight as

    W' = m * (W0 + s B A) / ||W0 + s B A||_c          (paper eq. 1, s = alpha / r)

with a trainable magnitude m (one per output unit), frozen W0 and trainable low-rank B, A
(B starts at zero, so W' = W0 at initialization). LoRA is the same without m and the norm.
peft implements both on any ``nn.Module`` (``LoraConfig(use_dora=...)``) and keeps several
named adapters on one model: each task gets its own adapter on the one shared backbone, and
``set_task`` switches which one is in the forward path and trains.

Modes (the paper's backbone study, Fig. 5a): ``dora``/``lora`` (adapters train, backbone
frozen), ``full`` (every backbone weight trains), ``fixed`` (nothing in the backbone trains),
``scratch`` (random initialization, everything trains).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from icm_core.config.schema import AdapterConfig
from icm_core.errors import ConfigError
from icm_core.models.backbone import Backbone

# adapted projection name -> module name suffixes inside each timm EVA/ViT block
TARGET_MODULES = {
    "q": ("attn.q_proj",),
    "k": ("attn.k_proj",),
    "v": ("attn.v_proj",),
    "o": ("attn.proj",),
    "up": ("mlp.fc1_g", "mlp.fc1_x", "mlp.fc1"),  # SwiGLU (base/large) or packed GLU (tiny/small)
    "down": ("mlp.fc2",),
}

# the paper's DoRA-layer study (Fig. 5b); the final configuration is dora_r8_qkv
PRESETS = {
    "lora_r16_qv": AdapterConfig(mode="lora", rank=16, targets=["q", "v"]),
    "dora_r8_qkv": AdapterConfig(mode="dora", rank=8, targets=["q", "k", "v"]),
    "dora_r16_qkv": AdapterConfig(mode="dora", rank=16, targets=["q", "k", "v"]),
    "dora_r8_qkvud": AdapterConfig(mode="dora", rank=8, targets=["q", "k", "v", "up", "down"]),
    "dora_r16_qkvud": AdapterConfig(mode="dora", rank=16, targets=["q", "k", "v", "up", "down"]),
}


def target_module_names(vit: nn.Module, targets) -> list[str]:
    """Full names of the ``nn.Linear`` modules that ``targets`` (q, k, v, o, up, down) select."""
    names = []
    for t in targets:
        found = [n for n, m in vit.named_modules()
                 if isinstance(m, nn.Linear) and n.startswith("blocks.")
                 and any(n.endswith("." + s) for s in TARGET_MODULES[t])]
        if not found:
            raise ConfigError(f"adapter target {t!r} matches no linear layer of this backbone "
                              f"(looked for {TARGET_MODULES[t]}); a fused qkv cannot be adapted: "
                              "use an EVA-02 backbone (built unfused) or targets o, up, down")
        names += found
    return sorted(set(names))


def lora_config(cfg: AdapterConfig, vit: nn.Module) -> LoraConfig:
    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha if cfg.alpha is not None else cfg.rank,
        target_modules=target_module_names(vit, cfg.targets),
        use_dora=cfg.mode == "dora",
        lora_dropout=0.0,  # peft's DoRA recomputes the base matmul when dropout > 0
        bias="none",
    )


def attach_adapters(backbone: Backbone, cfg: AdapterConfig, tasks) -> None:
    """Give ``backbone`` one adapter per task (dora/lora) or set which weights train."""
    tasks = list(tasks)
    backbone.adapter_cfg = cfg
    backbone.tasks = tasks
    if cfg.mode in ("dora", "lora"):
        vit = backbone.model
        config = lora_config(cfg, vit)
        peft_model = get_peft_model(vit, config, adapter_name=tasks[0])
        for t in tasks[1:]:
            peft_model.add_adapter(t, copy.deepcopy(config))
        backbone.model = peft_model
        route(backbone, tasks[0])
    set_trainable(backbone, tasks)


def _tuner_layers(backbone: Backbone) -> list[BaseTunerLayer]:
    layers = getattr(backbone, "_tuner_layers", None)
    if layers is None:
        layers = [m for m in backbone.model.modules() if isinstance(m, BaseTunerLayer)]
        backbone._tuner_layers = layers
    return layers


def route(backbone: Backbone, task: str) -> None:
    """Put ``task``'s adapter in the forward path, leaving every ``requires_grad`` as it is.

    peft's ``set_adapter`` also flips trainability (only the active adapter trains); that is a
    training decision, made once by ``set_trainable``, not something a forward pass may change.
    So only each tuner layer's active-adapter list is set here.
    """
    if task not in backbone.tasks:
        raise ConfigError(f"task {task!r} has no adapter; this model has {backbone.tasks}")
    if backbone.adapter_cfg.mode in ("dora", "lora"):
        for layer in _tuner_layers(backbone):
            layer._active_adapter = [task]


def set_trainable(backbone: Backbone, tasks) -> None:
    """Exactly the backbone tensors that ``tasks`` own train: their adapters (dora/lora), every
    weight (full/scratch) or nothing (fixed)."""
    mode = backbone.adapter_cfg.mode
    if mode in ("dora", "lora"):
        own = {f".{t}." for t in tasks}
        for name, p in backbone.model.named_parameters():
            p.requires_grad_(any(o in name for o in own) or any(name.endswith(o[:-1]) for o in own))
    else:
        backbone.requires_grad_(mode in ("full", "scratch"))


def adapter_state_dict(backbone: Backbone, task: str, clone: bool = True) -> dict[str, torch.Tensor]:
    """The backbone tensors that ``task`` owns: its adapter, or every weight for full/scratch.

    ``clone=False`` returns views of the live tensors (for hashing without copying).
    """
    mode = backbone.adapter_cfg.mode
    if mode in ("dora", "lora"):
        state = get_peft_model_state_dict(backbone.model, adapter_name=task)
    elif mode in ("full", "scratch"):
        state = backbone.vit.state_dict()
    else:
        return {}
    return {k: v.detach().clone() if clone else v.detach() for k, v in state.items()}


def load_adapter_state_dict(backbone: Backbone, task: str, state: dict[str, torch.Tensor]) -> None:
    """Load what ``adapter_state_dict`` returned; a partial or misshapen state is refused first.

    peft loads non-strictly: without this check missing keys would keep their old values.
    """
    mode = backbone.adapter_cfg.mode
    want = adapter_state_dict(backbone, task, clone=False)
    missing = sorted(want.keys() - state.keys())
    unexpected = sorted(state.keys() - want.keys())
    wrong = [f"{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})"
             for k, v in sorted(want.items()) if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{what} {len(keys)}: {keys[:4]}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ConfigError(f"adapter of task {task!r} does not fit this backbone (adapter {mode}): "
                          + "; ".join(parts))
    if mode in ("dora", "lora"):
        result = set_peft_model_state_dict(backbone.model, state, adapter_name=task)
        bad = [k for k in result.unexpected_keys if f".{task}" in k]
        if bad:
            raise ConfigError(f"adapter of task {task!r} does not fit this backbone: unexpected {bad[:3]}")
    elif mode in ("full", "scratch"):
        backbone.vit.load_state_dict(state, strict=True)


@dataclass(frozen=True)
class ParameterReport:
    """Backbone parameters that train for one task, as in the paper's "0.41 %"."""

    backbone_params: int
    trainable_backbone_params: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_backbone_params / self.backbone_params


def trainable_parameters(backbone: Backbone, task: str) -> ParameterReport:
    """Count the frozen backbone's parameters and what ``task`` trains in it."""
    mode = backbone.adapter_cfg.mode
    own = adapter_state_dict(backbone, task, clone=False) if mode in ("dora", "lora") else {}
    adapter_ids = {id(p) for n, p in backbone.named_parameters() if "lora_" in n}
    used = sum(p.numel() for p in backbone.parameters() if id(p) not in adapter_ids)
    base = used + backbone.pruned_params  # the whole network, as the paper counts it
    if mode in ("dora", "lora"):
        trainable = sum(v.numel() for v in own.values())
    elif mode in ("full", "scratch"):
        trainable = used  # pruned modules (unused norms, head) do not exist, so do not train
    else:
        trainable = 0
    return ParameterReport(base, trainable)
