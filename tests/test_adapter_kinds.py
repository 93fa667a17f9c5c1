"""Adapter kinds are objects (icm_core.models.adapters): their flags, the registry, and that the
models they build behave as the mode strings did (trainable counts, task files, labels)."""

from dataclasses import fields

import pytest
import torch
from torch import nn

from icm_core.config import schema as C
from icm_core.errors import ConfigError
from icm_core.evaluation.accounting import storage_for_tasks
from icm_core.evaluation.results import run_label as _base_label
from icm_core.evaluation.results import run_settings as settings_of
from icm_core.inspection import dora
from icm_core.models import adapters as ad
from icm_core.models.adapters import ADAPTER_KINDS, AdapterKind, get_adapter_kind
from icm_core.models.backbone import Backbone
from icm_core.models.icm import build_model
from icm_core.studies.ablation import config_label, expand_grid
from icm_core.training.checkpoint import adapter_signature
from tests.helpers import TINY, tiny_config
from widgets.setup import SetupPanel

# name: (title, low_rank, owns_backbone, trains_backbone, random_init, fine_tunes_pretrained, label)
EXPECTED = {
    "dora": ("DoRA", True, False, False, False, False, "dora r8 qkv"),
    "lora": ("LoRA", True, False, False, False, False, "lora r8 qkv"),
    "full": ("full fine-tuning", False, True, True, False, True, "full"),
    "fixed": ("fixed backbone", False, False, False, False, False, "fixed"),
    "scratch": ("from scratch", False, True, True, True, False, "scratch"),
}
PER_PROJ = lambda r: r * (192 + 192) + 192  # noqa: E731 (EVA-02-tiny width 192: A, B, DoRA's m)


def test_registry_is_the_configs_choice_list():
    assert tuple(ADAPTER_KINDS) == C.ADAPTER_MODES
    assert C.choices_of(C.AdapterConfig, "mode") == C.ADAPTER_MODES
    # the two facts the config layer validates with, equal to the kinds' flags
    assert C.LOW_RANK_MODES == tuple(n for n, k in ADAPTER_KINDS.items() if k.low_rank)
    assert C.BACKBONE_OWNING_MODES == tuple(n for n, k in ADAPTER_KINDS.items() if k.owns_backbone)
    assert [f.name for f in fields(C.AdapterConfig)][0] == "mode"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_kind_has_its_attributes(name):
    k = get_adapter_kind(name)
    assert isinstance(k, AdapterKind) and k.name == name and k is ADAPTER_KINDS[name]
    got = (k.title, k.low_rank, k.owns_backbone, k.trains_backbone, k.random_init,
           k.fine_tunes_pretrained, k.label(8, ["q", "k", "v"]))
    assert got == EXPECTED[name]
    assert k.description and repr(k).endswith(f"({name!r})")
    assert getattr(k, "use_dora", None) == {"dora": True, "lora": False}.get(name)


