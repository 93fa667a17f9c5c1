"""Setup panel, its readout (icm_core.evaluation.cost, counts from icm_core.evaluation.accounting)
and the override helpers (icm_core.workspace.queue).

Panels are driven as a user would: widget values set, buttons clicked; state is then read.
"""

import dataclasses

import ipywidgets as W
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from icm_core.config import load_config
from icm_core.config import schema as C
from icm_core.config.overrides import format_value, parse_overrides, split_command_line
from icm_core.errors import ConfigError
from icm_core.evaluation.accounting import account, decoder_gflops, storage_for_tasks
from icm_core.evaluation.cost import model_info
from icm_core.models.icm import build_model
from icm_core.workspace.queue import run_name
from tests.helpers import TINY
from widgets.setup import SetupPanel, config_fields

OVERRIDE_SETS = [list(TINY), [*TINY, "adapter.rank=4"], [*TINY, "adapter.targets=[q,v]"],
                 [*TINY, "adapter.rank=4", "adapter.targets=[q,v]", "adapter.mode=lora"],
                 [*TINY, "adapter=fixed"]]


@pytest.mark.parametrize("overrides", OVERRIDE_SETS, ids=lambda o: " ".join(o[len(TINY):]) or "tiny")
def test_readout_equals_icm_info(overrides):
    panel = SetupPanel.from_overrides(overrides)
    info = model_info(overrides)
    readout = panel.readout()
    assert {k: readout[k] for k in info} == info
    assert readout["weights_badge"] == "random" and "RANDOM" in readout["weights_notice"]
    # what the panel shows is that readout
    assert f"{info['trainable_backbone_params']:,} of {info['backbone_params']:,}" in panel.readout_html.value
    assert f"{info['adapter_bytes']:,} B" in panel.readout_html.value
    assert panel.message.value == ""


def test_rank_and_targets_change_the_trainable_count_by_the_lora_formula():
    """DoRA on q/k/v of a 4-block EVA-02-tiny (width 192): r * (in + out) + out per projection."""
    def trainable(*extra):
        return SetupPanel.from_overrides([*TINY, *extra]).readout()["trainable_backbone_params"]

    per_proj = lambda r: r * (192 + 192) + 192  # noqa: E731 (A, B and DoRA's magnitude)
    assert trainable("adapter.rank=4", "adapter.targets=[q,v]") == 4 * 2 * per_proj(4)
    assert trainable("adapter.rank=8") == 4 * 3 * per_proj(8)


def test_storage_is_one_backbone_and_k_task_files_against_k_copies():
    counts = {"backbone_params": 1000, "head_params": 50}
    s = storage_for_tasks(counts, 120, "dora", 4)
    assert s["storage_bytes"] == 4000 + 4 * (200 + 120)
    assert s["full_copies_bytes"] == 4 * (4000 + 200)
    assert s["ratio"] == pytest.approx(5280 / 16800)
    full = storage_for_tasks(counts, 120, "full", 4)  # a backbone per task: no sharing
    assert full["storage_bytes"] == full["full_copies_bytes"] == 16800


@pytest.mark.parametrize("overrides", [list(TINY), [*TINY, "adapter=full"], ["experiment=quick_vr"]],
                         ids=["tiny", "full", "quick_vr"])
def test_icm_info_and_the_readout_count_with_the_accounting(overrides):
    """One accounting: icm info and the panel print what icm bench counts, not a copy of it."""
    info, a = model_info(overrides), account(overrides)
    for key in ("backbone_params", "trainable_backbone_params", "trainable_percent",
                "adapter_bytes", "head_params", "storage"):
        assert info[key] == getattr(a, key), key
    assert info["decoder_gflops"] == a.flops["decoder"] / 1e9
    assert info["image_size"] == a.size and info["storage"]["k"] == a.k


def test_decoder_gflops_counts_the_real_decoder_at_the_padded_size():
    cfg = load_config([*TINY, "data.size=[64,64]"])
    model = build_model(cfg)
    dec = model.heads["semseg"].decoder
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        dec(torch.zeros(1, 16, 4, 4), (64, 64))  # patch 16: a 4x4 latent for 64x64
    assert decoder_gflops(cfg) == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-12)
    assert decoder_gflops(cfg, (50, 60)) == decoder_gflops(cfg)  # padded to 64x64 as the model does
    # the output projection runs at half resolution: 2 * C_last * channels * 32 * 32 FLOPs
    depth = load_config([*TINY, "task=depth"])
    diff = (decoder_gflops(cfg) - decoder_gflops(depth)) * 1e9
    assert diff == pytest.approx(2 * 16 * (12 - 1) * 32 * 32)


