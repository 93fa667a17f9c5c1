"""Attention of the decoder and of the backbone, as weights over the image for a clicked pixel.

Decoder (paper 2.4): every block's ``AttentionMaps`` maps query and key indices to pixels;
keys sit at stride 64 in every stage, so a query's key weights are a coarse map over the image,
before (``raw``) and after the cross-scale fusion (``scores = raw + alpha Interp(A_{s-1})``).

Backbone: the softmax attention of each timm block, captured through
``Backbone.capture_attention`` (hooks), and attention rollout (Abnar & Zuidema, 2020): with
each block's head-averaged attention A_l, Â_l = (A_l + I) / 2 (the residual path), rows
renormalized, and R_l = Â_l ... Â_1: how much each input token reaches each token at block l.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from icm_core.errors import ConfigError
from icm_core.models.decoder import AttentionMaps


def decoder_maps(insp, stage: int, block: int = -1) -> AttentionMaps:
    """The ``AttentionMaps`` of decoder ``stage`` (1-based), block ``block`` (-1: the last)."""
    maps = [m for m in insp.attention if m.stage == stage]
    if not maps:
        stages = sorted({m.stage for m in insp.attention})
        raise ConfigError(f"decoder stage {stage}: this decoder has stages {stages}")
    if not -len(maps) <= block < len(maps):
        raise ConfigError(f"block {block} of stage {stage}: it has blocks 0..{len(maps) - 1}")
    return maps[block]


@dataclass(frozen=True)
class QueryWeights:
    """One query's attention over the keys, on the key grid and spread over the image."""

    query: int  # index of the query on its grid
    query_pixel: tuple[float, float]  # its centre (y, x) in image pixels
    weights: np.ndarray  # (key_h, key_w), sums to 1 (plus ``prefix_weight`` for the backbone)
    over_image: np.ndarray  # (H, W): each key's weight over the pixels its cell covers
    key_spacing: int  # image pixels between keys
    prefix_weight: float = 0.0  # weight on class/prefix tokens (backbone only)


def _spread(weights: np.ndarray, spacing: int, size: tuple[int, int]) -> np.ndarray:
    a = np.kron(weights, np.ones((spacing, spacing)))
    return a[: size[0], : size[1]]


def decoder_query(insp, stage: int, y: float, x: float, head: int | None = None, *,
                  block: int = -1, fused: bool = True) -> QueryWeights:
    """Key weights of the decoder query nearest to image pixel (y, x); ``head=None`` averages
    the heads' softmax weights; ``fused=False``: before the cross-scale fusion."""
    m = decoder_maps(insp, stage, block)
    heads = m.scores.shape[1]
    if head is not None and not 0 <= head < heads:
        raise ConfigError(f"head {head}: the decoder has heads 0..{heads - 1}")
    q = m.query_at(y, x)
    hs = range(heads) if head is None else [head]
    w = torch.stack([m.key_weights(q, h, fused=fused) for h in hs]).double().mean(0).numpy()
    spacing = m.feature_stride * m.kv_stride
    qy, qx = m.query_pixels()[q].tolist()
    H, W = insp.image.shape[-2:]
    return QueryWeights(q, (qy, qx), w, _spread(w, spacing, (H, W)), spacing)


def stage_alphas(insp) -> dict[int, float]:
    """Each fusing stage's learned alpha at the time of the pass."""
    return {m.stage: m.alpha for m in insp.attention if m.alpha is not None}


# -- backbone ------------------------------------------------------------------------------
@dataclass
class BackboneAttention:
    """Softmax attention of every block that runs, (heads, N, N) each, tokens: prefix first,
    then the patches row-major on ``grid``."""

    maps: list[torch.Tensor]
    grid: tuple[int, int]
    prefix: int
    patch: int


def backbone_attention(model, insp) -> BackboneAttention:
    """Capture every block's attention for the inspected image (cached on the inspection)."""
    if "backbone" in insp.memo:
        return insp.memo["backbone"]
    bb = model.backbone
    blocks = len(bb.vit.blocks)
    with model.reading(insp.task), contextlib.ExitStack() as stack:
        caught = [stack.enter_context(bb.capture_attention(b)) for b in range(blocks)]
        model.analysis(insp.image.unsqueeze(0).to(model.device), insp.task)
    Hp, Wp = insp.padded_hw
    p = bb.stride
    out = BackboneAttention([c[-1][0].float().cpu() for c in caught], (Hp // p, Wp // p),
                            int(getattr(bb.vit, "num_prefix_tokens", 1)), p)
    insp.memo["backbone"] = out
    return out


def rollout(att: BackboneAttention, upto: int | None = None) -> torch.Tensor:
    """(N, N) attention rollout through blocks 0..``upto`` (default: all); rows sum to 1."""
    n = len(att.maps)
    upto = n - 1 if upto is None else upto
    if not 0 <= upto < n:
        raise ConfigError(f"rollout up to block {upto}: the backbone runs blocks 0..{n - 1}")
    N = att.maps[0].shape[-1]
    eye = torch.eye(N, dtype=torch.float64)
    r = eye
    for a in att.maps[: upto + 1]:
        a_hat = (a.double().mean(0) + eye) / 2
        r = (a_hat / a_hat.sum(-1, keepdim=True)) @ r
    return r


def backbone_query(insp, att: BackboneAttention, y: float, x: float, *, block: int = -1,
                   head: int | None = None, use_rollout: bool = False) -> QueryWeights:
    """Weights of the patch token under image pixel (y, x) over the patches: one block's
    attention (``head=None``: mean of heads) or the rollout up to ``block``."""
    n = len(att.maps)
    b = block % n if -n <= block < n else None
    if b is None:
        raise ConfigError(f"block {block}: the backbone runs blocks 0..{n - 1}")
    gh, gw = att.grid
    iy = int(np.clip(y // att.patch, 0, gh - 1))
    ix = int(np.clip(x // att.patch, 0, gw - 1))
    q = att.prefix + iy * gw + ix
    if use_rollout:
        key = ("rollout", b)
        if key not in insp.memo:
            insp.memo[key] = rollout(att, b)
        row = insp.memo[key][q]
    else:
        heads = att.maps[b].shape[0]
        if head is not None and not 0 <= head < heads:
            raise ConfigError(f"head {head}: the backbone has heads 0..{heads - 1}")
        a = att.maps[b].double()
        row = (a.mean(0) if head is None else a[head])[q]
    w = row[att.prefix:].reshape(gh, gw).numpy()
    H, W = insp.image.shape[-2:]
    centre = (att.patch * (iy + 0.5) - 0.5, att.patch * (ix + 0.5) - 0.5)
    return QueryWeights(q, centre, w, _spread(w, att.patch, (H, W)), att.patch,
                        float(row[: att.prefix].sum()))


__all__ = ["decoder_maps", "decoder_query", "stage_alphas", "BackboneAttention",
           "backbone_attention", "rollout", "backbone_query", "QueryWeights"]
