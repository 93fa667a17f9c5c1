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

Each mode is an ``AdapterKind`` object (as peft's ``LoraVariant`` is for DoRA and its kin):
what it is (``low_rank``, ``owns_backbone``, ``trains_backbone``, ``random_init``, ``label``)
and what it does to a backbone (``attach``, ``route``, ``set_trainable``, ``parameters``,
``state_dict``, ``load_state_dict``). ``ADAPTER_KINDS`` holds one per ``adapter.mode``; code
asks ``get_adapter_kind(cfg.adapter.mode).low_rank`` and never tests mode strings. The config
keeps ``adapter.mode`` a plain string, so Hydra, the CLI and the widgets are unchanged.

How to add an adapter kind:
  1. Subclass ``AdapterKind`` (the ``fixed`` behaviour: nothing attached, trained or stored) or
     ``LowRankKind`` (another peft ``LoraConfig`` variant) and override what differs: the
     flags, ``attach`` (wrap the backbone for one task), ``parameters`` (what the task trains)
     and ``state_dict``/``load_state_dict`` (what its task file stores).
  2. Register one instance in ``ADAPTER_KINDS`` below, under its mode name.
  3. Add the name to ``ADAPTER_MODES`` in ``icm_core/config/schema.py`` (the config layer may
     not import models; ``tests/test_adapter_kinds.py`` checks that the two agree, and the
     schema's ``LOW_RANK_MODES``/``BACKBONE_OWNING_MODES`` against the flags), and optionally
     an ``icm_core/conf/adapter/<name>.yaml`` preset.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from peft import LoraConfig, PeftModel, get_peft_model
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


class AdapterKind:
    """How a backbone is adapted to each task: one instance per ``adapter.mode``.

    The base class is the ``fixed`` behaviour: nothing in the backbone belongs to a task, so
    nothing is attached, trains or is stored. Subclasses override what differs.

    Attributes:
      name: the ``adapter.mode`` value.
      title: how people write it ("DoRA"); ``label(rank, targets)`` is the short text of tables,
        legends and run names ("dora r8 qkv", "full").
      low_rank: a peft low-rank adapter per task on the shared frozen backbone (rank, alpha and
        targets mean something).
      owns_backbone: every backbone weight belongs to the task: one backbone copy per task, so
        a run holds one task and the task file holds the whole backbone.
      trains_backbone: the backbone's own weights train (not only adapters attached to it).
      random_init: the backbone starts from random weights (``backbone.weights=none``).
    """

    low_rank: ClassVar[bool] = False
    owns_backbone: ClassVar[bool] = False
    trains_backbone: ClassVar[bool] = False
    random_init: ClassVar[bool] = False

    def __init__(self, name: str, title: str, description: str):
        self.name, self.title, self.description = name, title, description

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def fine_tunes_pretrained(self) -> bool:
        """The pretrained backbone weights train (``train.backbone_lr`` applies to them)."""
        return self.trains_backbone and not self.random_init

    def label(self, rank: int | None = None, targets=None) -> str:
        """'dora r8 qkv', 'full': the configuration as legends, tables and run names show it."""
        return self.name

    def attach(self, backbone: Backbone, task: str, cfg: AdapterConfig) -> None:
        """Give ``backbone`` what ``task`` needs (called once per task, in task order)."""

    def route(self, backbone: Backbone, task: str) -> None:
        """Put ``task``'s adapter in the forward path; no ``requires_grad`` changes."""

    def set_trainable(self, backbone: Backbone, tasks) -> None:
        """Exactly the backbone tensors that ``tasks`` own train."""
        backbone.requires_grad_(self.trains_backbone)

    def parameters(self, backbone: Backbone, task: str) -> list[nn.Parameter]:
        """The backbone parameters ``task`` owns and may train."""
        return list(backbone.parameters()) if self.owns_backbone else []

    def state_dict(self, backbone: Backbone, task: str, clone: bool = True) -> dict[str, torch.Tensor]:
        """The backbone tensors a task file stores for ``task`` (views when ``clone=False``)."""
        return {}

    def load_state_dict(self, backbone: Backbone, task: str, state: dict[str, torch.Tensor]) -> None:
        """Load ``state`` (already checked against ``state_dict``'s keys and shapes)."""

    def trainable_numel(self, backbone: Backbone, task: str) -> int:
        """Backbone parameters ``task`` trains (the numerator of the paper's "0.41 %")."""
        return 0


class LowRankKind(AdapterKind):
    """A peft LoRA adapter per task on the shared frozen backbone; DoRA with ``use_dora``."""

    low_rank = True

    def __init__(self, name: str, title: str, description: str, *, use_dora: bool):
        super().__init__(name, title, description)
        self.use_dora = use_dora

    def label(self, rank: int | None = None, targets=None) -> str:
        return f"{self.name} r{rank} {''.join(targets or ())}"

    def peft_config(self, cfg: AdapterConfig, vit: nn.Module) -> LoraConfig:
        """peft's config of one task's adapter on the timm model ``vit``."""
        return LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha if cfg.alpha is not None else cfg.rank,
            target_modules=target_module_names(vit, cfg.targets),
            use_dora=self.use_dora,
            lora_dropout=0.0,  # peft's DoRA recomputes the base matmul when dropout > 0
            bias="none",
        )

    def attach(self, backbone: Backbone, task: str, cfg: AdapterConfig) -> None:
        model = backbone.model
        if isinstance(model, PeftModel):  # a later task: the first task's config, copied
            model.add_adapter(task, copy.deepcopy(next(iter(model.peft_config.values()))))
        else:
            backbone.model = get_peft_model(model, self.peft_config(cfg, model), adapter_name=task)

    def route(self, backbone: Backbone, task: str) -> None:
        for layer in _tuner_layers(backbone):
            layer._active_adapter = [task]

    def set_trainable(self, backbone: Backbone, tasks) -> None:
        own = {f".{t}." for t in tasks}
        for name, p in backbone.model.named_parameters():
            p.requires_grad_(any(o in name for o in own) or any(name.endswith(o[:-1]) for o in own))

    def parameters(self, backbone: Backbone, task: str) -> list[nn.Parameter]:
        return [p for n, p in backbone.model.named_parameters()
                if f".{task}." in n or n.endswith(f".{task}")]

    def state_dict(self, backbone: Backbone, task: str, clone: bool = True) -> dict[str, torch.Tensor]:
        state = get_peft_model_state_dict(backbone.model, adapter_name=task)
        return {k: v.detach().clone() if clone else v.detach() for k, v in state.items()}

    def load_state_dict(self, backbone: Backbone, task: str, state: dict[str, torch.Tensor]) -> None:
        result = set_peft_model_state_dict(backbone.model, state, adapter_name=task)
        bad = [k for k in result.unexpected_keys if f".{task}" in k]
        if bad:
            raise ConfigError(f"adapter of task {task!r} does not fit this backbone: unexpected {bad[:3]}")

    def trainable_numel(self, backbone: Backbone, task: str) -> int:
        return sum(v.numel() for v in self.state_dict(backbone, task, clone=False).values())


class WholeBackboneKind(AdapterKind):
    """Every backbone weight trains for the one task: the task owns its backbone copy."""

    owns_backbone = True
    trains_backbone = True

    def __init__(self, name: str, title: str, description: str, *, random_init: bool):
        super().__init__(name, title, description)
        self.random_init = random_init  # an instance flag: full and scratch differ only here

    def state_dict(self, backbone: Backbone, task: str, clone: bool = True) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() if clone else v.detach()
                for k, v in backbone.vit.state_dict().items()}

    def load_state_dict(self, backbone: Backbone, task: str, state: dict[str, torch.Tensor]) -> None:
        backbone.vit.load_state_dict(state, strict=True)

    def trainable_numel(self, backbone: Backbone, task: str) -> int:
        # pruned modules (unused norms, head) do not exist, so do not train
        return sum(p.numel() for p in backbone.parameters())


