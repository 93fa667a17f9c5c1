"""What a configuration or a model costs: parameters, storage, FLOPs (``icm info``, the Setup
panel's live readout, ``icm compare``'s complexity table).

FLOPs are counted in one place, ``count_flops`` (``torch.utils.flop_counter.FlopCounterMode``:
matrix multiplications and convolutions, 2 FLOPs per multiply-add; interpolations,
normalizations and activations are not counted). The Setup readout comes from the meta device
(shapes, no memory, no weights): the trainable share of the backbone and the adapter's
safetensors size are ``model_info``'s (what ``icm info`` prints), the decoder's FLOPs are
counted on a meta build of the decoder. Results are cached by overrides, so the panel can
recompute on every change. ``model_flops`` / ``model_parameters`` count a built model, sender
and receiver side.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from icm_core.codec.coder import cpu_coder
from icm_core.config import load_config
from icm_core.config.schema import ExperimentConfig
from icm_core.models.adapters import adapter_state_dict, get_adapter_kind
from icm_core.models.backbone import weights_notice, weights_source
from icm_core.models.decoder import TransformerDecoder
from icm_core.models.icm import HYPERPRIOR_STRIDE, build_model, serialized_size
from icm_core.tasks.registry import DATASET_TASKS, get_task, resolve_tasks

FLOAT32_BYTES = 4  # every parameter of a built model is float32 (bf16 only under autocast)
WEIGHT_SOURCES = ("random", "synthetic", "hub")  # or the path of a checkpoint file


def count_flops(fn: Callable[[], Any]) -> tuple[int, Any]:
    """(FLOPs, result) of calling ``fn``: THE FLOP counter of the workbench.

    ``torch.utils.flop_counter.FlopCounterMode`` counts matrix multiplications and
    convolutions, 2 FLOPs per multiply-add; interpolations, normalizations, activations and
    the rANS coder are not counted. Works on the meta device (shapes only, no memory).
    Attention runs on SDPA's math backend while counting: the fused CPU kernel is invisible to
    ``FlopCounterMode`` (it counts 0 for it on real CPU tensors)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = fn()
    return int(counter.get_total_flops()), out