@pytest.mark.parametrize("bad", ["DoRA", "qlora", "", None, ["dora"]])
def test_unknown_mode_is_a_config_error_naming_value_and_choices(bad):
    with pytest.raises(ConfigError) as e:
        get_adapter_kind(bad)
    assert f"adapter.mode={bad!r}" in str(e.value)
    assert str(list(C.ADAPTER_MODES)) in str(e.value)


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_models_behave_as_the_mode_strings_did(mode):
    """Trainable counts as tests/test_models.py and test_widgets_setup.py check them, and the
    task file: adapters for dora/lora, the whole backbone for full/scratch, nothing for fixed."""
    tasks = "tasks=[semseg,depth]" if not get_adapter_kind(mode).owns_backbone else "tasks=[depth]"
    m = build_model(tiny_config(f"adapter.mode={mode}", tasks))
    kind = ad.kind_of(m.backbone)
    assert kind is get_adapter_kind(mode)
    backbone = list(m.backbone.parameters())
    report = m.trainable_parameters("depth")
    used = report.backbone_params - 2 * 192  # EVA-02-tiny's pooling norm is pruned
    own = kind.state_dict(m.backbone, "depth")
    if kind.low_rank:
        per_proj = PER_PROJ(8) - (192 if mode == "lora" else 0)  # LoRA has no magnitude
        assert report.trainable_backbone_params == 4 * 3 * per_proj  # 4 blocks, q k v
        assert own and all(".depth" not in k for k in own)  # peft strips the adapter name
        assert set(own) == set(kind.state_dict(m.backbone, "semseg"))
        assert [t for t in m.backbone.model.peft_config] == ["semseg", "depth"]
        cfgs = list(m.backbone.model.peft_config.values())  # the second task's config is the first's
        assert (cfgs[0].r, cfgs[0].use_dora, cfgs[0].target_modules) == \
               (cfgs[1].r, cfgs[1].use_dora, cfgs[1].target_modules)
        assert cfgs[0].use_dora == (mode == "dora")
        assert not any(p.requires_grad for n, p in m.backbone.named_parameters() if "lora_" not in n)
    else:
        assert report.trainable_backbone_params == (used if kind.trains_backbone else 0)
        assert all(p.requires_grad == kind.trains_backbone for p in backbone)
        assert set(own) == (set(m.backbone.vit.state_dict()) if kind.owns_backbone else set())
    # what a task trains, what it stores and what the report counts agree
    params = kind.parameters(m.backbone, "depth")
    assert sum(p.numel() for p in params) == report.trainable_backbone_params
    assert sum(v.numel() for v in own.values()) >= report.trainable_backbone_params
    assert {k[len("adapter."):] for k in m.task_state_dict("depth") if k.startswith("adapter.")} == set(own)


@pytest.mark.parametrize("mode", ["dora", "full", "fixed"])
def test_task_file_round_trips_through_the_kind(mode):
    torch.manual_seed(0)
    m = build_model(tiny_config(f"adapter.mode={mode}", "tasks=[depth]"))
    kind = ad.kind_of(m.backbone)
    state = kind.state_dict(m.backbone, "depth")
    with torch.no_grad():
        for p in kind.parameters(m.backbone, "depth"):
            p.add_(1.0)
    ad.load_adapter_state_dict(m.backbone, "depth", state)
    back = kind.state_dict(m.backbone, "depth", clone=False)
    assert set(back) == set(state) and all(torch.equal(back[k], v) for k, v in state.items())
    if state:
        with pytest.raises(ConfigError, match=f"adapter {mode}"):
            ad.load_adapter_state_dict(m.backbone, "depth", dict(list(state.items())[1:]))


def test_labels_signatures_settings_and_storage_follow_the_flags():
    assert config_label("dora", 8, ("q", "v")) == "dora r8 qv"
    assert config_label("scratch", 8, ("q", "v")) == "scratch"
    with pytest.raises(ConfigError, match="qlora"):
        config_label("qlora", 8, ("q",))
    assert _base_label({"adapter": "lora", "rank": 4, "targets": ["q", "v"]}) == "lora r4 qv"
    assert _base_label({"adapter": "full", "rank": 4, "decoder": "full"}) == "full full-dec"
    assert _base_label({"adapter": "someone-elses"}) == "someone-elses"  # a foreign results file
    assert _base_label({}) == "?"
    for mode in EXPECTED:
        tasks = ["depth"] if get_adapter_kind(mode).owns_backbone else ["semseg", "depth"]
        a = C.AdapterConfig(mode=mode, rank=4, targets=["q"])
        low = get_adapter_kind(mode).low_rank
        assert set(adapter_signature(a)) == ({"adapter_mode", "adapter_rank", "adapter_alpha",
                                              "adapter_targets"} if low else {"adapter_mode"})
        cfg = tiny_config(f"adapter.mode={mode}", f"tasks=[{','.join(tasks)}]")
        s = settings_of(cfg)
        assert (s["rank"] is not None, s["targets"] is not None, s["alpha"]) == (low, low, None)
        own = storage_for_tasks({"backbone_params": 1000, "head_params": 50}, 120, mode, 3)
        assert (own["storage_bytes"] == own["full_copies_bytes"]) == \
            get_adapter_kind(mode).owns_backbone
    # the config refuses what the kinds say cannot work
    with pytest.raises(ConfigError, match="one copy per task"):
        tiny_config("adapter.mode=full", "tasks=[semseg,depth]")
    with pytest.raises(ConfigError, match="adapter.mode=scratch trains from random weights"):
        build_model(tiny_config("adapter.mode=scratch", "backbone.weights=synthetic"))