# adapter.mode -> kind; the order is the config's (ADAPTER_MODES) and the dropdowns'
ADAPTER_KINDS: dict[str, AdapterKind] = {k.name: k for k in (
    LowRankKind("dora", "DoRA", "a low-rank adapter with a learned magnitude per task; "
                "backbone frozen", use_dora=True),
    LowRankKind("lora", "LoRA", "a low-rank adapter per task; backbone frozen", use_dora=False),
    WholeBackboneKind("full", "full fine-tuning", "every backbone weight trains, one copy per task",
                      random_init=False),
    AdapterKind("fixed", "fixed backbone", "no backbone weight trains; only the task heads"),
    WholeBackboneKind("scratch", "from scratch", "random initialization, everything trains, one "
                      "copy per task", random_init=True),
)}


def get_adapter_kind(mode: str) -> AdapterKind:
    """The kind registered as ``mode``; ``ConfigError`` naming the value and the choices."""
    try:
        return ADAPTER_KINDS[mode]
    except (KeyError, TypeError):
        raise ConfigError(f"adapter.mode={mode!r} is not an adapter kind; choose one of "
                          f"{list(ADAPTER_KINDS)}") from None


def kind_of(backbone: Backbone) -> AdapterKind:
    """The adapter kind ``attach_adapters`` gave ``backbone``."""
    return get_adapter_kind(backbone.adapter_cfg.mode)


