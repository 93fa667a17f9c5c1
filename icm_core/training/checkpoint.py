"""Checkpoints: safetensors per task + the resolved config, written atomically.

Layout of a run folder (what ``--checkpoint`` takes)::

    run/
      LATEST                      name of the newest complete checkpoint folder
      ckpt-000300/
        config.yaml               the resolved ExperimentConfig
        task-semseg.safetensors   adapter.* + head.* of one task (metadata: backbone, hash,
                                  adapter mode/rank/alpha/targets)
        trainer.pt                step, optimizer, scheduler, the run's generator state of
                                  every process (tensors only)

A checkpoint folder is complete before ``LATEST`` points at it, so a killed run leaves the
previous checkpoint usable. The frozen backbone is not copied: it is referenced by name and
by a hash of its weights, and a checkpoint is refused when the rebuilt backbone differs.

A checkpoint may come from a stranger: ``LATEST`` must name a ckpt-* folder of its own run,
``config.yaml`` may hold no interpolation (``${oc.env:...}`` would read this process's
environment), and every file is read and checked before anything is loaded into a model, so
a broken checkpoint raises ``ConfigError`` and leaves the model as it was.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from icm_core.codec import coder
from icm_core.config.compose import to_experiment
from icm_core.config.schema import AdapterConfig, ExperimentConfig
from icm_core.errors import ConfigError
from icm_core.files import atomic_path, write_text
from icm_core.models.adapters import get_adapter_kind
from icm_core.models.icm import build_model

FORMAT = "icm-checkpoint-1"
_CKPT = re.compile(r"ckpt-\d+")
TRAINER_KEYS = ("step", "optimizer", "scheduler")
# plus the RNG: "rng" (the run's generator state of each process, in rank order) with
# "rng_device" (cpu, cuda); or, written by 'icm pretrain' and older trainers, "rng_cpu" (the
# global CPU generator) with an optional "rng_cuda" (the global CUDA generators of process 0)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _ckpt_folders(run: Path) -> list[Path]:
    """The run's complete checkpoint folders, oldest first (by step, not by name)."""
    found = [p for p in run.glob("ckpt-*") if _CKPT.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds any checkpoint at all (LATEST, a ckpt-* folder, or is one).

    Only a folder without one may start at step 0 under ``resume=true``.
    """
    run = Path(run_dir)
    return (run / "LATEST").exists() or (run / "config.yaml").exists() or bool(_ckpt_folders(run))


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A run folder (follows LATEST) or a ckpt-* folder -> the checkpoint folder.

    ``LATEST`` must name a direct ckpt-* child of the run: ``../..`` or an absolute path in a
    downloaded run is refused. A run killed between its first checkpoint and ``LATEST`` has
    no ``LATEST``: its newest ckpt-* folder (complete, since it was renamed into place) is used.
    """
    path = Path(path)
    latest = path / "LATEST"
    if latest.is_file():
        name = latest.read_text(errors="replace").strip()
        target = path / name
        if not _CKPT.fullmatch(name) or target.resolve().parent != path.resolve():
            raise ConfigError(f"{str(latest)!r} names {name[:100]!r}; it must name a ckpt-NNNNNN "
                              f"folder inside {str(path)!r}: write the newest one's name into it")
        if not target.is_dir():
            raise ConfigError(f"{str(latest)!r} names {name!r}, which is not in {str(path)!r}: "
                              "write the name of an existing ckpt-* folder into it")
        path = target
    elif not (path / "config.yaml").is_file() and _ckpt_folders(path):
        path = _ckpt_folders(path)[-1]
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{str(path)!r} is not a checkpoint: no config.yaml (give the out_dir of "
                          "'icm train' or one of its ckpt-* folders)")
    return path


def clean_orphans(run_dir: str | Path) -> None:
    """Remove the ``.ckpt-*.partial`` folders and ``.LATEST.*.tmp`` files of a killed save."""
    run = Path(run_dir)
    for p in [*run.glob(".ckpt-*.partial"), *run.glob(".LATEST.*.tmp")]:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def save_checkpoint(run_dir: str | Path, model, step: int, trainer_state: dict | None = None,
                    keep: int = 2) -> Path:
    run_dir = Path(run_dir)
    name = f"ckpt-{step:06d}"
    final = run_dir / name
    tmp = run_dir / f".{name}.partial"
    clean_orphans(run_dir)
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
    old = [p for p in _ckpt_folders(run_dir) if p.name != name]
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _interpolations(node: DictConfig | ListConfig, prefix: str = "") -> list[str]:
    """Dotted keys of every interpolation (``${...}``) in ``node``, none resolved."""
    found = []
    for k in node.keys() if isinstance(node, DictConfig) else range(len(node)):
        key = f"{prefix}{k}"
        if OmegaConf.is_interpolation(node, k):
            found.append(key)
        elif not OmegaConf.is_missing(node, k) and isinstance(node[k], DictConfig | ListConfig):
            found += _interpolations(node[k], key + ".")
    return found


def load_config_file(ckpt: Path) -> ExperimentConfig:
    """A checkpoint's config.yaml -> validated config, with no interpolation resolved.

    ``save_checkpoint`` writes resolved values only; an interpolation is refused, since even
    OmegaConf's built-in resolvers (``oc.env``) read the loading process's environment.
    """
    f = Path(ckpt) / "config.yaml"
    try:
        raw = OmegaConf.load(f)
    except Exception as e:  # YAML syntax, encoding, I/O: a file from elsewhere may hold anything
        raise ConfigError(f"{str(f)!r} is not a readable config ({_first_line(e)}); the checkpoint "
                          "is corrupt: use another ckpt-* folder") from e
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{str(f)!r} holds a {type(raw).__name__}, not a mapping of config fields")
    found = _interpolations(raw)
    if found:
        raise ConfigError(f"{str(f)!r}: {found[:3]} hold interpolations (${{...}}), which are not "
                          "resolved in a checkpoint's config; write plain values there")
    try:
        return to_experiment(OmegaConf.merge(OmegaConf.structured(ExperimentConfig), raw))
    except Exception as e:  # OmegaConf validation errors and ConfigError from the dataclasses
        raise ConfigError(f"{str(f)!r}: {_first_line(e)}") from e


def adapter_signature(a: AdapterConfig) -> dict[str, str]:
    """What fixes the adapter tensors and their meaning (rank, alpha, targets: dora/lora only)."""
    sig = {"adapter_mode": a.mode}
    if get_adapter_kind(a.mode).low_rank:
        sig["adapter_rank"] = str(a.rank)
        sig["adapter_alpha"] = f"{float(a.alpha if a.alpha is not None else a.rank):g}"
        sig["adapter_targets"] = ",".join(sorted(a.targets))
    return sig


def _check_adapter(source: str, theirs: dict[str, str], model) -> None:
    mine = adapter_signature(model.cfg.adapter)
    for key in ("adapter_mode", "adapter_rank", "adapter_alpha", "adapter_targets"):
        if key in theirs and theirs[key] != mine.get(key):
            field = key.removeprefix("adapter_")
            raise ConfigError(f"{source}: adapter {field} is {theirs[key]!r} but this model has "
                              f"adapter.{field}={mine.get(key)!r}; build the model with the "
                              "checkpoint's adapter settings")


def check_compatible(ckpt: Path, cfg: ExperimentConfig, model) -> None:
    """``ConfigError`` unless ``model`` has the checkpoint's backbone, tasks and adapter."""
    if list(model.tasks) != list(cfg.tasks) or model.cfg.backbone.name != cfg.backbone.name:
        raise ConfigError(f"checkpoint {str(ckpt)!r} is for backbone {cfg.backbone.name!r} and tasks "
                          f"{list(cfg.tasks)}; this model has {model.cfg.backbone.name!r} and "
                          f"{list(model.tasks)}")
    _check_adapter(f"checkpoint {str(ckpt)!r}", adapter_signature(cfg.adapter), model)


def read_tasks(ckpt: Path, model) -> dict[str, dict[str, torch.Tensor]]:
    """Every task file of ``ckpt``, read and checked against ``model``; nothing is loaded yet."""
    states = {}
    for task in model.tasks:
        states[task] = read_task(model, task, Path(ckpt) / f"task-{task}.safetensors")
        model.load_task_state_dict(task, states[task], check_only=True)
    return states


def load_checkpoint(path: str | Path, device: str = "cpu", model=None):
    """Rebuild the model a checkpoint was trained with and load every task's weights.

    With ``model`` given, load into it instead, after checking it has the same backbone, tasks
    and adapter. Every task file is checked before the first is loaded.
    """

    ckpt = resolve_checkpoint_dir(path)
    cfg = load_config_file(ckpt)
    if model is None:
        model = build_model(cfg, device)
    else:
        check_compatible(ckpt, cfg, model)
    for task, state in read_tasks(ckpt, model).items():
        model.load_task_state_dict(task, state)
    return model, ckpt


def save_task(model, task: str, path: str | Path, step: int | None = None) -> None:
    """One task's adapter and head as a safetensors file (the backbone is only referenced)."""
    state = {k: v.contiguous().cpu() for k, v in model.task_state_dict(task).items()}
    meta = {"format": FORMAT, "task": task, "backbone": model.cfg.backbone.name,
            "backbone_hash": model.backbone_hash, **adapter_signature(model.cfg.adapter),
            "fingerprint": coder.fingerprint(model, task).hex(), "step": str(step)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def read_task(model, task: str, path: str | Path) -> dict[str, torch.Tensor]:
    """One task file's tensors (on the model's device), its metadata checked against ``model``."""
    f = Path(path)
    if not f.is_file():
        raise ConfigError(f"{str(f)!r}: no weights for task {task!r}; the checkpoint is incomplete")
    try:
        with safe_open(str(f), "pt") as sf:
            meta = sf.metadata() or {}
            state = {k: sf.get_tensor(k) for k in sf.keys()}  # noqa: SIM118 (safe_open has no iter)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{str(f)!r} is not a readable safetensors file ({_first_line(e)}); it is "
                          "truncated or corrupt: use another ckpt-* folder") from e
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
    _check_adapter(str(f), meta, model)
    device = model.heads[task].proj.weight.device
    return {k: v.to(device) for k, v in state.items()}


def load_task(model, task: str, path: str | Path) -> None:
    """Load one task's file into ``model``; every other task stays bit-identical."""
    model.load_task_state_dict(task, read_task(model, task, path))


def load_trainer_state(ckpt: Path, optimizer: torch.optim.Optimizer | None = None) -> dict | None:
    """trainer.pt, checked (and against ``optimizer`` when given); None when there is none."""
    f = Path(ckpt) / "trainer.pt"
    if not f.is_file():
        return None
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle: torch raises many kinds
        raise ConfigError(f"{str(f)!r} is not a readable trainer state ({_first_line(e)}); it is "
                          "truncated or corrupt: use another ckpt-* folder") from e
    missing = [k for k in TRAINER_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ConfigError(f"{str(f)!r} lacks {missing}; it was not written by this trainer")
    step = state["step"]
    if not (isinstance(step, int) or torch.is_tensor(step) and step.numel() == 1
            and not step.is_floating_point()) or int(step) < 0:
        raise ConfigError(f"{str(f)!r}: step {step!r} is not a non-negative integer")
    if "rng" in state:
        rngs = state["rng"]
        if not isinstance(rngs, list | tuple) or not rngs \
                or state.get("rng_device") not in ("cpu", "cuda"):
            rngs = [None]
    elif "rng_cpu" in state:
        rng, cuda = state["rng_cpu"], state.get("rng_cuda", [])
        rngs = [rng, *cuda] if isinstance(cuda, list | tuple) else [None]
        if torch.is_tensor(rng) and rng.numel() != torch.get_rng_state().numel():
            rngs = [None]
    else:
        raise ConfigError(f"{str(f)!r} lacks the RNG state ('rng'); it was not written by this trainer")
    if not all(torch.is_tensor(r) and r.dtype == torch.uint8 and r.dim() == 1 for r in rngs):
        raise ConfigError(f"{str(f)!r}: the saved RNG states are not torch generator states")
    if optimizer is not None:
        _check_optimizer_state(f, state["optimizer"], optimizer)
    return state


def rank_rng_state(state: dict, rank: int, world: int, generator: torch.Generator,
                   ckpt: str | Path = "checkpoint") -> torch.Tensor | None:
    """Process ``rank``'s saved generator state in ``state`` (from ``load_trainer_state``),
    checked to fit ``generator``; None when the checkpoint cannot continue this process's
    draws: written by another number of processes or on another kind of device.

    A state of the older format (``rng_cpu``, the global CPU generator the rate noise was then
    drawn from) continues a single CPU process.
    """
    if "rng" in state:
        states, kind = list(state["rng"]), state["rng_device"]
    else:
        states, kind = [state["rng_cpu"]], "cpu"
    if len(states) != world or kind != generator.device.type:
        return None
    mine = states[rank]
    if mine.numel() != generator.get_state().numel():
        raise ConfigError(f"{str(Path(ckpt) / 'trainer.pt')!r}: the RNG state of process {rank} has "
                          f"{mine.numel()} bytes, a {kind} generator's {generator.get_state().numel()};"
                          " the file is corrupt: use another ckpt-* folder")
    return mine


def _check_optimizer_state(f: Path, saved, optimizer: torch.optim.Optimizer) -> None:
    """Same parameter groups, sizes and per-parameter state shapes as ``optimizer``."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    mine = [len(g["params"]) for g in optimizer.param_groups]
    theirs = [len(g.get("params", ())) for g in groups] if isinstance(groups, list) else None
    if theirs != mine:
        raise ConfigError(f"{str(f)!r}: optimizer parameter groups of sizes {theirs}, this model's "
                          f"have {mine}; the checkpoint is from another model")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ids = [i for g in groups for i in g["params"]]
    per_param = saved.get("state", {})
    if not isinstance(per_param, dict) or not all(isinstance(v, dict) for v in per_param.values()):
        raise ConfigError(f"{str(f)!r}: the optimizer state is not a mapping per parameter")
    for p, i in zip(params, ids, strict=True):
        for k, v in per_param.get(i, {}).items():
            if torch.is_tensor(v) and v.dim() > 0 and v.shape != p.shape:
                raise ConfigError(f"{str(f)!r}: optimizer {k} of parameter {i} has shape "
                                  f"{tuple(v.shape)}, the parameter {tuple(p.shape)}")


__all__ = ["save_checkpoint", "load_checkpoint", "load_trainer_state", "resolve_checkpoint_dir",
           "save_task", "load_task", "read_task", "read_tasks", "has_checkpoint", "clean_orphans",
           "check_compatible", "load_config_file", "adapter_signature", "rank_rng_state"]
