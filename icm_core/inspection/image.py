"""What the inspector shows about one image through one task: predictions, bits, latents.

One pass per (weights, image, task) computes everything the views need; it is cached by the
task's weight fingerprint and a hash of the image, so sliders and clicks read stored tensors::

    image -> ICMModel.analysis -> y -> the task's CPU coder (the one that writes the stream)
          -> entropy estimate (bits per element, hyperprior and spatial-prior parameters)
          -> y_hat -> decoder (prediction + every block's attention)
    image -> ICMModel.encode -> the real stream (section sizes)

Attention views live in ``inspect_attention.py``, DoRA views in ``inspect_dora.py``, error
maps in ``inspect_errors.py``.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from icm_core.codec import coder
from icm_core.codec.coder import EncodedImage, cpu_coder
from icm_core.data.images import load_image, pil_to_tensor
from icm_core.data.registry import make_dataset
from icm_core.data.transforms import resize
from icm_core.errors import ConfigError, DatasetError
from icm_core.inspection.runs import load_run, sweep_runs
from icm_core.models import rate as vr
from icm_core.models.decoder import AttentionMaps
from icm_core.models.entropy import EntropyOutput, bits_of
from icm_core.models.prelim import upsample_to

# -- images -------------------------------------------------------------------------------
NO_LABELS = ("no labels: error maps need labels, and a photo has none; open a sample of the "
             "run's dataset by its index to see them")


@dataclass
class ImageSource:
    """An image to inspect, with its labels when it has any (a sample of a labelled dataset)."""

    image: torch.Tensor  # (3, H, W) float in [0, 1], on the CPU
    targets: dict[str, torch.Tensor] = field(default_factory=dict)
    name: str = "image"

    @property
    def labelled(self) -> bool:
        return bool(self.targets)


class _DatasetCache:
    """The last few validation datasets opened by index, by data config and tasks (a real
    dataset scans its folder once, not at every click)."""

    def __init__(self, size: int = 4):
        self.size = size
        self._items: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, data, tasks):
        key = (repr(data), tuple(tasks))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        ds = make_dataset(data, "val", list(tasks))
        with self._lock:
            self._items[key] = ds
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return ds

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


DATASETS = _DatasetCache()


def dataset_sample(index: int, cfg) -> ImageSource:
    """Validation sample ``index`` of the dataset ``cfg.data`` names, with its labels of
    ``cfg.tasks`` (none for an unlabelled dataset), cropped to its real pixels."""
    ds = DATASETS.get(cfg.data, cfg.tasks)
    n = len(ds)
    if not 0 <= index < n:
        what = (f"data.val_length is {n}" if cfg.data.name == "synthetic" else
                f"the val split of {cfg.data.root or 'data.root'} has {n}")
        raise DatasetError(f"{cfg.data.name} validation sample {index} does not exist: {what}; "
                           f"pick 0..{n - 1}")
    s = ds[index]
    h, w = s.get("meta", {}).get("valid", tuple(s["image"].shape[-2:]))
    tasks = [t for t in cfg.tasks if t in s]
    targets = {t: s[t][..., :h, :w] for t in tasks}
    name = f"{cfg.data.name} val {index}: {s.get('meta', {}).get('id', index)}"
    return ImageSource(s["image"][..., :h, :w].float().contiguous(), targets, name)


def fit_into(image: torch.Tensor, size) -> torch.Tensor:
    """``image`` (3, H, W) scaled down (aspect kept) to fit ``size`` (H, W), as datasets
    evaluate; smaller images are returned unchanged."""
    H, W = image.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if H <= h and W <= w:
        return image
    f = min(h / H, w / W)
    out = (min(h, max(1, round(H * f))), min(w, max(1, round(W * f))))
    return resize({"image": image}, out)["image"]


def resolve_image(source, cfg=None) -> ImageSource:
    """A validation sample index of the dataset ``cfg.data`` names (with its labels of
    ``cfg.tasks``), a photo (a file path or its bytes, a PIL image, an (H, W, 3) uint8 array;
    fitted into ``cfg.data.size`` when ``cfg`` is given, as ``data=folder`` evaluates it) or a
    (3, H, W) / (1, 3, H, W) tensor in [0, 1] (as it is) -> ``ImageSource``. Photos and tensors
    have no labels."""
    if isinstance(source, ImageSource):
        return source
    if isinstance(source, bool):
        raise DatasetError(f"image source {source!r}: give a sample index, a path or an image")
    if isinstance(source, int):
        if cfg is None:
            raise ConfigError("a sample index needs the model's config (its dataset); pass cfg")
        return dataset_sample(source, cfg)
    if isinstance(source, torch.Tensor):
        x = source[0] if source.dim() == 4 and source.shape[0] == 1 else source
        if x.dim() != 3 or x.shape[0] != 3:
            raise DatasetError(f"image tensor of shape {tuple(source.shape)}: give (3, H, W) or "
                               "(1, 3, H, W) in [0, 1]")
        return ImageSource(x.detach().float().cpu(), {}, "tensor")
    if isinstance(source, str | Path):
        image, name = load_image(source), Path(source).name
    elif isinstance(source, bytes | bytearray | memoryview):
        image, name = load_image(io.BytesIO(bytes(source))), "upload"
    elif hasattr(source, "convert") and hasattr(source, "size"):  # a PIL image
        image, name = pil_to_tensor(source, "uploaded image"), "upload"
    elif isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise DatasetError(f"array image of shape {source.shape} {source.dtype}: give "
                               "(H, W, 3) uint8")
        image, name = torch.from_numpy(source.astype(np.float32) / 255).permute(2, 0, 1), "array"
    else:
        raise DatasetError(f"image source of type {type(source).__name__}: give a sample index, a "
                           "path, a PIL image, an (H, W, 3) uint8 array or a (3, H, W) tensor")
    if cfg is not None:
        fitted = fit_into(image, cfg.data.size)
        if fitted.shape != image.shape:
            name += f" (fitted into {fitted.shape[-2]}x{fitted.shape[-1]})"
        image = fitted
    return ImageSource(image.contiguous(), {}, name)


# -- bits ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BitAllocation:
    """Where the bits of one stream go: real section sizes beside the entropy model's estimate.

    Maps cover every coded latent position (the padding up to a multiple of 64 px is coded
    too, so they sum to the estimate); ``valid_hw`` are the positions that cover the image.
    """

    task: str
    height: int
    width: int
    header_bytes: int
    z_bytes: int
    step1_bytes: int
    step2_bytes: int
    total_bytes: int
    bits_y: float  # the entropy model's estimate of the y sections (step 1 + step 2)
    bits_z: float
    bits_map: torch.Tensor  # (h, w) estimated bits of y per latent position
    step1_map: torch.Tensor  # (h, w) bits coded in step 1 (hyperprior parameters)
    step2_map: torch.Tensor  # (h, w) bits coded in step 2 (spatial prior parameters)
    bits_per_channel: torch.Tensor  # (M,)
    z_bits_map: torch.Tensor  # (h/4, w/4) estimated bits of z per hyper-latent position
    valid_hw: tuple[int, int]
    latent_stride: int  # image pixels per latent position
    rate: float | None = None  # variable rate: the rate coded at (on the grid); None: fixed

    @property
    def estimated_bits(self) -> float:
        return self.bits_y + self.bits_z

    @property
    def bpp(self) -> float:
        """Real bits per pixel (header included)."""
        return 8 * self.total_bytes / (self.height * self.width)

    @property
    def bpp_estimated(self) -> float:
        return self.estimated_bits / (self.height * self.width)

    def sections(self) -> dict[str, int]:
        return {"header": self.header_bytes, "z": self.z_bytes, "step 1": self.step1_bytes,
                "step 2": self.step2_bytes}

    def estimate_bytes(self) -> dict[str, float]:
        """The estimate split as the sections are (no header: the model does not estimate it)."""
        return {"header": 0.0, "z": self.bits_z / 8, "step 1": float(self.step1_map.sum()) / 8,
                "step 2": float(self.step2_map.sum()) / 8}

    def map_over_image(self, which: str = "total") -> np.ndarray:
        """(H, W) bits per pixel of the chosen map: each latent position's bits spread evenly over
        the stride x stride pixels it stands for (its sum over the image = the valid part)."""
        m = {"total": self.bits_map, "step1": self.step1_map, "step2": self.step2_map}[which]
        s = self.latent_stride
        a = np.kron(m.numpy().astype(np.float64), np.ones((s, s))) / (s * s)
        return a[: self.height, : self.width]


# -- one inspection -----------------------------------------------------------------------
@dataclass
class Inspection:
    """Everything computed for one (weights, image, task); views read from it."""

    task: str
    source: ImageSource
    prediction: torch.Tensor  # (C_t, H, W) raw (logits for class tasks)
    preliminary: torch.Tensor  # (C_t, H, W) raw, bicubic-upsampled
    y: torch.Tensor  # (M, h, w) before quantization
    entropy: EntropyOutput  # batch of one, CPU, eval mode: what the coder computes
    attention: list[AttentionMaps]  # every decoder block, decode order
    bits: BitAllocation
    stream: EncodedImage
    hyper_only_bits: torch.Tensor  # (M, h, w) bits had every element used the hyperprior
    padded_hw: tuple[int, int]
    key: tuple
    memo: dict = field(default_factory=dict)  # derived views (rollout, ...), per inspection

    @property
    def image(self) -> torch.Tensor:
        return self.source.image

    @property
    def target(self) -> torch.Tensor | None:
        return self.source.targets.get(self.task)

    @property
    def rate(self) -> float | None:
        """The rate coded at (a variable-rate model), None for a fixed-rate one."""
        return self.bits.rate

    @property
    def element_bits(self) -> torch.Tensor:
        """(M, h, w) estimated bits of each element of y."""
        return self.entropy.y_bits[0]

    @property
    def spatial_gain(self) -> torch.Tensor:
        """(h, w) bits the spatial prior saved per position over hyperprior-only coding
        (negative where it cost bits); only step-2 elements differ."""
        return (self.hyper_only_bits - self.element_bits).sum(0)

    def channel_order(self) -> list[int]:
        """Channels of y_hat, the most expensive first."""
        return torch.argsort(self.bits.bits_per_channel, descending=True, stable=True).tolist()

    def latent_planes(self, channel: int) -> dict[str, torch.Tensor]:
        """One channel's (h, w) planes: what was coded beside what each prior predicted."""
        e = self.entropy
        M = e.y_hat.shape[1]
        if not 0 <= channel < M:
            raise ConfigError(f"latent channel {channel}: y has channels 0..{M - 1}")
        mask = e.step1_mask[0, channel]
        used_mean = torch.where(mask, e.hyper_means[0, channel], e.spatial_means[0, channel])
        used_scale = torch.where(mask, e.hyper_scales[0, channel], e.spatial_scales[0, channel])
        return {"y_hat": e.y_hat[0, channel], "hyper mean": e.hyper_means[0, channel],
                "hyper scale": e.hyper_scales[0, channel],
                "spatial mean": e.spatial_means[0, channel],
                "spatial scale": e.spatial_scales[0, channel], "coded mean": used_mean,
                "coded scale": used_scale, "residual": e.y_hat[0, channel] - used_mean,
                "bits": self.element_bits[channel], "step 1": mask.float()}


