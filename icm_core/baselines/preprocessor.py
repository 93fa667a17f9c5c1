"""The pre-processor baseline: a small image-to-image network in front of a classical codec.

After Lu et al., "Preprocessing enhanced image compression for machine vision" (TCSVT 2024;
reference [12] of the paper): the network edits the image before a standard, non-differentiable
codec so that the codec spends fewer bits on what the machine task ignores. It is trained
through a differentiable proxy of the codec and a FROZEN task network:

    L = L_task(baseline(proxy(P(x)))) + lmbda * bpp_proxy(P(x))

and evaluated with the real codec in the loop (``icm_core.studies.compare``).

The proxy here imitates baseline JPEG as Pillow writes it (``codecs.get_codec("jpeg")``):
JFIF RGB -> YCbCr, 4:2:0 box-averaged chroma, 8x8 orthonormal DCT (= JPEG's FDCT), the Annex K
tables scaled by libjpeg's quality rule, rounding with a straight-through gradient, and
libjpeg's triangular ("fancy") chroma upsampling, which is bilinear interpolation. Its rate
counts the symbols JPEG's Huffman coder writes: per block a DC-difference symbol plus its
magnitude bits and an end-of-block code, per nonzero AC coefficient a (run, size) symbol plus
``size`` magnitude bits. The two symbol costs (``JPEG_SYMBOL_BITS``) were fitted by least
squares to real Pillow JPEG sizes of synthetic training scenes (64 to 256 px, qualities 5 to
90); :func:`proxy_agreement` measures how well the proxy tracks the real bytes. The forward
value is this exact count on the rounded coefficients; its gradient comes from a smooth
relaxation (each coefficient costs ``(h + 1) min(|q|, 1) + log2 max(|q|, 1)``), so shrinking a
small coefficient towards zero is rewarded by the bits its symbol would cost.

One pre-processor is trained per codec that has a proxy (``jpeg_proxy.PROXIES``, today JPEG
only: ``PreprocessorConfig.codec``); ``icm compare`` puts the JPEG-trained one in front of every
other codec and records so (``jpeg_proxy.proxy_for``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from icm_core.baselines.jpeg_proxy import PROXIES, make_proxy
from icm_core.data.images import pil_to_tensor
from icm_core.errors import ConfigError, DatasetError
from icm_core.files import atomic_path
from icm_core.tasks.objective import task_loss

FORMAT = "icm-preprocessor/1"


# -- the pre-processor ------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class PreprocessorConfig:
    """How a pre-processor is built and trained (stored with its weights)."""

    codec: str = "jpeg"  # the codec whose differentiable proxy it trains through (PROXIES)
    # weight of the proxy rate (bpp) against the task loss; chosen on validation scenes
    # (benchmarks/bench_choose_preprocessor.py -> results/preprocessor_val.json; tested)
    lmbda: float = 0.3
    qualities: tuple[int, ...] = (10, 20, 30, 50, 70)  # proxy qualities, one drawn per step
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 4
    size: int = 128  # side of the random training crops (px); smaller samples are used whole
    width: int = 32  # channels of the residual CNN
    blocks: int = 3  # residual blocks
    seed: int = 0

    def __post_init__(self):
        ints = ("steps", "batch_size", "size", "width", "blocks", "seed")
        for name in (*ints, "lmbda", "lr", "qualities"):
            v = getattr(self, name)
            if name == "qualities":
                ok = isinstance(v, (list, tuple)) and all(_is_int(q) for q in v)
            else:
                ok = _is_int(v) or (name not in ints and isinstance(v, float))
            if not ok:
                want = "a list of integers" if name == "qualities" else (
                    "an integer" if name in ints else "a number")
                raise ConfigError(f"PreprocessorConfig.{name}={v!r}: expected {want}")
        object.__setattr__(self, "qualities", tuple(int(q) for q in self.qualities))
        checks = [("codec", self.codec in PROXIES, f"one of {list(PROXIES)}"),
                  ("lmbda", self.lmbda >= 0, "a number >= 0"),
                  ("qualities", bool(self.qualities) and all(1 <= q <= 100 for q in self.qualities),
                   "a non-empty list of JPEG qualities in 1..100"),
                  ("steps", self.steps >= 0, "an integer >= 0"),
                  ("lr", self.lr > 0, "a number > 0"),
                  ("batch_size", self.batch_size >= 1, "an integer >= 1"),
                  ("size", self.size >= 16 and self.size % 16 == 0, "a multiple of 16, >= 16"),
                  ("width", self.width >= 1, "an integer >= 1"),
                  ("blocks", self.blocks >= 0, "an integer >= 0")]
        for name, ok, want in checks:
            if not ok:
                raise ConfigError(f"PreprocessorConfig.{name}={getattr(self, name)!r}: use {want}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> PreprocessorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown pre-processor settings {unknown}; known: "
                              f"{sorted(known)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"{source}: bad pre-processor settings ({e})") from e


class _ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class PreProcessor(nn.Module):
    """image (B, 3, H, W) in [0, 1] -> edited image in [0, 1], any H, W.

    A residual CNN: x + tail(body(head(x))), clamped. The tail starts at zero, so a new
    pre-processor is the identity and training moves away from "code the image as it is".
    """

    def __init__(self, cfg: PreprocessorConfig | None = None):
        super().__init__()
        self.cfg = cfg or PreprocessorConfig()
        c = self.cfg.width
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.Sequential(*[_ResBlock(c) for _ in range(self.cfg.blocks)])
        self.tail = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ConfigError(f"image of shape {tuple(image.shape)}: expected (B, 3, H, W) in "
                              "[0, 1]")
        residual = self.tail(self.body(F.relu(self.head(image))))
        return (image + residual).clamp(0, 1)


# -- training ---------------------------------------------------------------------------------
def _crop(sample_image: torch.Tensor, target: torch.Tensor, size: int, g: torch.Generator):
    """The same random crop of image and label, offsets on the 16 px JPEG MCU grid."""
    H, W = sample_image.shape[-2:]
    ch, cw = min(size, H), min(size, W)
    oy = int(torch.randint((H - ch) // 16 + 1, (1,), generator=g)) * 16
    ox = int(torch.randint((W - cw) // 16 + 1, (1,), generator=g)) * 16
    return (sample_image[..., oy:oy + ch, ox:ox + cw], target[..., oy:oy + ch, ox:ox + cw])


def preprocessor_loss(pp: PreProcessor, proxy: nn.Module, baseline_model, task: str,
                      images: torch.Tensor, targets: torch.Tensor, quality: int,
                      lmbda: float) -> dict:
    """The training objective on one batch: task loss + lmbda * proxy bpp (tensors)."""

    coded = proxy(pp(images), quality)
    out = baseline_model(coded.image, task=task)
    t_loss = task_loss(out, targets, baseline_model.dataset, baseline_model.cfg.model.inter_sup)
    bpp = coded.bits.mean() / (images.shape[-2] * images.shape[-1])
    return {"loss": t_loss + lmbda * bpp, "task_loss": t_loss, "bpp": bpp}


def train_preprocessor(baseline_model, task: str, dataset, cfg: PreprocessorConfig, *,
                       log: Callable[[dict], None] | None = None) -> PreProcessor:
    """Train a pre-processor for ``task`` through the codec proxy and the FROZEN baseline.

    ``baseline_model``: an ``ICMModel`` built with ``model.compression=false`` (it is put in eval
    mode and its parameters' ``requires_grad`` are restored afterwards). ``dataset``: samples
    with ``image`` and ``task`` keys (e.g. ``SyntheticScenes("train", tasks=[task])``).
    ``log(values)`` gets ``step, loss, task_loss, bpp, quality`` after every step.
    """
    if getattr(baseline_model, "compression", False):
        raise ConfigError("train_preprocessor needs an uncompressed baseline (model.compression="
                          "false): a pre-processor replaces the learned codec, it does not feed it")
    task = baseline_model.task_arg(task)
    if len(dataset) == 0:
        raise DatasetError("train_preprocessor: the dataset is empty")
    first = dataset[0]
    if "image" not in first or task not in first:
        raise DatasetError(f"train_preprocessor: dataset samples have keys {sorted(first)}; "
                           f"they need 'image' and {task!r}")
    device = baseline_model.device
    with torch.random.fork_rng(devices=[]):  # seeded weights without moving the caller's RNG
        torch.manual_seed(cfg.seed)
        pp = PreProcessor(cfg).to(device)
    proxy = make_proxy(cfg.codec).to(device)
    opt = torch.optim.Adam(pp.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    grads = [(p, p.requires_grad) for p in baseline_model.parameters()]
    modes = [(m, m.training) for m in baseline_model.modules()]
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        baseline_model.eval()
        pp.train()
        for step in range(cfg.steps):
            idx = torch.randint(len(dataset), (cfg.batch_size,), generator=g).tolist()
            crops = [_crop(s["image"], s[task], cfg.size, g) for s in (dataset[i] for i in idx)]
            images = torch.stack([c[0] for c in crops]).to(device)
            targets = torch.stack([c[1] for c in crops]).to(device)
            quality = cfg.qualities[int(torch.randint(len(cfg.qualities), (1,), generator=g))]
            values = preprocessor_loss(pp, proxy, baseline_model, task, images, targets, quality,
                                       cfg.lmbda)
            if not torch.isfinite(values["loss"]):
                raise FloatingPointError(f"pre-processor loss became {values['loss'].item()} at "
                                         f"step {step}; lower lr ({cfg.lr}) or lmbda ({cfg.lmbda})")
            opt.zero_grad(set_to_none=True)
            values["loss"].backward()
            nn.utils.clip_grad_norm_(pp.parameters(), 1.0)
            opt.step()
            if log is not None:
                log({"step": step + 1, "quality": quality,
                     **{k: float(v.detach()) for k, v in values.items()}})
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
    return pp.eval()


# -- files ------------------------------------------------------------------------------------
def save_preprocessor(pp: PreProcessor, path: str | Path) -> Path:
    """Weights as safetensors, the config in the file's metadata; written atomically."""

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in pp.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(pp.cfg.to_dict())}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def load_preprocessor(path: str | Path, device: str | torch.device = "cpu") -> PreProcessor:
    """A pre-processor from ``save_preprocessor``; any unreadable or foreign file raises
    ``ConfigError`` naming it."""

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{str(path)!r}: no such pre-processor file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{str(path)!r} is not a readable safetensors file ({e}); "
                          "save it again with save_preprocessor") from e
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{str(path)!r} is not a pre-processor file (format "
                          f"{meta.get('format')!r}, expected {FORMAT!r})")
    try:
        cfg = PreprocessorConfig.from_dict(json.loads(meta["config"]), source=str(path))
    except (KeyError, json.JSONDecodeError, TypeError) as e:
        raise ConfigError(f"{str(path)!r}: its pre-processor config is missing or broken "
                          f"({e})") from e
    pp = PreProcessor(cfg)
    try:
        pp.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"{str(path)!r}: weights do not fit its config ({e})") from e
    return pp.to(device).eval()


def apply_preprocessor(pp: PreProcessor, image):
    """Pre-process one PIL image (eval mode, no gradients) -> a PIL image of the same size and
    mode, 8 bits per channel (alpha, if any, is kept as it was)."""

    if not isinstance(image, Image.Image):
        raise ConfigError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    mode = image.mode
    device = next(pp.parameters()).device
    was_training = pp.training
    pp.eval()
    try:
        with torch.no_grad():
            out = pp(pil_to_tensor(image)[None].to(device))[0]
    finally:
        pp.train(was_training)
    pixels = (out.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    rgb = Image.fromarray(pixels, "RGB")
    if mode == "RGB":
        return rgb
    if mode in ("RGBA", "LA"):
        result = rgb.convert(mode[:-1])
        result.putalpha(image.getchannel("A"))
        return result
    return rgb.convert(mode)