def test_weights_badge_follows_the_backbone():
    panel = SetupPanel.from_overrides([*TINY, "backbone=tiny_synthetic"])
    r = panel.readout()
    assert r["weights_source"] == "synthetic"
    assert r["weights_badge"] == "synthetic"
    assert "synthetic scenes" in r["weights_notice"]
    assert "synthetic</span>" in panel.readout_html.value


def test_every_config_field_has_a_widget_of_its_type():
    panel = SetupPanel.from_overrides(TINY, live_readout=False)
    leaves = {}

    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            if f.name in ("backbone", "adapter", "model", "data", "train"):
                walk(type(getattr(C.ExperimentConfig(), f.name)), f"{f.name}.")
            else:
                leaves[prefix + f.name] = f.metadata["help"]

    walk(C.ExperimentConfig, "")
    assert set(panel.fields) == set(leaves) - {"out_dir", "resume"}
    for key, fw in panel.fields.items():
        assert fw.help == leaves[key]
    assert isinstance(panel.fields["adapter.mode"].widget, W.Dropdown)
    assert list(panel.fields["adapter.mode"].widget.options) == list(C.ADAPTER_MODES)
    assert panel.fields["adapter.mode"].widget.tooltip.startswith("dora, lora")
    assert list(panel.fields["adapter.targets"].buttons) == ["q", "k", "v", "o", "up", "down"]
    assert isinstance(panel.fields["model.inter_sup"].widget, W.Checkbox)
    assert isinstance(panel.fields["train.max_steps"].widget, W.IntText)
    assert isinstance(panel.fields["lmbda"].widget, W.FloatText)
    assert panel.fields["data.size"].value == [64, 64]
    assert set(panel.groups) == {"experiment", "backbone", "adapter", "model", "data", "train", "task"}
    assert "quick" in [v for _, v in panel.groups["experiment"].options]


def test_a_new_config_field_appears_without_widget_code(monkeypatch):
    @dataclasses.dataclass
    class Train2(C.TrainConfig):
        warmup: int = C._help("warmup steps", 0)

    @dataclasses.dataclass
    class Exp2(C.ExperimentConfig):
        train: Train2 = dataclasses.field(default_factory=Train2)

    monkeypatch.setattr(C, "ExperimentConfig", Exp2)
    train = dict(config_fields())["train"]
    assert ("train.warmup", int, "warmup steps", None) in train


def test_panel_to_command_line_to_panel_is_the_identity():
    panel = SetupPanel.from_overrides(TINY, live_readout=False)
    panel.groups["experiment"].value = "quick"
    panel.fields["adapter.rank"].widget.value = 4                  # number box
    panel.fields["adapter.targets"].buttons["k"].value = False     # toggles -> [q, v]
    panel.fields["adapter.targets"].buttons["up"].value = True
    panel.fields["model.inter_sup"].widget.value = False           # checkbox
    panel.fields["adapter.mode"].widget.value = "lora"             # dropdown
    panel.fields["adapter.alpha"].widget.value = "16"              # optional: Hydra syntax
    panel.fields["data.size"].parts[1].value = 96                  # size: H x W
    panel.fields["lmbda"].widget.value = 0.25
    panel.fields["name"].widget.value = "my run's name"            # needs quoting
    assert panel.message.value == ""
    ov = panel.overrides()
    assert ov[0] == "experiment=quick"
    for o in ("adapter.rank=4", "adapter.targets=[q,v,up]", "model.inter_sup=false", "adapter.mode=lora",
              "adapter.alpha=16.0", "data.size=[128,96]", "lmbda=0.25"):
        assert o in ov
    cmd = panel.command_line()
    assert cmd.startswith("icm train experiment=quick ")
    again = SetupPanel.from_command_line(cmd, live_readout=False)
    assert again.overrides() == ov
    assert again.config() == panel.config()
    cfg = panel.config()
    assert (cfg.adapter.rank, cfg.adapter.targets, cfg.adapter.alpha, cfg.data.size, cfg.name) == (
        4, ["q", "v", "up"], 16.0, [128, 96], "my run's name")
    assert SetupPanel.from_overrides(ov, live_readout=False).overrides() == ov
    # the command box shows it; Load reads it back
    fresh = SetupPanel.from_overrides(TINY, live_readout=False)
    fresh.command.value = panel.command.value
    fresh.load_button.click()
    assert fresh.overrides() == ov