def test_ablation_grid_gives_rank_and_targets_only_to_low_rank_kinds():
    points = expand_grid(["lora", "fixed"], [4], [("q", "v")], [1.0], base=TINY)
    assert [(p.mode, p.rank, p.targets, p.name) for p in points] == [
        ("lora", 4, ("q", "v"), "lora-r4-qv-lmbda1"), ("fixed", None, None, "fixed-lmbda1")]
    with pytest.raises(ConfigError, match=r"adapter modes \['qlora'\]"):
        expand_grid(["qlora"], [4], [("q",)], [1.0], base=TINY)


def test_setup_readout_shows_rank_only_for_low_rank_kinds():
    lora = SetupPanel.from_overrides([*TINY, "adapter.mode=lora", "adapter.rank=4"]).readout_html.value
    assert "lora, rank 4, q,k,v" in lora
    full = SetupPanel.from_overrides([*TINY, "adapter=full"]).readout_html.value
    assert "full: every backbone weight trains" in full and "rank 8" not in full


class NormsKind(AdapterKind):
    """A kind the registry does not ship: each task trains the backbone's LayerNorms only
    (one backbone copy per task, as its norms are the backbone's own weights)."""

    owns_backbone = True
    trains_backbone = True

    def _norms(self, backbone):
        return {f"{name}.{pn}": p for name, m in backbone.vit.named_modules()
                if isinstance(m, nn.LayerNorm) for pn, p in m.named_parameters(recurse=False)}

    def set_trainable(self, backbone, tasks):
        backbone.requires_grad_(False)
        for p in self._norms(backbone).values():
            p.requires_grad_(True)

    def parameters(self, backbone, task):
        return list(self._norms(backbone).values())

    def state_dict(self, backbone, task, clone=True):
        return {k: v.detach().clone() if clone else v.detach() for k, v in self._norms(backbone).items()}

    def load_state_dict(self, backbone, task, state):
        with torch.no_grad():
            for k, p in self._norms(backbone).items():
                p.copy_(state[k])

    def trainable_numel(self, backbone, task):
        return sum(p.numel() for p in self.parameters(backbone, task))


def test_a_new_kind_is_one_class_and_one_registration(monkeypatch):
    monkeypatch.setitem(ADAPTER_KINDS, "norms", NormsKind("norms", "LayerNorm tuning", "norms train"))
    cfg = tiny_config()
    backbone = Backbone(cfg.backbone)
    a = C.AdapterConfig()
    a.mode = "norms"  # the config's choice list is the other half of a registration
    ad.attach_adapters(backbone, a, ["depth"])
    norms = ADAPTER_KINDS["norms"].parameters(backbone, "depth")
    assert norms and all(p.requires_grad for p in norms)
    assert sum(p.requires_grad for p in backbone.parameters()) == len(norms)
    report = ad.trainable_parameters(backbone, "depth")
    assert 0 < report.trainable_backbone_params == sum(p.numel() for p in norms)
    state = ad.adapter_state_dict(backbone, "depth")
    with torch.no_grad():
        norms[0].add_(1.0)
    ad.load_adapter_state_dict(backbone, "depth", state)
    assert torch.equal(norms[0], next(iter(state.values())))


def test_dora_inspection_refuses_kinds_without_low_rank_adapters():
    m = build_model(tiny_config("adapter=fixed"))
    assert dora.adapted_layers(m) == []
    with pytest.raises(ConfigError, match="adapter.mode='fixed' has no low-rank adapters"):
        dora.dora_view(m, "semseg", "blocks.0.attn.q_proj")
