"""Warm-starting the codec: a task head's codec pretrained once, task-agnostic, then fine-tuned.

Issue 22's lever ("an entropy model and decoder pretrained once on the ``pretrain`` split,
shipped like the backbone, fine-tuned per task"). A task head (``TaskHead``: preliminary
decoder, projection, dual spatial entropy model, transformer decoder) is trained here on the
one target every dataset has, the image itself: the frozen backbone's features are coded at
one rate and decoded back to RGB, minimising

    L = R + lmbda * 255^2 * MSE(x_hat, x)     (bits per pixel of y and z; CompressAI's scale)

on the synthetic scenes' ``pretrain`` split (disjoint from every downstream split, the split
``icm pretrain`` uses). ``save_codec`` writes the head's weights, ``train.codec_init=FILE``
loads them into every task head of a new run before its first step (``load_codec``): each
tensor whose name and shape match, so the entropy model, the decoder's blocks and the
preliminary decoder's units start pretrained, while the layers whose shape depends on the
task's channels (the coarse head, the projection's input, the decoder's output projection)
and the variable-rate quantization steps start fresh. A trained checkpoint holds every weight
it uses: decoding never needs the init file.

    from icm_core.training.codec_init import pretrain_codec, save_codec
    head, log = pretrain_codec(load_config(["experiment=quick"]), steps=2000)
    save_codec(head, cfg, "codec.safetensors", log)
    # then: icm train experiment=quick_vr task=semseg train.codec_init=codec.safetensors
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from icm_core.config.schema import ExperimentConfig
from icm_core.data.synthetic import SyntheticScenes
from icm_core.errors import ConfigError
from icm_core.files import atomic_path
from icm_core.models.backbone import Backbone
from icm_core.models.entropy import TABLE_BUFFERS, bits_of
from icm_core.models.icm import HYPERPRIOR_STRIDE, TaskHead, _init_default_, _init_vit_

RGB = 3
SKIPPED = ("q_scale_enc", "q_scale_dec")  # per-anchor steps: the task's own rate ladder
FORMAT = "icm-codec-init/1"


def _head_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with one fixed rate and compression on: what the pretrained head is."""
    return replace(cfg, model=replace(cfg.model, compression=True, variable_rate=False))


