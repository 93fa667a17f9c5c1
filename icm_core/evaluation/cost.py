"""What ``icm info`` prints and the Setup panel shows: the resolved model described, its counts
read from ``icm_core.evaluation.accounting`` (the workbench's one accounting: parameters,
trainable share, adapter bytes, storage for K tasks, FLOPs). Nothing is counted here.

Both come from the meta device (shapes, no memory, no weights) and count only: no timing, no
training step, and of the FLOPs only the decoder's (``account(..., flops=("decoder",))``).
Results are cached by overrides (``account_cached``), so the panel can recompute on every
change.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

from icm_core.config import load_config
from icm_core.config.schema import ExperimentConfig
from icm_core.evaluation.accounting import account_cached
from icm_core.models.backbone import weights_notice
from icm_core.tasks.registry import resolve_tasks

WEIGHT_SOURCES = ("random", "synthetic", "hub")  # or the path of a checkpoint file
READOUT_FLOPS = ("decoder",)  # the components icm info and the Setup panel count


@functools.lru_cache(maxsize=512)
def compose(overrides: tuple[str, ...]) -> ExperimentConfig:
    """``load_config`` cached by overrides (Hydra composes in ~0.5 s): never mutate the result."""
    return load_config(list(overrides))


def weights_badge(source: str) -> str:
    """``weights_source`` as the Setup panel's badge, in the same words: ``random``,
    ``synthetic``, ``hub``, or a checkpoint's file name (its path would not fit)."""
    return source if source in WEIGHT_SOURCES else Path(source).name


def model_info(overrides) -> dict:
    """The resolved model described without building it in memory (meta device, no weights):
    what ``icm info`` prints. Counts (parameters, trainable share, adapter bytes, storage for
    the dataset's K tasks, decoder FLOPs at ``data.size``) are ``accounting.account``'s."""
    overrides = tuple(overrides)
    cfg = compose(overrides)
    a = account_cached(overrides, flops=READOUT_FLOPS)
    m = cfg.model
    variable = m.variable_rate and m.compression  # ICMModel.variable_rate
    return {
        "experiment": a.experiment,
        "backbone": a.backbone,
        "weights_source": a.weights,
        "weights_notice": weights_notice(cfg.backbone),
        "adapter": a.adapter,
        "backbone_params": a.backbone_params,
        "trainable_backbone_params": a.trainable_backbone_params,
        "trainable_percent": a.trainable_percent,
        "adapter_bytes": a.adapter_bytes,
        "head_params": a.head_params,
        "tasks": list(resolve_tasks(cfg.tasks, cfg.data.label_space)),
        "dataset": cfg.data.name,
        "compression": m.compression,
        "decoder": m.decoder,
        "variable_rate": variable,
        # variable rate: rates 0 .. 1 code at the anchors' lambdas, lowest first
        "rate_range": ({"rate": [0.0, 1.0], "lambdas": list(m.rate_lambdas)} if variable else None),
        "image_size": a.size,
        "decoder_gflops": a.flops["decoder"] / 1e9,
        "storage": a.storage,  # one backbone + K task files against K fine-tuned copies
    }


@functools.lru_cache(maxsize=256)
def _readout(overrides: tuple[str, ...]) -> dict:
    info = model_info(overrides)
    return {**info, "weights_badge": weights_badge(info["weights_source"])}


def setup_readout(overrides) -> dict:
    """Everything the Setup panel shows for ``overrides`` (``ConfigError`` when they are invalid):
    ``model_info``'s fields unchanged and the backbone's ``weights_badge`` (``weights_source``
    in short)."""
    return copy.deepcopy(_readout(tuple(overrides)))


__all__ = ["READOUT_FLOPS", "WEIGHT_SOURCES", "compose", "model_info", "setup_readout",
           "weights_badge"]