def decoder_latent(cfg: ExperimentConfig, size: tuple[int, int] | list[int] | None = None
                   ) -> tuple[int, int]:
    """The latent (h, w) the task decoder receives for an image of ``size`` (H, W; default
    ``cfg.data.size``): the image padded as ``ICMModel`` pads it, over the patch size."""
    p = cfg.backbone.patch_size
    h, w = (size if size is not None else cfg.data.size)
    pad = p * HYPERPRIOR_STRIDE
    return -(-h // pad) * pad // p, -(-w // pad) * pad // p


def decoder_cost(cfg: ExperimentConfig, size: tuple[int, int] | list[int] | None = None,
                 task: str | None = None) -> dict:
    """``{"gflops", "params"}`` of one task decoder decoding one image of ``size`` (H, W;
    default ``cfg.data.size``), counted on a meta build; ``task`` (default: the first) fixes
    the output channels."""
    m = cfg.model
    task = task or resolve_tasks(cfg.tasks, cfg.data.label_space)[0]
    gflops, params = _decoder_count(m.latent_channels, get_task(task).out_channels(cfg.data.label_space),
                                    tuple(m.decoder_dims), tuple(m.decoder_depths),
                                    m.decoder_heads, m.decoder, decoder_latent(cfg, size),
                                    cfg.backbone.patch_size)
    return {"gflops": gflops, "params": params}


def decoder_gflops(cfg: ExperimentConfig, size: tuple[int, int] | list[int] | None = None,
                   task: str | None = None) -> float:
    """GFLOPs (1e9) of one task decoder decoding one image of ``size`` (``decoder_cost``)."""
    return decoder_cost(cfg, size, task)["gflops"]


@functools.lru_cache(maxsize=256)
def _decoder_count(latent_channels: int, out_channels: int, dims: tuple, depths: tuple,
                   heads: int, kind: str, latent: tuple[int, int], patch: int) -> tuple[float, int]:
    """(GFLOPs, parameters); seconds on the meta device: torch decomposes every op in Python."""
    with torch.device("meta"):
        dec = TransformerDecoder(latent_channels, out_channels, dims, depths, heads, kind)
        y = torch.empty(1, latent_channels, *latent)
    params = sum(p.numel() for p in dec.parameters())
    for stage in dec.stages:  # the decoder reads its fusion weights' values (AttentionMaps.alpha),
        if stage.alpha is not None:  # which meta tensors have not: 0-dim CPU ones mix with meta
            stage.alpha = torch.nn.Parameter(torch.tensor(0.1))
    with torch.device("meta"), torch.no_grad():
        flops, _ = count_flops(lambda: dec(y, (latent[0] * patch, latent[1] * patch)))
    return flops / 1e9, params


@torch.no_grad()
def model_flops(model, task: str, size: int | tuple[int, int]) -> dict[str, int]:
    """FLOPs of one image of ``size`` through ``model`` for ``task``, sender and receiver side.

    Counted by ``count_flops``. With compression: encoder = backbone, adapter, preliminary
    decoder, analysis and the entropy model's networks that coding needs; decoder = the
    entropy model's networks that decoding needs and the transformer decoder. Without:
    encoder = everything up to the latent, decoder = the transformer decoder (a "Codec +
    Baseline" receiver runs both).
    """
    H, W = (size, size) if isinstance(size, int) else size
    task = model.task_arg(task)
    image = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0)).to(model.device)
    with model.reading(task):
        enc, (_, y, padded) = count_flops(lambda: model.analysis(image, task))
        if not model.compression:
            dec, _ = count_flops(lambda: model.heads[task].synthesis(y, padded))
            return {"encoder": enc, "decoder": dec}
        coder = cpu_coder(model, task)
        y = y.float().cpu()
        ent, coded = count_flops(lambda: coder.compress(y))
        s, p = model.stride, model.backbone.stride
        Hp, Wp = padded

        def receive():
            y_hat = coder.decompress(list(coded["strings"]), (Hp // s, Wp // s), (Hp // p, Wp // p))
            return model.heads[task].synthesis(y_hat.to(model.device), padded)
        dec, _ = count_flops(receive)
    return {"encoder": enc + ent, "decoder": dec}


def model_parameters(model, task: str) -> dict:
    """Parameters ``task``'s forward uses, those it trains, and the trainable backbone share."""
    report = model.trainable_parameters(task)
    others = {id(p) for t in model.tasks if t != task for p in model.task_parameters(t)}
    own = {id(p) for p in model.task_parameters(task)}
    used = [p for n, p in model.backbone.named_parameters()
            if id(p) not in others and ("lora_" not in n or id(p) in own)]
    used += list(model.heads[task].parameters())
    return {"parameters": sum(p.numel() for p in used),
            "trainable_parameters": sum(p.numel() for p in model.task_parameters(task)),
            "trainable_backbone_percent": round(report.trainable_percent, 4)}


def weights_badge(source: str) -> str:
    """``weights_source`` as the Setup panel's badge, in the same words: ``random``,
    ``synthetic``, ``hub``, or a checkpoint's file name (its path would not fit)."""
    return source if source in WEIGHT_SOURCES else Path(source).name


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
    cfg = compose(overrides)
    info = model_info(list(overrides))
    k = len(DATASET_TASKS[cfg.data.label_space])
    return {**info, **storage(info, k),
            "image_size": list(cfg.data.size),
            "decoder_gflops": decoder_gflops(cfg),
            "weights_badge": weights_badge(info["weights_source"]),
            "weights_notice": weights_notice(cfg.backbone)}


def setup_readout(overrides) -> dict:
    """Everything the Setup panel shows for ``overrides`` (``ConfigError`` when they are invalid):
    ``model_info``'s fields unchanged, the storage for the dataset's K tasks against K full
    copies (``storage_*``), ``decoder_gflops`` at ``data.size``, and the backbone's
    ``weights_badge`` (``weights_source`` in short) with its ``weights_notice``."""
    return copy.deepcopy(_readout(tuple(overrides)))


__all__ = ["compose", "count_flops", "decoder_cost", "decoder_gflops", "decoder_latent",
           "model_flops", "model_info", "model_parameters", "setup_readout", "storage",
           "weights_badge"]


def model_info(overrides) -> dict:
    """The resolved model described without building it in memory (meta device, no weights)."""
    cfg = load_config(overrides)
    model = build_model(cfg, "meta")
    report = model.trainable_parameters(model.tasks[0])
    return {
        "experiment": cfg.name,
        "backbone": cfg.backbone.name,
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


__all__ = ["WEIGHT_SOURCES", "compose", "decoder_gflops", "model_info", "setup_readout", "storage",
           "weights_badge"]
