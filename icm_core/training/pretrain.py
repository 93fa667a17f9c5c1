"""Self-supervised pretraining of the offline backbone (``icm pretrain``).

A randomly initialized EVA-02 learns features from synthetic scenes by masked image modeling
(MIM), in the spirit of EVA-02 / SimMIM / MAE: 40-75 % of the patches are hidden, and a light
decoder predicts the hidden patches' pixels from what the encoder makes of the visible ones.

    image (B,3,H,W) -> hide masked patches (pixels -> 0, their tokens -> a learned mask token)
      -> Backbone (the downstream encoder itself) -> last block (B,C,H/p,W/p)
      -> decoder (LayerNorm + linear, or a 2-layer MLP) -> (B,H/p,W/p,p*p*3)
      -> L2 (or L1) against per-patch normalized pixels (MAE's norm_pix_loss), masked patches only

Masked pixels never reach the encoder: they are zeroed before the patch embedding and their
tokens replaced by the mask token after it (``torch.where``, so not even a NaN leaks). No
downstream label enters the objective.

The scenes come from the synthetic ``pretrain`` split, whose scene seeds are disjoint by
construction from ``train``/``val``/``test`` (see ``synthetic.scene_seed``); ``check_disjoint``
refuses any other dataset. A pool of ``data.length`` scenes is rendered once (in parallel,
cached in the run folder) and every step draws a random resized crop + flip of its scenes.

A run folder looks like ``icm train``'s: ``history.jsonl`` (one line per step), ``LATEST`` and
``ckpt-NNNNNN/`` folders (config.yaml, model.safetensors, trainer.pt) written atomically, and
at the end ``backbone.safetensors`` + ``backbone.card.json`` (``export_backbone``). Every
batch and mask is a function of (seed, step) only, so ``resume=true`` continues exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm.auto import tqdm

from icm_core.config.schema import BackboneConfig, _at_least, _help, _positive
from icm_core.data.synthetic import SPLIT_SIZE, SPLITS, SyntheticScenes
from icm_core.errors import ConfigError, ICMError
from icm_core.files import atomic_path, write_bytes, write_text
from icm_core.training.checkpoint import (
    clean_orphans,
    has_checkpoint,
    load_trainer_state,
    resolve_checkpoint_dir,
)

log = logging.getLogger("icm.pretrain")

FORMAT = "icm-pretrained-backbone-1"
MASK_MODES = ("block", "random")
LOSSES = ("l2", "l1")
MAX_EXPORT_BYTES = 12 * 2**20  # what may ship inside the package
# fields that may change between a run and its resume without changing its trajectory
RESUME_FREE = ("out_dir", "resume", "workers", "threads", "checkpoint_every", "device")


# --- configuration ---------------------------------------------------------------------------
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


_SCHEMA_REGISTERED = False


def _register_schema() -> None:
    """The structured schema and the app's primary config (the ``pretrain`` preset group)."""
    global _SCHEMA_REGISTERED
    if _SCHEMA_REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="pretrain_schema", node=PretrainConfig)
    cs.store(name="pretrain_root", node={
        "defaults": ["pretrain_schema", {"pretrain": "default"}, "_self_"],
        # one folder per run: checkpoints, history and Hydra's own logs side by side
        "hydra": {"run": {"dir": "${out_dir}"}}})
    _SCHEMA_REGISTERED = True


def to_pretrain(cfg) -> PretrainConfig:
    """A composed OmegaConf tree -> validated ``PretrainConfig`` (``ConfigError`` on bad values)."""
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, PretrainConfig):
        return cfg
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PretrainConfig), cfg))
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).splitlines()[0] + f" (at {getattr(e, 'full_key', '?')})") from e