def image_digest(image: torch.Tensor) -> str:
    x = image.detach().float().cpu().contiguous()
    return hashlib.sha256(str(tuple(x.shape)).encode() + x.numpy().tobytes()).hexdigest()[:16]


def weights_key(model, task: str) -> tuple:
    """What identifies the weights coding ``task``: the frozen backbone and the task's tensors
    (the fingerprint is recomputed after every optimizer step, so a live run is never stale)."""
    return (model.backbone_hash, coder.fingerprint(model, task).hex())


class InspectionCache:
    """The last ``size`` inspections, by (weights, image, task); shared between threads."""

    def __init__(self, size: int = 16):
        self.size = size
        self._items: OrderedDict[tuple, Inspection] = OrderedDict()
        self._lock = threading.Lock()
        self.misses = 0

    def get(self, key: tuple) -> Inspection | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: tuple, value: Inspection) -> None:
        with self._lock:
            self.misses += 1
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


CACHE = InspectionCache()


def inspect_image(model, source, task: str | None = None, *,
                  cache: InspectionCache | None = CACHE, rate: float | None = None) -> Inspection:
    """Run ``task`` on one image and keep everything the views show (cached); ``rate``: a
    variable-rate model's rate in [0, 1] (default 1), refused by a fixed-rate one."""
    task = model.task_arg(task)
    code = model.heads[task].rate_code(rate)
    if model.heads[task].entropy is None:
        raise ConfigError("this model has no compression stage (model.compression=false): there "
                          "are no bits to inspect; open a compressing run")
    src = resolve_image(source, model.cfg)
    with model.reading(task):  # one snapshot of the weights for the key and the pass
        key = (*weights_key(model, task), image_digest(src.image), task)
        key = key if code is None else (*key, code)  # fixed rate: the key it always had
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            if hit.source.targets or not src.targets:
                return hit
            hit.source = src  # same pixels, now with labels
            return hit
        insp = _compute(model, src, task, key, code)
    if cache is not None:
        cache.put(key, insp)
    return insp