def attach_adapters(backbone: Backbone, cfg: AdapterConfig, tasks) -> None:
    """Give ``backbone`` what each task needs (an adapter for dora/lora) and set what trains."""
    tasks = list(tasks)
    kind = get_adapter_kind(cfg.mode)
    backbone.adapter_cfg = cfg
    backbone.tasks = tasks
    for t in tasks:
        kind.attach(backbone, t, cfg)
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
    kind_of(backbone).route(backbone, task)


def set_trainable(backbone: Backbone, tasks) -> None:
    """Exactly the backbone tensors that ``tasks`` own train: their adapters (dora/lora), every
    weight (full/scratch) or nothing (fixed)."""
    kind_of(backbone).set_trainable(backbone, tasks)


def adapter_state_dict(backbone: Backbone, task: str, clone: bool = True) -> dict[str, torch.Tensor]:
    """The backbone tensors that ``task`` owns: its adapter, or every weight for full/scratch.

    ``clone=False`` returns views of the live tensors (for hashing without copying).
    """
    return kind_of(backbone).state_dict(backbone, task, clone)


def load_adapter_state_dict(backbone: Backbone, task: str, state: dict[str, torch.Tensor]) -> None:
    """Load what ``adapter_state_dict`` returned; a partial or misshapen state is refused first.

    peft loads non-strictly: without this check missing keys would keep their old values.
    """
    kind = kind_of(backbone)
    want = kind.state_dict(backbone, task, clone=False)
    missing = sorted(want.keys() - state.keys())
    unexpected = sorted(state.keys() - want.keys())
    wrong = [f"{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})"
             for k, v in sorted(want.items()) if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{what} {len(keys)}: {keys[:4]}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ConfigError(f"adapter of task {task!r} does not fit this backbone (adapter {kind.name}): "
                          + "; ".join(parts))
    kind.load_state_dict(backbone, task, state)


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
    adapter_ids = {id(p) for n, p in backbone.named_parameters() if "lora_" in n}
    used = sum(p.numel() for p in backbone.parameters() if id(p) not in adapter_ids)
    base = used + backbone.pruned_params  # the whole network, as the paper counts it
    return ParameterReport(base, kind_of(backbone).trainable_numel(backbone, task))