def load_pretrain_config(overrides=()) -> PretrainConfig:
    """Compose the packaged tree: ``load_pretrain_config(["pretrain=quick", "steps=5"])``."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _register_schema()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_module("icm_core.conf", version_base="1.3"):
            cfg = compose("pretrain_root", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"overrides {list(overrides)}: {str(e).splitlines()[0]}") from e
    return to_pretrain(cfg)


# --- data ------------------------------------------------------------------------------------
def check_disjoint(dataset) -> tuple[int, int]:
    """Refuse scenes that a downstream split could render; -> (first, last) scene seed.

    The synthetic layout gives split ``SPLITS[k]`` the seed blocks ``b`` with
    ``b % len(SPLITS) == k`` (block = scene_seed // SPLIT_SIZE). The pretraining scenes must
    all lie in one block owned by ``pretrain``: no train/val/test dataset, whatever its seed,
    renders one of them.
    """
    if not isinstance(dataset, SyntheticScenes) or "pretrain" not in SPLITS:
        raise ConfigError(f"pretraining data {type(dataset).__name__} has no scene-seed range "
                          "disjoint from the downstream splits; use SyntheticScenes(split='pretrain')")
    first, last = dataset.scene_seed(0), dataset.scene_seed(len(dataset) - 1)
    blocks = {first // SPLIT_SIZE, last // SPLIT_SIZE}
    owners = {SPLITS[b % len(SPLITS)] for b in blocks}
    if dataset.split != "pretrain" or owners != {"pretrain"} or len(blocks) != 1:
        raise ConfigError(f"scenes {first}..{last} (split {dataset.split!r}, seed {dataset.seed}) "
                          f"lie in seed blocks of {sorted(owners)}: they overlap the downstream "
                          "splits; pretrain on split='pretrain' only")
    return first, last


class _Images(torch.utils.data.Dataset):
    """Scene ``i`` as a uint8 (3, H, W) image: the pool keeps 4x less memory than float."""

    def __init__(self, scenes: SyntheticScenes):
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> torch.Tensor:
        return (self.scenes[i]["image"] * 255).round().clamp(0, 255).to(torch.uint8)


def render_pool(scenes: SyntheticScenes, workers: int = 0, cache: Path | None = None,
                progress: bool = True) -> torch.Tensor:
    """Every scene of ``scenes`` rendered once -> uint8 (N, 3, H, W), cached in ``cache``.

    A cache file is used only when its shape is exactly this pool's (its name holds the
    seed and size); it holds no pickle (``allow_pickle=False``).
    """
    shape = (len(scenes), 3, *scenes.size)
    if cache is not None and cache.is_file():
        try:
            arr = np.load(cache, allow_pickle=False)
            if arr.shape == shape and arr.dtype == np.uint8:
                return torch.from_numpy(arr)
        except (OSError, ValueError) as e:
            log.warning("scene cache %s unreadable (%s): rendering again", cache, e)
    loader = torch.utils.data.DataLoader(_Images(scenes), batch_size=None, num_workers=workers)
    pool = torch.empty(shape, dtype=torch.uint8)
    for i, img in enumerate(tqdm(loader, total=len(scenes), desc="rendering scenes",
                                 disable=not progress, dynamic_ncols=True)):
        pool[i] = img
    if cache is not None:
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.save(f, pool.numpy(), allow_pickle=False)
    return pool


def make_batch(pool: torch.Tensor, cfg: PretrainConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B,3,H,W) float in [0,1], masks (B,H/p,W/p) bool, True = hidden) of ``step``.

    A function of (pool, seed, step) only, so a resumed run, or a worker process, makes the
    very same batch: scenes drawn from the pool, a random resized crop, a flip, a mask each.
    """
    from torchvision.transforms.v2.functional import resized_crop

    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    (H, W), p = cfg.data.size, cfg.backbone.patch_size
    h, w = H // p, W // p
    n_mask = round(cfg.mask_ratio * h * w)
    make_mask = block_mask if cfg.mask_mode == "block" else random_mask
    images, masks = [], []
    for i in torch.randint(len(pool), (cfg.batch_size,), generator=g).tolist():
        img = pool[i].float() / 255
        top, left, ch, cw = crop_box(*img.shape[-2:], cfg.data.min_scale, g)
        img = resized_crop(img, top, left, ch, cw, [H, W], antialias=True).clamp(0, 1)
        if cfg.data.flip and _uniform(g) < 0.5:
            img = img.flip(-1)
        images.append(img)
        masks.append(make_mask(h, w, n_mask, g))
    return torch.stack(images), torch.stack(masks)