def _compute(model, src: ImageSource, task: str, key: tuple, code: int | None) -> Inspection:
    H, W = src.image.shape[-2:]
    image = src.image.unsqueeze(0).to(model.device)
    head = model.heads[task]
    coarse, y, padded = model.analysis(image, task)
    em = cpu_coder(model, task)  # the model that writes the stream, so bits match it
    y = head.to_coded(y.float(), code).cpu()  # variable rate: y / q_enc(rate), what is coded
    ent = em(y)
    dec = head.synthesis(head.from_coded(ent.y_hat.to(model.device), code), padded,
                         return_attention=True)
    stream = coder.encode(model, src.image, task,
                          rate=None if code is None else vr.rate_of_code(code))
    # bits had each element been coded with the hyperprior's parameters (as step 1 is)
    mu0, s0 = ent.hyper_means, ent.hyper_scales
    hyper_only = bits_of(em._y_likelihood(torch.round(y - mu0) + mu0, s0, mu0))[0]
    bits = _allocation(stream, ent, model.backbone.stride)
    return Inspection(task, src, dec.prediction[0, :, :H, :W].float().cpu(),
                      upsample_to(coarse, padded)[0, :, :H, :W].float().cpu(), y[0], ent,
                      [_on_cpu(m) for m in dec.attention or []], bits, stream, hyper_only,
                      tuple(padded), key)


