"""Every ``experiment=`` preset trains a step, shrunk to the tiny random backbone and tiny heads.

Parametrized over the preset files on disk, so a new preset is covered without editing this file.
What makes a preset itself (adapter mode, rank and targets, decoder kind, compression, inter
supervision, tasks) is kept; only sizes shrink. Every trainable parameter must receive a
gradient (DistributedDataParallel fails on any that does not), frozen ones none.
"""

import math
from pathlib import Path

import pytest

import icm_core
from icm_core.config import load_config
from icm_core.training.trainer import Trainer

PRESET_DIR = Path(icm_core.__file__).parent / "conf" / "experiment"
PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def test_the_presets_are_found():
    assert {"paper", "full_ft", "full_dec", "scratch", "fixed"} <= set(PRESETS)


def _shrunk(experiment: str, out_dir: Path):
    preset = load_config([f"experiment={experiment}"])
    n = len(preset.model.decoder_dims)  # 3 stages (low) or 4 (full)
    cfg = load_config([
        f"experiment={experiment}", "backbone=tiny_random", "backbone.weights=none", "data=synthetic",
        "data.size=[64,64]", "data.train_length=4", "data.val_length=1", "train.batch_size=2",
        "model.prelim_width=8", "model.latent_channels=8", "model.hyper_channels=8",
        "model.decoder_heads=2", "model.decoder_dims=[" + ",".join(["8"] * n) + "]",
        "model.decoder_depths=[" + ",".join(["1"] * n) + "]", f"out_dir={out_dir}"])
    return preset, cfg


@pytest.mark.parametrize("experiment", PRESETS)
def test_preset_trains_one_step_at_tiny_size(experiment, tmp_path):
    preset, cfg = _shrunk(experiment, tmp_path)
    same = ("adapter", "tasks", "lmbda")
    assert [getattr(cfg, k) for k in same] == [getattr(preset, k) for k in same]
    for k in ("decoder", "compression", "inter_sup"):
        assert getattr(cfg.model, k) == getattr(preset.model, k), k
    assert cfg.backbone.depth == 4 and cfg.data.name == "synthetic"

    trainer = Trainer(cfg, device="cpu")
    stats = trainer.train_step(0)
    assert math.isfinite(stats["loss"]) and stats["loss"] > 0

    model, task = trainer.model, trainer.tasks[0]
    mode = cfg.adapter.mode
    backbone = dict(model.backbone.named_parameters())
    if mode in ("dora", "lora"):
        should = {n for n in backbone if "lora_" in n and f".{task}" in n}
    elif mode in ("full", "scratch"):
        should = set(backbone)
    else:
        should = set()
    assert {n for n, p in backbone.items() if p.requires_grad} == should
    for name, p in model.named_parameters():
        if p.requires_grad:  # all of them, or DDP stops at step 2
            assert p.grad is not None, f"{name} trains but gets no gradient"
        else:
            assert p.grad is None, f"{name} is frozen but got a gradient"
    assert any(backbone[n].grad.abs().sum() > 0 for n in should) or mode == "fixed"
    head = [p for p in model.heads[task].parameters()]
    assert all(p.requires_grad for p in head) and any(p.grad.abs().sum() > 0 for p in head)
