"""What defines a pretraining run: ``PretrainConfig`` (saved in every checkpoint), composed from
the packaged tree's ``pretrain`` group by the one Hydra loader (``icm_core.config.compose``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from icm_core.config.compose import compose_config, to_structured
from icm_core.config.schema import BackboneConfig, _at_least, _help, _positive
from icm_core.data.synthetic import SPLIT_SIZE
from icm_core.errors import ConfigError, ICMError

MASK_MODES = ("block", "random")
LOSSES = ("l2", "l1")
# fields that may change between a run and its resume without changing its trajectory
RESUME_FREE = ("out_dir", "resume", "workers", "threads", "checkpoint_every", "device")


@dataclass
class PretrainDataConfig:
    split: str = _help("synthetic split of the scenes: only 'pretrain' is disjoint from the "
                       "downstream train/val/test scenes", "pretrain")
    seed: int = _help("dataset seed of the pretrain split (selects its block of scene seeds)", 0)
    length: int = _help("scenes rendered once into the pool that every step crops from", 2000)
    render_size: list[int] = _help("(H, W) at which scenes are rendered",
                                   factory=lambda: [160, 160])
    size: list[int] = _help("(H, W) of the random resized crops fed to the encoder",
                            factory=lambda: [128, 128])
    min_scale: float = _help("smallest crop area, as a fraction of the rendered scene", 0.35)
    flip: bool = _help("random horizontal flips", True)

    def __post_init__(self):
        if self.split != "pretrain":
            raise ConfigError(f"data.split={self.split!r}: pretraining on a downstream split would "
                              "let the backbone see the scenes it is evaluated on; use "
                              "data.split=pretrain (disjoint by construction)")
        _at_least("data.seed", self.seed, 0)
        _at_least("data.length", self.length, 1)
        if self.length > SPLIT_SIZE:
            raise ConfigError(f"data.length={self.length} exceeds the {SPLIT_SIZE} scenes of a split")
        for name in ("render_size", "size"):
            v = list(getattr(self, name))
            if len(v) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 8
                                      for x in v):
                raise ConfigError(f"data.{name}={v}: give two integers >= 8 [H, W]")
        if any(c > r for c, r in zip(self.size, self.render_size)):
            raise ConfigError(f"data.size={list(self.size)} is larger than data.render_size="
                              f"{list(self.render_size)}: crops are cut from the rendered scenes")
        if isinstance(self.min_scale, bool) or not 0 < self.min_scale <= 1:
            raise ConfigError(f"data.min_scale={self.min_scale!r} must be in (0, 1]")


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run (saved in every checkpoint)."""

    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(depth=4, img_size=128))
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    mask_mode: str = _help("block (BEiT/EVA-02 block-wise) | random (MAE/SimMIM)", "block")
    mask_ratio: float = _help("fraction of patches hidden in every image (0.4 EVA-02 .. 0.75 MAE)",
                              0.5)
    decoder_layers: int = _help("1: LayerNorm + linear (SimMIM); 2: a 2-layer MLP", 1)
    loss: str = _help("l2 | l1 on the masked patches", "l2")
    norm_pix: bool = _help("targets are pixels normalized per patch (MAE's norm_pix_loss)", True)
    steps: int = _help("optimizer steps", 4000)
    batch_size: int = _help("images per step", 32)
    lr: float = _help("peak AdamW learning rate", 1.5e-3)
    warmup: int = _help("linear warm-up steps before the cosine decay to 0", 200)
    weight_decay: float = _help("AdamW weight decay (not on norms, biases, tokens, pos_embed)", 0.05)
    clip_grad: float = _help("gradient norm clip (0: none)", 3.0)
    seed: int = _help("random seed (weights init, batches, masks)", 0)
    checkpoint_every: int = _help("steps between checkpoints (0: only at the end)", 250)
    out_dir: str = _help("run folder: checkpoints, history.jsonl, the exported backbone",
                         "runs/pretrain")
    resume: bool = _help("continue from the newest checkpoint in out_dir", False)
    workers: int = _help("processes rendering the scene pool and preparing batches ahead (0: this "
                         "process only)", 2)
    threads: int = _help("torch CPU threads (0: leave torch's default)", 0)
    device: str = _help("auto (cuda when available) | cpu | cuda", "auto")
    amp: bool = _help("bf16 autocast on CUDA", True)

    def __post_init__(self):
        if self.mask_mode not in MASK_MODES:
            raise ConfigError(f"mask_mode={self.mask_mode!r}; choose one of {list(MASK_MODES)}")
        if isinstance(self.mask_ratio, bool) or not 0.1 <= self.mask_ratio <= 0.9:
            raise ConfigError(f"mask_ratio={self.mask_ratio!r} must be in [0.1, 0.9] (0.4-0.75 "
                              "is usual): something must be hidden, something visible")
        if self.decoder_layers not in (1, 2):
            raise ConfigError(f"decoder_layers={self.decoder_layers!r}: 1 (linear) or 2 (MLP)")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss={self.loss!r}; choose one of {list(LOSSES)}")
        _at_least("steps", self.steps, 1)
        _at_least("batch_size", self.batch_size, 1)
        _positive("lr", self.lr)
        _at_least("warmup", self.warmup, 0)
        _at_least("weight_decay", self.weight_decay, 0)
        _at_least("clip_grad", self.clip_grad, 0, " (0: no clipping)")
        _at_least("seed", self.seed, 0)
        _at_least("checkpoint_every", self.checkpoint_every, 0, " (0: only at the end)")
        _at_least("workers", self.workers, 0)
        _at_least("threads", self.threads, 0, " (0: torch's default)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device={self.device!r}; use auto, cpu or cuda[:N]")
        if self.backbone.out_indices is not None:
            raise ConfigError(f"backbone.out_indices={list(self.backbone.out_indices)}: pretraining "
                              "trains every block; leave it null")
        p = self.backbone.patch_size
        if any(s % p for s in self.data.size):
            raise ConfigError(f"data.size={list(self.data.size)} must be multiples of "
                              f"backbone.patch_size={p} (the mask hides whole patches)")
        if (self.data.size[0] // p) * (self.data.size[1] // p) < 4:
            raise ConfigError(f"data.size={list(self.data.size)} gives fewer than 4 patches of "
                              f"{p} px; use larger crops")




# the schema and the primary config of ``icm pretrain`` (the ``pretrain`` preset group)
PRETRAIN_STORE: dict[str, Any] = {
    "pretrain_schema": PretrainConfig,
    "pretrain_root": {
        "defaults": ["pretrain_schema", {"pretrain": "default"}, "_self_"],
        # one folder per run: checkpoints, history and Hydra's own logs side by side
        "hydra": {"run": {"dir": "${out_dir}"}}},
}


def to_pretrain(cfg) -> PretrainConfig:
    """A composed OmegaConf tree -> validated ``PretrainConfig`` (``ConfigError`` on bad values)."""
    return to_structured(cfg, PretrainConfig)


def load_pretrain_config(overrides=()) -> PretrainConfig:
    """Compose the packaged tree: ``load_pretrain_config(["pretrain=quick", "steps=5"])``."""
    return compose_config("pretrain_root", PretrainConfig, overrides, PRETRAIN_STORE)


def config_dict(cfg: PretrainConfig) -> dict:
    """``cfg`` as plain nested dicts (what config.yaml and the model card hold)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def flat(d: dict, prefix: str = "") -> dict:
    """Nested dicts -> {"data.size": ..., ...}: two configs compared field by field."""
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def read_run_config(ckpt: Path) -> PretrainConfig:
    """A checkpoint's config.yaml -> PretrainConfig; interpolations (``${oc.env:..}``) refused."""
    f = Path(ckpt) / "config.yaml"
    try:
        raw = OmegaConf.load(f)
        text = f.read_text()
    except Exception as e:  # YAML syntax, encoding, I/O
        raise ConfigError(f"{str(f)!r} is not a readable config ({e}); the checkpoint is corrupt") from e
    if "${" in text:
        raise ConfigError(f"{str(f)!r} holds interpolations (${{...}}); write plain values there")
    try:
        return to_pretrain(raw)
    except ICMError as e:
        raise ConfigError(f"{str(f)!r}: {e}") from e


__all__ = ["LOSSES", "MASK_MODES", "PRETRAIN_STORE", "RESUME_FREE", "PretrainConfig",
           "PretrainDataConfig", "config_dict", "flat", "load_pretrain_config", "read_run_config",
           "to_pretrain"]