def _on_cpu(m: AttentionMaps) -> AttentionMaps:
    return replace(m, scores=m.scores.detach().float().cpu(),
                   raw=None if m.raw is None else m.raw.detach().float().cpu())


def _allocation(stream: EncodedImage, ent: EntropyOutput, stride: int) -> BitAllocation:
    eb = ent.y_bits[0]  # (M, h, w)
    mask = ent.step1_mask[0]
    s = stream.sections
    H, W = stream.height, stream.width
    return BitAllocation(
        stream.task, H, W, s.header, s.z, s.step1, s.step2, len(stream),
        float(eb.sum()), float(ent.z_bits.sum()), eb.sum(0), (eb * mask).sum(0),
        (eb * ~mask).sum(0), eb.sum((1, 2)), ent.z_bits[0].sum(0),
        (-(-H // stride), -(-W // stride)), stride, stream.rate)


def bit_allocation(model, image, task: str | None = None, *,
                   rate: float | None = None) -> BitAllocation:
    """The real stream of ``image`` for ``task`` split into sections, beside the estimate;
    ``rate``: a variable-rate model's rate in [0, 1] (default 1), refused by a fixed-rate one."""
    return inspect_image(model, image, task, rate=rate).bits


__all__ = ["BitAllocation", "Inspection", "InspectionCache", "ImageSource", "NO_LABELS",
           "bit_allocation", "dataset_sample", "fit_into",
           "inspect_image", "resolve_image", "load_run", "sweep_runs", "CACHE"]