def test_a_field_set_back_to_the_preset_value_is_no_override():
    panel = SetupPanel.from_overrides([*TINY, "adapter.rank=4"], live_readout=False)
    panel.fields["adapter.rank"].widget.value = 8  # the default preset's rank
    assert not any(o.startswith("adapter.rank") for o in panel.overrides())
    panel.groups["adapter"].value = "dora_r16_qkv"  # so the preset's rank shows
    assert panel.fields["adapter.rank"].value == 16


def test_yaml_config_file_and_run_folder_load_back(tmp_path):
    panel = SetupPanel.from_overrides([*TINY, "adapter.rank=4", "adapter.targets=[q,v]", "lmbda=2"],
                                    live_readout=False)
    want = panel.config()
    other = SetupPanel.from_overrides(TINY, live_readout=False)
    other.load(panel.yaml())                     # YAML text
    assert other.config() == want
    f = tmp_path / "mine.yaml"
    f.write_text(panel.yaml())
    other = SetupPanel.from_overrides(TINY, live_readout=False)
    other.command.value = str(f)                 # a config file, through the Load button
    other.load_button.click()
    assert other.message.value == "" and other.config() == want
    run = tmp_path / "run"
    (run / "ckpt-000004").mkdir(parents=True)
    (run / "ckpt-000004" / "config.yaml").write_text(panel.yaml().replace("out_dir: outputs",
                                                                         f"out_dir: {run}"))
    (run / "LATEST").write_text("ckpt-000004")
    other = SetupPanel.from_overrides(TINY, live_readout=False)
    other.load(run)                              # a run folder (icm train's: no queue record)
    assert other.config() == want


def test_bad_values_show_the_error_text_inline():
    panel = SetupPanel.from_overrides(TINY)
    panel.fields["adapter.rank"].widget.value = 0
    assert "ConfigError: adapter.rank=0 must be &gt;= 1" in panel.message.value
    assert "Traceback" not in panel.message.value
    assert "invalid" in panel.readout_html.value
    with pytest.raises(ConfigError):
        panel.readout()
    panel.fields["adapter.rank"].widget.value = 2
    assert panel.message.value == "" and panel.readout()["adapter"]["rank"] == 2
    # an invalid combination of valid values
    panel.command.value = "icm train adapter=full task=nyud_all data=nyud"
    panel.load_button.click()
    assert "trains the whole backbone" in panel.message.value
    # bad syntax in a text box, and an unknown key
    panel.fields["backbone.depth"].widget.value = "[1,"
    assert "backbone.depth=[1," in panel.message.value
    panel.command.value = "icm train adapter.rnak=4"
    panel.load_button.click()
    assert "'adapter.rnak': not a config field" in panel.message.value


def test_override_values_round_trip_through_hydra_syntax():
    for v in ["a b", "true", "1", "null", "it's", "x\\y", "C:\\dir\\", "runs/a", "", [1, 2],
              2e-05, None, False, ["q", "v"], 0.1]:
        assert parse_overrides([f"k={format_value(v)}"]) == [("k", v)]
    assert split_command_line("icm train a=1 'b=[x,y]'") == ["a=1", "b=[x,y]"]
    with pytest.raises(ConfigError, match="sweeps"):
        parse_overrides(["lmbda=1,2"])
    with pytest.raises(ConfigError, match="not an override"):
        split_command_line("icm train -m lmbda=1,2")
    assert run_name(["experiment=quick", "adapter.rank=4", "lmbda=0.5", "adapter.targets=[q,v]"]) == \
        "quick-rank4-lmbda0.5-targets-q-v"
    long = run_name(TINY)
    assert len(long) <= 60 and long != run_name([*TINY, "lmbda=2"])
