"""What a configuration costs, computed without training: the Setup panel's live readout.

Everything comes from the meta device (shapes, no memory, no weights): the trainable share of
the backbone and the adapter's safetensors size are ``icm info``'s own numbers
(``icm_core.evaluation.cost.model_info``), the decoder's FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` on a meta build of the decoder (it counts matrix
multiplications and convolutions, 2 FLOPs per multiply-add; interpolations, normalizations
and activations are not counted). Results are cached by overrides, so the panel can recompute
on every change.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

from icm_core.config import load_config
from icm_core.config.schema import ExperimentConfig
from icm_core.models.adapters import adapter_state_dict, get_adapter_kind

FLOAT32_BYTES = 4  # every parameter of a built model is float32 (bf16 only under autocast)
WEIGHT_BADGES = {"random": "random", "synthetic": "synthetic-pretrained"}  # anything else: real


def decoder_gflops(cfg: ExperimentConfig, size: tuple[int, int] | list[int] | None = None,
                   task: str | None = None) -> float:
    """GFLOPs (1e9) of one task decoder decoding one image of ``size`` (H, W; default
    ``cfg.data.size``): the latent it receives is the padded image over the patch size, as in
    ``ICMModel``; ``task`` (default: the first) fixes the output channels."""
    from icm_core.models.icm import HYPERPRIOR_STRIDE
    from icm_core.tasks.registry import get_task, resolve_tasks

    m, p = cfg.model, cfg.backbone.patch_size
    h, w = (size if size is not None else cfg.data.size)
    task = task or resolve_tasks(cfg.tasks, cfg.data.name)[0]
    pad = p * HYPERPRIOR_STRIDE
    latent = (-(-h // pad) * pad // p, -(-w // pad) * pad // p)
    return _decoder_gflops(m.latent_channels, get_task(task).out_channels(cfg.data.name),
                           tuple(m.decoder_dims), tuple(m.decoder_depths), m.decoder_heads,
                           m.decoder, latent, p)


@functools.lru_cache(maxsize=256)
def _decoder_gflops(latent_channels: int, out_channels: int, dims: tuple, depths: tuple, heads: int,
                    kind: str, latent: tuple[int, int], patch: int) -> float:
    """The count itself (seconds on the meta device: torch decomposes every op in Python)."""
    from icm_core.models.decoder import TransformerDecoder

    with torch.device("meta"):
        dec = TransformerDecoder(latent_channels, out_channels, dims, depths, heads, kind)
        y = torch.empty(1, latent_channels, *latent)
    for stage in dec.stages:  # the decoder reads its fusion weights' values (AttentionMaps.alpha),
        if stage.alpha is not None:  # which meta tensors have not: 0-dim CPU ones mix with meta
            stage.alpha = torch.nn.Parameter(torch.tensor(0.1))
    with torch.device("meta"):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            dec(y, (latent[0] * patch, latent[1] * patch))
    return counter.get_total_flops() / 1e9


def weights_badge(source: str) -> str:
    """``weights_source`` -> the badge the Setup panel shows: random, synthetic-pretrained, real."""
    return WEIGHT_BADGES.get(source, "real")


def storage(info: dict, k: int) -> dict:
    """Bytes to keep ``k`` tasks: one frozen backbone + k task files, against k full copies.

    ``info`` is ``model_info``'s dict. Backbone and heads are counted as float32 parameters
    (the whole published network, as the paper counts it); the adapter as its real
    safetensors bytes. Full/scratch fine-tuning needs a backbone per task: no sharing.
    """
    backbone = info["backbone_params"] * FLOAT32_BYTES
    head = info["head_params"] * FLOAT32_BYTES
    own_backbone = get_adapter_kind(info["adapter"]["mode"]).owns_backbone
    per_task = head + (backbone if own_backbone else info["adapter_bytes"])  # fixed: 0 bytes
    total = (0 if own_backbone else backbone) + k * per_task
    copies = k * (backbone + head)
    return {"storage_tasks": k, "storage_backbone_bytes": backbone, "storage_per_task_bytes": per_task,
            "storage_bytes": total, "storage_full_copies_bytes": copies,
            "storage_ratio": total / copies}


@functools.lru_cache(maxsize=512)
def compose(overrides: tuple[str, ...]) -> ExperimentConfig:
    """``load_config`` cached by overrides (Hydra composes in ~0.5 s): never mutate the result."""
    return load_config(list(overrides))


@functools.lru_cache(maxsize=256)
def _readout(overrides: tuple[str, ...]) -> dict:
    from icm_core.evaluation.cost import model_info
    from icm_core.models.backbone import weights_notice
    from icm_core.tasks.registry import DATASET_TASKS

    cfg = compose(overrides)
    info = model_info(list(overrides))
    k = len(DATASET_TASKS[cfg.data.name])
    return {**info, **storage(info, k),
            "image_size": list(cfg.data.size),
            "decoder_gflops": decoder_gflops(cfg),
            "weights_badge": weights_badge(info["weights_source"]),
            "weights_notice": weights_notice(cfg.backbone)}


def setup_readout(overrides) -> dict:
    """Everything the Setup panel shows for ``overrides`` (``ConfigError`` when they are invalid):
    ``model_info``'s fields unchanged, the storage for the dataset's K tasks against K full
    copies (``storage_*``), ``decoder_gflops`` at ``data.size``, and the backbone's
    ``weights_badge`` (random / synthetic-pretrained / real) with its ``weights_notice``."""
    return copy.deepcopy(_readout(tuple(overrides)))


__all__ = ["compose", "decoder_gflops", "setup_readout", "storage", "weights_badge"]


def model_info(overrides) -> dict:
    """The resolved model described without building it in memory (meta device, no weights)."""
    from icm_core.config import load_config
    from icm_core.models.backbone import weights_available, weights_notice, weights_source
    from icm_core.models.icm import build_model, serialized_size

    cfg = load_config(overrides)
    model = build_model(cfg, "meta")
    report = model.trainable_parameters(model.tasks[0])
    return {
        "experiment": cfg.name,
        "backbone": cfg.backbone.name,
        "pretrained": weights_available(cfg.backbone),
        "weights_source": weights_source(cfg.backbone),
        "weights_notice": weights_notice(cfg.backbone),
        "adapter": {"mode": cfg.adapter.mode, "rank": cfg.adapter.rank, "targets": list(cfg.adapter.targets)},
        "backbone_params": report.backbone_params,
        "trainable_backbone_params": report.trainable_backbone_params,
        "trainable_percent": round(report.trainable_percent, 4),
        "adapter_bytes": serialized_size(adapter_state_dict(model.backbone, model.tasks[0])),
        "head_params": sum(p.numel() for p in model.heads[model.tasks[0]].parameters()),
        "tasks": list(model.tasks),
        "dataset": cfg.data.name,
        "compression": cfg.model.compression,
        "decoder": cfg.model.decoder,
        "variable_rate": model.variable_rate,
        # variable rate: rates 0 .. 1 code at the anchors' lambdas, lowest first
        "rate_range": ({"rate": [0.0, 1.0], "lambdas": list(model.rate_lambdas)}
                       if model.variable_rate else None),
    }