class _StepBatches(torch.utils.data.Dataset):
    """Item ``step`` = ``make_batch(pool, cfg, step)``: DataLoader workers prepare steps ahead."""

    def __init__(self, pool: torch.Tensor, cfg: PretrainConfig):
        self.pool, self.cfg = pool, cfg

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int):
        return make_batch(self.pool, self.cfg, step)


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """An integer in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def crop_box(H: int, W: int, min_scale: float, g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop: area in [min_scale, 1], aspect in [3/4, 4/3]."""
    for _ in range(10):
        area = H * W * _uniform(g, min_scale, 1.0)
        aspect = math.exp(_uniform(g, math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < h <= H and 0 < w <= W:
            return _randint(g, 0, H - h), _randint(g, 0, W - w), h, w
    return 0, 0, H, W


def block_mask(h: int, w: int, n_mask: int, g: torch.Generator, min_block: int = 4) -> torch.Tensor:
    """BEiT's block-wise masking on an (h, w) grid, topped up to exactly ``n_mask`` patches.

    Rectangles of >= ``min_block`` patches and aspect in [0.3, 1/0.3] are added while they do
    not overshoot; random single patches fill what is left, so every image hides the same count.
    """
    mask = torch.zeros(h, w, dtype=torch.bool)
    min_block = min(min_block, n_mask)
    for _ in range(10 * n_mask):
        left_over = n_mask - int(mask.sum())
        if left_over < min_block:
            break
        area = _uniform(g, min_block, left_over)
        aspect = math.exp(_uniform(g, math.log(0.3), math.log(1 / 0.3)))
        bh, bw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if not (0 < bh <= h and 0 < bw <= w):
            continue
        top, left = _randint(g, 0, h - bh), _randint(g, 0, w - bw)
        new = int((~mask[top:top + bh, left:left + bw]).sum())
        if 0 < new <= left_over:
            mask[top:top + bh, left:left + bw] = True
    free = (~mask).flatten().nonzero().squeeze(1)
    extra = n_mask - int(mask.sum())
    mask.view(-1)[free[torch.randperm(len(free), generator=g)[:extra]]] = True
    return mask


def random_mask(h: int, w: int, n_mask: int, g: torch.Generator) -> torch.Tensor:
    """Exactly ``n_mask`` patches of an (h, w) grid, uniformly at random (MAE/SimMIM)."""
    mask = torch.zeros(h * w, dtype=torch.bool)
    mask[torch.randperm(h * w, generator=g)[:n_mask]] = True
    return mask.view(h, w)


def patchify(image: torch.Tensor, p: int) -> torch.Tensor:
    """(B, 3, h*p, w*p) -> (B, h, w, p*p*3), each patch's pixels in (row, column, channel) order."""
    B, C, H, W = image.shape
    x = image.reshape(B, C, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, H // p, W // p, p * p * C)


def patch_targets(image: torch.Tensor, p: int, norm_pix: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch pixel targets (B, h, w, p*p*3), normalized by each patch's mean and (population)
    variance when ``norm_pix`` (MAE): the decoder learns structure, not the patch's brightness."""
    t = patchify(image.float(), p)
    if norm_pix:
        t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    return t


# --- model -----------------------------------------------------------------------------------
@dataclass
class MIMOutput:
    loss: torch.Tensor  # () mean over masked patches
    prediction: torch.Tensor  # (B, h, w, p*p*3)
    target: torch.Tensor  # (B, h, w, p*p*3)
    mask: torch.Tensor  # (B, h, w) bool, True = hidden
    features: torch.Tensor  # (B, C, h, w) last encoder block


class MIMModel(nn.Module):
    """The downstream ``Backbone`` + a mask token + a light pixel decoder.

    The encoder is the very module downstream code builds, so its ``model.state_dict()`` is
    what ``Backbone`` loads; the mask token enters through a hook on the patch embedding.
    """

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        from icm_core.models.backbone import Backbone

        self.cfg = cfg
        self.encoder = Backbone(cfg.backbone, load_weights=cfg.backbone.weights not in ("none", ""))
        C, p = self.encoder.embed_dim, self.encoder.stride
        self.mask_token = nn.Parameter(torch.zeros(C))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        out = p * p * 3
        if cfg.decoder_layers == 1:
            self.decoder = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, out))
        else:
            self.decoder = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, C), nn.GELU(), nn.Linear(C, out))
        self._mask: torch.Tensor | None = None
        self.encoder.vit.patch_embed.register_forward_hook(self._mask_tokens)

    def _mask_tokens(self, module, inputs, tokens: torch.Tensor) -> torch.Tensor | None:
        """Patch embedding output (B, h, w, C) -> masked positions replaced by the mask token."""
        if self._mask is None:
            return None
        return torch.where(self._mask[..., None], self.mask_token.to(tokens.dtype), tokens)

    def encode(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """image (B,3,H,W) in [0,1], mask (B,H/p,W/p) -> last block (B,C,H/p,W/p); masked pixels
        are zeroed before the encoder sees the image."""
        p = self.encoder.stride
        pix = mask.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None]  # (B,1,H,W)
        visible = torch.where(pix, torch.zeros((), dtype=image.dtype, device=image.device), image)
        self._mask = mask
        try:
            return self.encoder(visible)[-1]
        finally:
            self._mask = None

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> MIMOutput:
        feats = self.encode(image, mask)  # (B, C, h, w)
        pred = self.decoder(feats.permute(0, 2, 3, 1)).float()  # (B, h, w, p*p*3)
        target = patch_targets(image, self.encoder.stride, self.cfg.norm_pix)
        err = (pred - target).abs() if self.cfg.loss == "l1" else (pred - target) ** 2
        per_patch = err.mean(-1)  # (B, h, w)
        m = mask.to(per_patch.dtype)
        loss = (per_patch * m).sum() / m.sum().clamp_min(1)
        return MIMOutput(loss, pred, target, mask, feats)


