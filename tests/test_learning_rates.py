"""Parameter groups get their own learning rates: heads (from scratch) at ``train.head_lr``, the
pretrained backbone under full fine-tuning at ``train.backbone_lr``, adapters and a scratch
backbone at ``train.lr`` (issue 11: Full FT at the adapters' 1e-3 undid what pretraining gave)."""

import pytest

from icm_core.training.trainer import Trainer
from tests.helpers import tiny_config

LRS = ["train.lr=1e-3", "train.head_lr=3e-3", "train.backbone_lr=1e-4", "train.max_steps=10"]


def _groups(tmp_path, adapter: str) -> dict[str, tuple[float, int]]:
    cfg = tiny_config(f"adapter={adapter}", *LRS, f"out_dir={tmp_path}")
    opt = Trainer(cfg, device="cpu").optimizer
    return {g["name"]: (g["lr"], len(g["params"])) for g in opt.param_groups}


@pytest.mark.parametrize("adapter, backbone_lr", [("full", 1e-4), ("scratch", 1e-3),
                                                  ("dora_r8_qkv", 1e-3)])
def test_each_group_has_its_learning_rate(tmp_path, adapter, backbone_lr):
    groups = _groups(tmp_path, adapter)
    assert groups["backbone"][0] == pytest.approx(backbone_lr)
    assert groups["heads"][0] == pytest.approx(3e-3)
    assert groups["quantiles"][0] == pytest.approx(1e-3)
    assert groups["backbone"][1] > 0 and groups["heads"][1] > 0


def test_backbone_lr_must_be_positive():
    from icm_core.errors import ConfigError

    with pytest.raises(ConfigError, match="train.backbone_lr"):
        tiny_config("train.backbone_lr=0")


def test_quick_preset_fine_tunes_the_backbone_gentler_than_its_adapters():
    from icm_core.config import load_config

    t = load_config(["experiment=quick"]).train
    assert t.backbone_lr is not None and t.backbone_lr < t.lr
    assert load_config(["experiment=paper"]).train.backbone_lr is None  # 2e-5 everywhere


def test_quick_preset_backbone_lr_is_the_one_chosen_on_validation_scenes():
    import json
    from pathlib import Path

    from icm_core.config import load_config

    root = Path(__file__).resolve().parents[1]
    doc = json.loads((root / "benchmarks" / "results" / "backbone_lr_val.json").read_text())
    assert " val scenes " in doc["held_out"]
    best = min(doc["mean_rank"], key=lambda lr: (doc["mean_rank"][lr], float(lr)))
    assert float(best) == doc["choice"]["backbone_lr"]
    assert load_config(["experiment=quick"]).train.backbone_lr == doc["choice"]["backbone_lr"]