def pretrain_codec(cfg: ExperimentConfig, steps: int, lmbda: float = 0.01, lr: float | None = None,
                   batch_size: int | None = None, seed: int = 0,
                   progress: Callable[[dict], None] | None = None) -> tuple[TaskHead, list[dict]]:
    """Train a reconstruction head on ``cfg``'s frozen backbone (CPU) -> (head, history).

    ``cfg`` gives the backbone, the head's sizes (``model.*``), the crop (``data.size``), the
    learning rate (``train.head_lr``, else ``train.lr``) and batch size unless given here.
    ``progress`` is called with each step's values."""
    if steps < 1 or not math.isfinite(lmbda) or lmbda <= 0:
        raise ConfigError(f"pretrain_codec(steps={steps}, lmbda={lmbda}): give steps >= 1 and "
                          "lmbda > 0")
    hcfg = _head_config(cfg)
    backbone = Backbone(hcfg.backbone)
    if not backbone.pretrained:  # a random backbone: the one ICMModel(cfg) draws (same seed)
        _init_vit_(backbone.model, torch.Generator().manual_seed(cfg.train.seed))
    backbone.requires_grad_(False).eval()
    g = torch.Generator().manual_seed(seed)
    head = TaskHead(backbone.embed_dim, RGB, hcfg)
    _init_default_(head, g)
    lr = lr or cfg.train.head_lr or cfg.train.lr
    batch = batch_size or cfg.train.batch_size
    scenes = SyntheticScenes("pretrain", size=tuple(cfg.data.size), tasks=[], seed=seed,
                             length=max(steps * batch, 1))
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    noise = torch.Generator().manual_seed(seed + 1)
    stride = backbone.stride * HYPERPRIOR_STRIDE
    history = []
    head.train()
    for step in range(steps):
        x = torch.stack([scenes[step * batch + i]["image"] for i in range(batch)])
        H, W = x.shape[-2:]
        Hp, Wp = -(-H // stride) * stride, -(-W // stride) * stride
        with torch.no_grad():
            feats = backbone(F.pad(x, (0, Wp - W, 0, Hp - H), mode="replicate"))
        _, y = head.analysis(feats)
        ent = head.entropy(y, noise)
        x_hat = head.synthesis(ent.y_hat, (Hp, Wp)).prediction[..., :H, :W]
        bpp = sum(bits_of(v).sum() for v in ent.likelihoods.values()) / (batch * H * W)
        mse = F.mse_loss(x_hat, x)
        loss = bpp + lmbda * 255**2 * mse
        if not torch.isfinite(loss):
            raise FloatingPointError(f"codec pretraining: loss {loss.item()} at step {step}; "
                                     "lower lr or lmbda")
        opt.zero_grad(set_to_none=True)
        (loss + head.entropy.entropy_bottleneck.loss()).backward()
        opt.step()
        v = {"step": step + 1, "loss": loss.item(), "bpp": bpp.item(),
             "psnr": -10 * math.log10(max(mse.item(), 1e-10))}
        history.append(v)
        if progress:
            progress(v)
    return head.eval(), history


def save_codec(head: TaskHead, cfg: ExperimentConfig, path: str | Path,
               history: list[dict] | None = None) -> Path:
    """Write ``head``'s weights (no entropy tables: they are rebuilt) and what made them."""
    path = Path(path)
    state = {k: v.detach().contiguous() for k, v in head.state_dict().items()
             if k.rsplit(".", 1)[-1] not in TABLE_BUFFERS}
    m = cfg.model
    meta = {"format": FORMAT, "backbone": cfg.backbone.name,
            "latent_channels": str(m.latent_channels), "hyper_channels": str(m.hyper_channels),
            "decoder": json.dumps([m.decoder, list(m.decoder_dims), list(m.decoder_depths),
                                   m.decoder_heads]),
            "history_tail": json.dumps((history or [])[-1:])}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def load_codec(head: TaskHead, path: str | Path) -> dict[str, list[str]]:
    """Copy into ``head`` every tensor of the file at ``path`` whose name and shape match
    (never the variable-rate steps). Returns ``{"loaded": [...], "fresh": [...]}`` (the head's
    tensors that keep their initial values). Raises ``ConfigError`` for a file that is not a
    codec init or whose entropy model does not fit the head; the head is then unchanged."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"train.codec_init={str(path)!r}: no such file; write one with "
                          "icm_core.training.codec_init.save_codec, or set train.codec_init=''")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (no iter)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"train.codec_init={str(path)!r} is not a readable safetensors "
                          f"file ({e}); give a file save_codec wrote") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"train.codec_init={str(path)!r}: format {meta.get('format')!r}, "
                              f"expected {FORMAT!r} (a file save_codec wrote)")
    own = {k: v for k, v in head.state_dict().items() if k.rsplit(".", 1)[-1] not in TABLE_BUFFERS}
    loaded = [k for k, v in own.items() if k in state and k.rsplit(".", 1)[-1] not in SKIPPED
              and state[k].shape == v.shape and state[k].dtype == v.dtype]
    entropy = [k for k in own if k.startswith("entropy.")]
    if head.entropy is not None and not set(entropy) <= set(loaded):
        raise ConfigError(f"train.codec_init={str(path)!r} has an entropy model of another size "
                          f"(latent_channels {meta.get('latent_channels')}, hyper_channels "
                          f"{meta.get('hyper_channels')}); pretrain one with this model.*")
    tensors = {**dict(head.named_parameters()), **dict(head.named_buffers())}
    with torch.no_grad():
        for k in loaded:
            tensors[k].copy_(state[k])
    if head.entropy is not None:
        head.entropy._tables_key = None  # the coding tables follow the new weights
    return {"loaded": loaded, "fresh": [k for k in own if k not in loaded]}