def encoder_state_dict(model: MIMModel) -> dict[str, torch.Tensor]:
    """The encoder's weights exactly as ``Backbone.load_checkpoint`` expects them."""
    return {k: v.detach().contiguous().cpu() for k, v in model.encoder.model.state_dict().items()}


# --- the loop --------------------------------------------------------------------------------
def lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then a cosine to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _config_dict(cfg: PretrainConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
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


class Pretrainer:
    """Args:
    cfg: the run.
    progress: tqdm bars (rendering and steps).
    """

    def __init__(self, cfg: PretrainConfig, progress: bool = True):
        self.cfg = cfg
        self.progress = progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        dev = cfg.device
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device={dev!r} but CUDA is not available here; use device=auto")
        d = cfg.data
        self.scenes = SyntheticScenes(split=d.split, size=tuple(d.render_size), tasks=["semseg"],
                                      seed=d.seed, length=d.length)
        self.seed_range = check_disjoint(self.scenes)
        self.out_dir = Path(cfg.out_dir)
        torch.manual_seed(cfg.seed)  # the initial weights
        self.model = MIMModel(cfg).to(self.device)
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=cfg.lr, betas=(0.9, 0.95))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup, cfg.steps))
        self.step = 0
        self.wall = 0.0  # seconds of training, summed over resumed sessions
        self.pool: torch.Tensor | None = None
        self._saved = -1  # step of the newest checkpoint on disk

    def _param_groups(self) -> list[dict]:
        """Weight decay on matrices only: not on norms, biases, tokens or position embeddings."""
        skip = {f"encoder.model.{n}" for n in self.model.encoder.vit.no_weight_decay()}
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim <= 1 or name in skip or name == "mask_token" else decay).append(p)
        return [{"params": decay, "weight_decay": self.cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    # -- data --
    def load_pool(self) -> torch.Tensor:
        if self.pool is None:
            d = self.cfg.data
            cache = self.out_dir / (f"scenes-seed{d.seed}-n{d.length}-"
                                    f"{d.render_size[0]}x{d.render_size[1]}.npy")
            self.pool = render_pool(self.scenes, self.cfg.workers, cache, self.progress)
        return self.pool

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``make_batch`` of ``step`` on this run's device."""
        images, masks = make_batch(self.load_pool(), self.cfg, step)
        return images.to(self.device), masks.to(self.device)

    def batches(self, start: int, stop: int):
        """Batches of steps start..stop-1, prepared ahead by ``workers`` processes (identical
        to ``batch(step)``: each is a function of its step alone)."""
        if self.cfg.workers == 0:
            yield from (self.batch(s) for s in range(start, stop))
            return
        loader = torch.utils.data.DataLoader(
            _StepBatches(self.load_pool(), self.cfg), batch_size=None, sampler=range(start, stop),
            num_workers=self.cfg.workers, pin_memory=self.device.startswith("cuda"))
        for images, masks in loader:
            yield images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)

    # -- one step --
    def train_step(self, step: int) -> dict:
        return self.update(*self.batch(step))

    def update(self, images: torch.Tensor, masks: torch.Tensor) -> dict:
        """One optimizer step on (images, masks) -> {"loss" (before the step), "lr" (used)}."""
        self.model.train()
        use_amp = self.device.startswith("cuda") and self.cfg.amp
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            out = self.model(images, masks)
        loss = out.loss.item()
        if not math.isfinite(loss):  # stop before the update: the weights stay finite
            raise FloatingPointError(f"pretraining loss became {loss} at step {self.step}; lower lr")
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.cfg.clip_grad:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss, "lr": lr}

    # -- checkpoints --
    def save(self) -> Path:
        """``ckpt-NNNNNN/`` written under a temporary name and renamed, then ``LATEST``."""
        from safetensors.torch import save

        name = f"ckpt-{self.step:06d}"
        final, tmp = self.out_dir / name, self.out_dir / f".{name}.partial"
        clean_orphans(self.out_dir)
        tmp.mkdir(parents=True)
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(self.cfg)))
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        (tmp / "model.safetensors").write_bytes(save(state, metadata={"format": "icm-pretrain-ckpt-1",
                                                                      "step": str(self.step)}))
        trainer = {"step": torch.tensor(self.step), "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.scheduler.state_dict(), "rng_cpu": torch.get_rng_state(),
                   "wall": torch.tensor(self.wall, dtype=torch.float64)}
        if torch.cuda.is_available():
            trainer["rng_cuda"] = torch.cuda.get_rng_state_all()
        torch.save(trainer, tmp / "trainer.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        write_text(self.out_dir / "LATEST", name)
        old = sorted((q for q in self.out_dir.glob("ckpt-*")
                      if q.is_dir() and q.name[5:].isdigit() and q.name != name),
                     key=lambda q: int(q.name[5:]))
        for q in old[:-1]:  # keep this one and the one before
            shutil.rmtree(q, ignore_errors=True)
        self._saved = self.step
        return final

    def resume(self) -> bool:
        """Continue from the newest checkpoint in ``out_dir``; False only when it holds none.

        The checkpoint's config must equal this run's in everything but ``RESUME_FREE``
        (output folder, workers, threads, device...): anything else would silently change
        the run it continues.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not has_checkpoint(self.out_dir):
            return False
        ckpt = resolve_checkpoint_dir(self.out_dir)
        theirs = _flat(_config_dict(read_run_config(ckpt)))
        mine = _flat(_config_dict(self.cfg))
        diff = [k for k in mine if k not in RESUME_FREE and theirs.get(k) != mine[k]]
        if diff:
            k = diff[0]
            raise ConfigError(f"resume=true: {k}={mine[k]!r} but the checkpoint {str(ckpt)!r} was "
                              f"made with {k}={theirs.get(k)!r}; use its value or a new out_dir")
        try:
            state = load_file(str(ckpt / "model.safetensors"))
        except (SafetensorError, OSError) as e:
            raise ConfigError(f"{str(ckpt / 'model.safetensors')!r} is unreadable ({e}); use "
                              "another ckpt-* folder") from e
        trainer = load_trainer_state(ckpt, self.optimizer)
        if trainer is None:
            raise ConfigError(f"{str(ckpt)!r} has no trainer.pt: it cannot be resumed")
        try:
            self.model.load_state_dict(state)
            self.optimizer.load_state_dict(trainer["optimizer"])
            self.scheduler.load_state_dict(trainer["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ConfigError(f"{str(ckpt)!r} does not fit this model ({e})") from e
        torch.set_rng_state(trainer["rng_cpu"])
        if trainer.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(trainer["rng_cuda"][: torch.cuda.device_count()])
        self.step = int(trainer["step"])
        self.wall = float(trainer.get("wall", 0.0))
        self._saved = self.step
        hist = self.out_dir / "history.jsonl"
        if hist.is_file():  # drop what an interrupted run logged after its last checkpoint
            kept = []
            for ln in hist.read_text().splitlines():
                try:
                    if json.loads(ln)["step"] <= self.step:
                        kept.append(ln + "\n")
                except (json.JSONDecodeError, KeyError, TypeError):  # a line cut by the kill
                    continue
            write_text(hist, "".join(kept))
        log.info("resumed from %s at step %d", ckpt, self.step)
        return True

    def fit(self, until: int | None = None) -> list[dict]:
        """Train to ``cfg.steps`` (or stop after step ``until``, checkpointed: a time slice of
        the run that ``resume=true`` continues); export the backbone at the end. -> history."""
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        clean_orphans(self.out_dir)
        hist = self.out_dir / "history.jsonl"
        if not (cfg.resume and self.resume()):
            if cfg.resume:
                log.warning("resume=true but %s holds no checkpoint: starting at step 0", self.out_dir)
            if has_checkpoint(self.out_dir):
                raise ConfigError(f"out_dir={cfg.out_dir!r} already holds a pretraining run; give "
                                  "resume=true to continue it, or a new out_dir")
            hist.unlink(missing_ok=True)
        self.load_pool()
        stop = cfg.steps if until is None else min(cfg.steps, until)
        history = []
        bar = tqdm(total=cfg.steps, initial=self.step, desc="pretrain", disable=not self.progress,
                   dynamic_ncols=True)
        start, wall0 = time.perf_counter(), self.wall
        with open(hist, "a") as f:
            for images, masks in self.batches(self.step, stop):
                values = self.update(images, masks)
                self.step += 1
                self.wall = wall0 + time.perf_counter() - start  # data waits and saves included
                rec = {"step": self.step, **values, "time": round(self.wall, 3)}
                history.append(rec)
                f.write(json.dumps(rec) + "\n")
                f.flush()
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}")
                bar.update(1)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < stop:
                    self.save()
        bar.close()
        if self._saved != self.step:  # a finished run resumed again has nothing new to save
            self.save()
        if self.step >= cfg.steps:
            export_backbone(self.out_dir, self.out_dir / "backbone.safetensors")
        return history


# --- export ----------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def machine() -> dict:
    """Where a run happened, for the model card."""
    import timm

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "torch": torch.__version__,
            "timm": timm.__version__, "device": dev}


def portable_paths(tree):
    """``tree`` (a card: dicts, lists, plain values) with every absolute path string reduced
    to its last component (``/home/me/runs/p`` -> ``p``), so a shipped card names no folder of
    the machine that made it; relative paths and other values are kept as they are."""
    if isinstance(tree, dict):
        return {k: portable_paths(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [portable_paths(v) for v in tree]
    if isinstance(tree, str) and (PurePosixPath(tree).is_absolute()
                                  or PureWindowsPath(tree).is_absolute()):
        return PureWindowsPath(tree).name if PureWindowsPath(tree).drive else PurePosixPath(tree).name
    return tree


def _history(run: Path) -> list[dict]:
    f = run / "history.jsonl"
    out = []
    if f.is_file():
        for ln in f.read_text().splitlines():
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError:
                continue
    return out


def export_backbone(run_dir: str | Path, out_file: str | Path, dtype: str = "float16",
                    max_bytes: int = MAX_EXPORT_BYTES) -> dict:
    """The newest checkpoint's encoder -> one safetensors file + a model card beside it.

    The file holds the timm model's state_dict as ``Backbone`` loads it (no mask token, no
    decoder); it is loaded back into a fresh ``Backbone`` before the card is written, so a
    file that does not fit never ships. The card (``<name>.card.json``) records the
    objective, the data split and scene-seed range, the optimization, wall time, machine and
    the file's sha256, and no absolute path (``portable_paths``). -> the card.
    """
    from safetensors import safe_open
    from safetensors.torch import save

    from icm_core.models.backbone import Backbone

    if dtype not in ("float16", "bfloat16", "float32"):
        raise ConfigError(f"dtype={dtype!r}; use float16, bfloat16 or float32")
    run, out_file = Path(run_dir), Path(out_file)
    ckpt = resolve_checkpoint_dir(run)
    cfg = read_run_config(ckpt)
    prefix = "encoder.model."
    with safe_open(str(ckpt / "model.safetensors"), "pt") as sf:
        step = int((sf.metadata() or {}).get("step", -1))
        state = {k[len(prefix):]: sf.get_tensor(k).to(getattr(torch, dtype)).contiguous()
                 for k in sf.keys() if k.startswith(prefix)}  # noqa: SIM118
    b = cfg.backbone
    meta = {"format": FORMAT, "backbone": b.name, "depth": str(b.depth), "patch_size": str(b.patch_size),
            "img_size": str(b.img_size), "objective": "mim-norm-pix", "step": str(step)}
    data = save(state, metadata=meta)
    if len(data) > max_bytes:
        raise ConfigError(f"{out_file}: {len(data) / 2**20:.1f} MB exceeds {max_bytes / 2**20:.0f} "
                          "MB; export with dtype=float16 or pretrain a shallower backbone.depth")
    with tempfile.TemporaryDirectory(prefix="icm-export-") as tmpdir:
        tmp = Path(tmpdir) / "check.safetensors"  # Backbone reads a file by its suffix
        tmp.write_bytes(data)
        # strict: a missing or unexpected key raises ConfigError before the file is in place
        Backbone(BackboneConfig(name=b.name, depth=b.depth, patch_size=b.patch_size,
                                img_size=b.img_size, weights=str(tmp)))
    write_bytes(out_file, data)
    sha = _sha256(out_file)
    hist = _history(run)
    last = [r["loss"] for r in hist[-50:]]
    trainer = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=True)
    d = cfg.data
    scenes = SyntheticScenes(split=d.split, size=tuple(d.render_size), tasks=["semseg"],
                             seed=d.seed, length=d.length)
    first, last_seed = check_disjoint(scenes)
    card = {
        "format": FORMAT,
        "file": out_file.name, "sha256": sha, "bytes": out_file.stat().st_size, "dtype": dtype,
        "parameters": int(sum(v.numel() for v in state.values())),
        "backbone": {"name": b.name, "depth": b.depth, "patch_size": b.patch_size,
                     "img_size": b.img_size, "config": f"backbone.name={b.name} "
                     f"backbone.depth={b.depth} backbone.patch_size={b.patch_size}"},
        "objective": {
            "kind": "masked image modeling (SimMIM-style mask token; MAE norm_pix targets)",
            "mask_mode": cfg.mask_mode, "mask_ratio": cfg.mask_ratio, "loss": cfg.loss,
            "norm_pix": cfg.norm_pix, "decoder_layers": cfg.decoder_layers,
            "labels_used": "none"},
        "data": {"dataset": "synthetic scenes (icm_core.data.synthetic)", "split": d.split,
                 "dataset_seed": d.seed, "scenes": d.length,
                 "scene_seed_range": [first, last_seed],
                 "disjoint_from": [s for s in SPLITS if s != "pretrain"],
                 "disjointness": "by construction: scene seeds of split k lie in blocks "
                                 "b*2**31.. with b % 4 == k (synthetic.scene_seed); checked by "
                                 "pretrain.check_disjoint",
                 "render_size": list(d.render_size), "crop_size": list(d.size),
                 "augmentation": f"random resized crop (area {d.min_scale:g}-1, aspect 3/4-4/3)"
                                 + (" + horizontal flip" if d.flip else "")},
        "optimization": {"steps": step, "batch_size": cfg.batch_size, "optimizer": "AdamW (0.9, 0.95)",
                         "lr": cfg.lr, "warmup": cfg.warmup, "schedule": "linear warm-up + cosine to 0",
                         "weight_decay": cfg.weight_decay, "clip_grad": cfg.clip_grad, "seed": cfg.seed},
        "result": {"final_loss_mean_last_50": sum(last) / len(last) if last else None,
                   "first_loss": hist[0]["loss"] if hist else None},
        "wall_time_s": round(float(trainer.get("wall", 0.0)), 1),
        "machine": machine(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "notice": "pretrained on synthetic scenes, not ImageNet: check conclusions with real "
                  "EVA-02 weights",
        "config": _config_dict(cfg),
    }
    card = portable_paths(card)  # out_dir, a weights file: no absolute path of this machine
    write_text(card_path(out_file), json.dumps(card, indent=2) + "\n")
    return card


def card_path(weights_file: str | Path) -> Path:
    """``x.safetensors`` -> ``x.card.json``."""
    p = Path(weights_file)
    return p.with_name(p.name.removesuffix(".safetensors") + ".card.json")


# --- Hydra app -------------------------------------------------------------------------------
def _run(cfg) -> float:
    pcfg = to_pretrain(cfg)
    log.info("pretraining config:\n%s", OmegaConf.to_yaml(OmegaConf.structured(pcfg)))
    trainer = Pretrainer(pcfg)
    history = trainer.fit()
    out = Path(pcfg.out_dir) / "backbone.safetensors"
    print(f"backbone: {out}\ncard: {card_path(out)}")
    return float(history[-1]["loss"]) if history else float("nan")


def _make_app():
    import hydra

    _register_schema()

    @hydra.main(config_path="../conf", config_name="pretrain_root", version_base="1.3")
    def pretrain_app(cfg) -> float:
        """``icm pretrain pretrain=quick steps=20 out_dir=runs/p``: overrides and sweeps by Hydra."""
        try:
            return _run(cfg)
        except ICMError as e:  # one line, exit 2, as every other icm command
            print(f"{type(e).__name__}: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return pretrain_app


pretrain_app = _make_app()

__all__ = ["PretrainConfig", "PretrainDataConfig", "Pretrainer", "MIMModel", "MIMOutput",
           "export_backbone", "check_disjoint", "load_pretrain_config", "pretrain_app",
           "patch_targets", "patchify", "block_mask", "random_mask", "card_path", "portable_paths"]
