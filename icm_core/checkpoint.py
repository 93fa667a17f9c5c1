"""Checkpoints: safetensors per task + the resolved config, written atomically.

Layout of a run folder (what ``--checkpoint`` takes)::

    run/
      LATEST                      name of the newest complete checkpoint folder
      ckpt-000300/
        config.yaml               the resolved ExperimentConfig
        task-semseg.safetensors   adapter.* + head.* of one task (metadata: backbone, hash)
        trainer.pt                step, optimizer, scheduler, RNG states (tensors only)

A checkpoint folder is complete before ``LATEST`` points at it, so a killed run leaves the
previous checkpoint usable. The frozen backbone is not copied: it is referenced by name and
by a hash of its weights, and a checkpoint is refused when the rebuilt backbone differs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from icm_core.config import ExperimentConfig, to_experiment
from icm_core.errors import ConfigError
from icm_core.io import atomic_path, write_text

FORMAT = "icm-checkpoint-1"


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A run folder (follows LATEST) or a ckpt-* folder -> the checkpoint folder."""
    path = Path(path)
    if (path / "LATEST").is_file():
        path = path / (path / "LATEST").read_text().strip()
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{str(path)!r} is not a checkpoint: no config.yaml (give the out_dir of "
                          "'icm train' or one of its ckpt-* folders)")
    return path


def save_checkpoint(run_dir: str | Path, model, step: int, trainer_state: dict | None = None,
                    keep: int = 2) -> Path:
    run_dir = Path(run_dir)
    name = f"ckpt-{step:06d}"
    final = run_dir / name
    tmp = run_dir / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = OmegaConf.structured(model.cfg)
    (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    for task in model.tasks:
        save_task(model, task, tmp / f"task-{task}.safetensors", step=step)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    write_text(run_dir / "LATEST", name)
    old = sorted(p for p in run_dir.glob("ckpt-*") if p.is_dir() and p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_config_file(ckpt: Path) -> ExperimentConfig:
    schema = OmegaConf.structured(ExperimentConfig)
    return to_experiment(OmegaConf.merge(schema, OmegaConf.load(ckpt / "config.yaml")))


def load_checkpoint(path: str | Path, device: str = "cpu", model=None):
    """Rebuild the model a checkpoint was trained with and load every task's weights.

    With ``model`` given, load into it instead, after checking it has the same backbone and tasks.
    """
    from icm_core.models.icm import build_model

    ckpt = resolve_checkpoint_dir(path)
    cfg = load_config_file(ckpt)
    if model is None:
        model = build_model(cfg, device)
    elif list(model.tasks) != list(cfg.tasks) or model.cfg.backbone.name != cfg.backbone.name:
        raise ConfigError(f"checkpoint {str(ckpt)!r} is for backbone {cfg.backbone.name!r} and tasks "
                          f"{list(cfg.tasks)}; this model has {model.cfg.backbone.name!r} and "
                          f"{list(model.tasks)}")
    for task in model.tasks:
        f = ckpt / f"task-{task}.safetensors"
        if not f.is_file():
            raise ConfigError(f"checkpoint {str(ckpt)!r} has no weights for task {task!r} ({f.name})")
        load_task(model, task, f)
    return model, ckpt


def save_task(model, task: str, path: str | Path, step: int | None = None) -> None:
    """One task's adapter and head as a safetensors file (the backbone is only referenced)."""
    state = {k: v.contiguous().cpu() for k, v in model.task_state_dict(task).items()}
    meta = {"format": FORMAT, "task": task, "backbone": model.cfg.backbone.name,
            "backbone_hash": model.backbone_hash, "adapter_mode": model.cfg.adapter.mode,
            "fingerprint": model.fingerprint(task).hex(), "step": str(step)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def load_task(model, task: str, path: str | Path) -> None:
    """Load one task's file into ``model``; every other task stays bit-identical."""
    from safetensors import safe_open

    f = Path(path)
    with safe_open(str(f), "pt") as sf:
        meta = sf.metadata() or {}
    if meta.get("task") not in (None, task):
        raise ConfigError(f"{f} holds task {meta.get('task')!r}, not {task!r}")
    if meta.get("backbone") != model.cfg.backbone.name:
        raise ConfigError(f"{f}: trained on backbone {meta.get('backbone')!r}, not "
                          f"{model.cfg.backbone.name!r}")
    if meta.get("backbone_hash") != model.backbone_hash:
        raise ConfigError(
            f"{f}: trained on backbone weights {meta.get('backbone_hash')}, but the backbone built "
            f"here has {model.backbone_hash} (backbone.weights={model.cfg.backbone.weights!r}); "
            "give the same weights file, or go online for hub weights")
    device = model.heads[task].proj.weight.device
    model.load_task_state_dict(task, {k: v.to(device) for k, v in load_file(str(f)).items()})


def load_trainer_state(ckpt: Path) -> dict | None:
    f = ckpt / "trainer.pt"
    return torch.load(f, map_location="cpu", weights_only=True) if f.is_file() else None


__all__ = ["save_checkpoint", "load_checkpoint", "load_trainer_state", "resolve_checkpoint_dir",
           "save_task", "load_task"]
