"""What a configuration costs: parameters, bytes, storage for K tasks, FLOPs, optimizer state and
energy meters, in one place (``icm bench``, ``icm info``, the Setup and Ablation panels and
``icm compare``'s complexity table read it).

Everything here is counted, not timed, and needs no weights: the model is built on the meta
device (shapes only), so EVA-02-L at 448x576 costs seconds and no memory. What must be measured
(the training step's time and peak memory, inference, encode and decode times, joules) is done
by ``icm_core.training.bench``, which fills the measured fields of the same ``Accounting``
(that module runs the trainer's own step, a layer above this one).

Conventions:
- parameters: the backbone as the paper counts it (the whole published network, pruned norms
  and head included); "trainable" is what one task trains (its adapter, or the whole backbone
  for full/scratch, and its head); ``trainable_percent`` is the paper's "0.41 %": trainable
  backbone parameters over backbone parameters.
- bytes: the adapter as its safetensors file (``safetensors_bytes``, exact, computed from the
  shapes), backbone and heads as float32 parameters.
- FLOPs: ``count_flops``, the workbench's one FLOP counter
  (``torch.utils.flop_counter.FlopCounterMode``), 2 per multiply-add, matrix products and
  convolutions only (normalizations, activations, interpolations, the factorized prior's
  per-element likelihood and the rANS coder are not counted), per component at one image
  (``component_flops``), or per side of the channel (``side_flops``: sender and receiver).
- optimizer state: Adam's ``exp_avg`` and ``exp_avg_sq`` per trainable tensor plus its float32
  ``step`` scalar (what ``sum of state tensors`` reads after one step).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import glob
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from icm_core.config import load_config
from icm_core.config.schema import ExperimentConfig
from icm_core.errors import ConfigError
from icm_core.models import adapters as ad
from icm_core.models.backbone import weights_source
from icm_core.models.decoder import TransformerDecoder
from icm_core.models.icm import HYPERPRIOR_STRIDE, ICMModel, build_model
from icm_core.tasks.registry import DATASET_TASKS, get_task, resolve_tasks

try:  # NVIDIA's meter (pip install nvidia-ml-py); optional: energy is then null with a note
    import pynvml
except ImportError:  # pragma: no cover - depends on the machine
    pynvml = None

FLOAT32_BYTES = 4  # every parameter of a built model is float32 (bf16 only under autocast)
COMPONENTS = ("backbone", "preliminary_decoder", "projection", "entropy_model", "decoder")
ADAM_STEP_BYTES = 4  # torch's Adam keeps ``step`` as a float32 scalar tensor per parameter
RAPL_ROOT = "/sys/class/powercap"

# torch dtype -> safetensors' name
_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
              torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
              torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


# -- parameters and bytes -------------------------------------------------------------------
def low_rank_params(d_in: int, d_out: int, rank: int, dora: bool = False) -> int:
    """Parameters of a rank-``rank`` LoRA on a ``d_in`` x ``d_out`` linear: A (r x d_in) and
    B (d_out x r); DoRA adds a magnitude per output (d_out)."""
    return rank * (d_in + d_out) + (d_out if dora else 0)


def safetensors_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of ``state`` written as one safetensors file, exact, from shapes and dtypes only
    (meta tensors welcome: nothing is materialized). 0 for an empty state (no file)."""
    if not state:
        return 0
    entries, offset = {}, 0
    # safetensors lays tensors out by alignment (larger items first), then by name
    for name, t in sorted(state.items(), key=lambda kv: (-kv[1].element_size(), kv[0])):
        if t.dtype not in _ST_DTYPES:
            raise ConfigError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        n = t.numel() * t.element_size()
        entries[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape),
                         "data_offsets": [offset, offset + n]}
        offset += n
    header = len(json.dumps(entries, separators=(",", ":")).encode())
    return 8 + -(-header // 8) * 8 + offset


def parameter_counts(model: ICMModel, task: str | None = None) -> dict:
    """Parameters of one task: what its forward uses (``total_params``: the shared backbone, its
    own adapter, its head), what it trains (``trainable_params``: adapter + head), the backbone
    as the paper counts it and the trainable share of it (``trainable_percent``)."""
    task = model.task_arg(task)
    report = model.trainable_parameters(task)
    own = {id(p) for p in model.task_parameters(task)}
    others = {id(p) for t in model.tasks if t != task for p in model.task_parameters(t)} - own
    used = [p for n, p in model.backbone.named_parameters()
            if id(p) not in others and ("lora_" not in n or id(p) in own)]
    head = sum(p.numel() for p in model.heads[task].parameters())
    return {"total_params": sum(p.numel() for p in used) + head,
            "trainable_params": sum(p.numel() for p in model.task_parameters(task)),
            "backbone_params": report.backbone_params,
            "trainable_backbone_params": report.trainable_backbone_params,
            "trainable_percent": round(report.trainable_percent, 4),
            "head_params": head}


def optimizer_state_bytes(params) -> int:
    """Adam's state for ``params`` once it has stepped: two moments of each tensor's size and
    dtype and one float32 ``step`` scalar per tensor (torch's default, non-capturable Adam)."""
    return sum(2 * p.numel() * p.element_size() + ADAM_STEP_BYTES for p in params)


def measured_optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """The bytes of every tensor in ``optimizer``'s state (read after at least one step)."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if torch.is_tensor(v))


def storage_for_tasks(counts: dict, adapter_bytes: int, mode: str, k: int) -> dict:
    """Bytes to keep ``k`` tasks: one frozen backbone + k task files (adapter + head) against k
    fine-tuned copies. ``counts``: ``backbone_params`` and ``head_params`` (``parameter_counts``).

    Backbone and heads are counted as float32 parameters (the whole published network, as the
    paper counts it); the adapter as its real safetensors bytes. A kind that owns its backbone
    (full, scratch) needs a backbone per task: no sharing. Fixed: 0 adapter bytes."""
    backbone = counts["backbone_params"] * FLOAT32_BYTES
    head = counts["head_params"] * FLOAT32_BYTES
    own_backbone = ad.get_adapter_kind(mode).owns_backbone
    per_task = head + (backbone if own_backbone else adapter_bytes)
    total = (0 if own_backbone else backbone) + k * per_task
    copies = k * (backbone + head)
    return {"k": k, "backbone_bytes": backbone, "per_task_bytes": per_task, "storage_bytes": total,
            "full_copies_bytes": copies, "ratio": total / copies}


# -- FLOPs ----------------------------------------------------------------------------------
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


flops_of = count_flops


def _meta_ready(model: ICMModel) -> ICMModel:
    """The decoder reads its fusion weights' values (``float(alpha)``), which meta tensors have
    not: give them real 0-dim values (a meta model is built for counting only)."""
    for head in model.heads.values():
        _meta_ready_decoder(head.decoder)
    return model


def _meta_ready_decoder(decoder: TransformerDecoder) -> TransformerDecoder:
    for stage in decoder.stages:
        if stage.alpha is not None and stage.alpha.is_meta:
            stage.alpha = nn.Parameter(torch.tensor(0.1))
    return decoder


# what each side of the channel runs, by counted part (``_part_flops``): the entropy model's
# hyper analysis runs at the sender only; its hyper synthesis and spatial prior at both sides
_PARTS = ("backbone", "preliminary_decoder", "projection", "hyper_analysis", "entropy_prior",
          "decoder")
_SIDES = {"encoder": ("backbone", "preliminary_decoder", "projection", "hyper_analysis",
                      "entropy_prior"),
          "decoder": ("entropy_prior", "decoder")}


def _part_flops(model: ICMModel, task: str, size: tuple[int, int], parts=_PARTS) -> dict[str, int]:
    """FLOPs of the ``parts`` of ``task``'s path for one ``size`` (H, W) image, in eval mode.
    Parts are counted on latents of their real shapes, so each may be counted alone."""
    H, W = size
    device = "meta" if model.device.type == "meta" else model.device
    head, em = model.heads[task], model.heads[task].entropy
    flops = {}
    with model.reading(task), torch.device(device):
        Hp, Wp = model.padded_size(H, W)
        p = model.backbone.stride
        y = torch.zeros(1, model.cfg.model.latent_channels, Hp // p, Wp // p)
        if {"backbone", "preliminary_decoder", "projection"} & set(parts):
            flops["backbone"], feats = count_flops(lambda: model.backbone(torch.zeros(1, 3, Hp, Wp)))
            flops["preliminary_decoder"], (tf, coarse) = count_flops(lambda: head.prelim(feats))
            flops["projection"], y = count_flops(lambda: head.proj(torch.cat([tf, coarse], dim=1)))
        if em is None:
            flops["hyper_analysis"] = flops["entropy_prior"] = 0
        elif {"hyper_analysis", "entropy_prior"} & set(parts):
            flops["hyper_analysis"], z = count_flops(lambda: em.h_a(y))

            def prior():  # what decoding needs too: hyper synthesis, then the spatial prior
                mu0, s0 = em._hyper(z)
                mask = torch.ones_like(y, dtype=torch.bool)
                em._step2_params(y, mask, mu0, s0)
            flops["entropy_prior"], _ = count_flops(prior)
    if "decoder" in parts:  # the same module counted on its config, cached by shape
        flops["decoder"] = _decoder_count(*_decoder_key(model.cfg, task, (Hp // p, Wp // p)))[0]
    return {k: flops[k] for k in parts}


def component_flops(model: ICMModel, task: str | None, size: tuple[int, int],
                    components=COMPONENTS) -> dict[str, int]:
    """FLOPs of one ``size`` (H, W) image through each component of ``task``'s path, in eval
    mode: backbone (with the task's adapter), preliminary decoder, projection, entropy model
    (its hyper analysis/synthesis and spatial prior networks) and decoder; ``total`` sums them
    when every component is counted. ``components``: a subset to count (the Setup panel and
    ``icm info`` count the decoder only). ``model`` may live on the meta device (then nothing
    is computed, shapes only)."""
    task = model.task_arg(task)
    bad = [c for c in components if c not in COMPONENTS]
    if bad or not components:
        raise ConfigError(f"FLOPs of {list(components)}: choose components from {list(COMPONENTS)}")
    parts = [p for p in _PARTS if (p if p in COMPONENTS else "entropy_model") in components]
    counted = _part_flops(model, task, size, parts)
    flops = {c: counted[c] for c in COMPONENTS if c in components and c != "entropy_model"}
    if "entropy_model" in components:
        flops["entropy_model"] = counted["hyper_analysis"] + counted["entropy_prior"]
    flops = {c: flops[c] for c in COMPONENTS if c in flops}
    if len(flops) == len(COMPONENTS):
        flops["total"] = sum(flops.values())
    return flops


def side_flops(model: ICMModel, task: str | None, size: tuple[int, int]) -> dict[str, int]:
    """FLOPs of one ``size`` (H, W) image at each side of the channel: ``encoder`` = backbone,
    adapter, preliminary decoder, projection and, with compression, the entropy model's networks
    that coding needs (hyper analysis, hyper synthesis, spatial prior); ``decoder`` = those that
    decoding needs (hyper synthesis, spatial prior) and the task decoder. Without compression
    the decoder side is the task decoder alone (a "Codec + Baseline" receiver runs both)."""
    task = model.task_arg(task)
    counted = _part_flops(model, task, size)
    return {side: sum(counted[p] for p in parts) for side, parts in _SIDES.items()}


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
    default ``cfg.data.size``), counted on a meta build of that decoder alone (no backbone:
    what ``decoder_flops_ratio`` compares); ``task`` (default: the first) fixes the output
    channels."""
    task = task or resolve_tasks(cfg.tasks, cfg.data.label_space)[0]
    flops, params = _decoder_count(*_decoder_key(cfg, task, decoder_latent(cfg, size)))
    return {"gflops": flops / 1e9, "params": params}


def decoder_gflops(cfg: ExperimentConfig, size: tuple[int, int] | list[int] | None = None,
                   task: str | None = None) -> float:
    """GFLOPs (1e9) of one task decoder decoding one image of ``size`` (``decoder_cost``)."""
    return decoder_cost(cfg, size, task)["gflops"]


def _decoder_key(cfg: ExperimentConfig, task: str, latent: tuple[int, int]) -> tuple:
    """What ``task``'s decoder costs depend on: its shapes and the latent's (h, w)."""
    m = cfg.model
    return (m.latent_channels, get_task(task).out_channels(cfg.data.label_space),
            tuple(m.decoder_dims), tuple(m.decoder_depths), m.decoder_heads, m.decoder,
            tuple(latent), cfg.backbone.patch_size)


@functools.lru_cache(maxsize=256)
def _decoder_count(latent_channels: int, out_channels: int, dims: tuple, depths: tuple,
                   heads: int, kind: str, latent: tuple[int, int], patch: int) -> tuple[int, int]:
    """(FLOPs, parameters) of one task decoder decoding one latent: THE decoder count, on a
    meta build; seconds (torch decomposes every op in Python), hence cached by shape."""
    with torch.device("meta"):
        dec = TransformerDecoder(latent_channels, out_channels, dims, depths, heads, kind)
        y = torch.empty(1, latent_channels, *latent)
    params = sum(p.numel() for p in dec.parameters())
    _meta_ready_decoder(dec)  # its 0-dim CPU fusion weights mix with meta tensors
    with torch.device("meta"), torch.no_grad():
        flops, _ = count_flops(lambda: dec(y, (latent[0] * patch, latent[1] * patch)))
    return flops, params


def counterpart_decoder(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with the other decoder kind: the low-complexity decoder's three stages plus a
    fourth of the last stage's width and depth for "Full Dec" (the paper presets' full_dec), or
    the full decoder's first three stages for the low one."""
    m = cfg.model
    if m.decoder == "low":
        new = dataclasses.replace(m, decoder="full", decoder_dims=[*m.decoder_dims, m.decoder_dims[-1]],
                                  decoder_depths=[*m.decoder_depths, m.decoder_depths[-1]])
    else:
        new = dataclasses.replace(m, decoder="low", decoder_dims=list(m.decoder_dims[:3]),
                                  decoder_depths=list(m.decoder_depths[:3]))
    return dataclasses.replace(cfg, model=new)


def decoder_flops_ratio(cfg: ExperimentConfig, size: tuple[int, int], task: str | None = None) -> float:
    """FLOPs of the full-resolution decoder over the low-complexity one at ``size``, for
    ``cfg``'s decoder and its ``counterpart_decoder``."""
    a, b = decoder_gflops(cfg, size, task), decoder_gflops(counterpart_decoder(cfg), size, task)
    full, low = (a, b) if cfg.model.decoder == "full" else (b, a)
    return full / low


# -- energy ---------------------------------------------------------------------------------
def _rapl_files() -> list[str]:
    """Package-level RAPL counters (intel-rapl:N, not their sub-zones: those are inside)."""
    return sorted(f for f in glob.glob(os.path.join(RAPL_ROOT, "intel-rapl:*", "energy_uj"))
                  if os.path.basename(os.path.dirname(f)).count(":") == 1)


class EnergyMeter:
    """Joules spent between ``start()`` and ``stop()`` where a meter exists: NVML's total energy
    counter on an NVIDIA GPU (the GPU board only), Linux RAPL on the CPU (every package, so other
    processes on the machine count too). Elsewhere ``available`` is False and ``note`` says why;
    ``stop()`` then returns None, never a guess."""

    def __init__(self, device: str = "cpu"):
        self.device = str(device)
        self.source, self.note, self._handle, self._files = None, "", None, []
        if self.device.startswith("cuda"):
            self._init_nvml()
        else:
            self._init_rapl()
        self._start = None

    def _init_nvml(self) -> None:
        if pynvml is None:
            self.note = "not measurable here (nvidia-ml-py is not installed: pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
            index = torch.device(self.device).index
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0 if index is None else index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except Exception as e:  # no driver, no permission, a GPU older than Volta
            self.note = f"not measurable here (NVML's energy counter is unavailable: {e})"
            self._handle = None
            return
        self.source = "nvml"
        self.note = "NVML total energy counter of the GPU board (GPU only; not CPU or DRAM)"

    def _init_rapl(self) -> None:
        files = _rapl_files()
        readable = [f for f in files if os.access(f, os.R_OK)]
        if not files:
            self.note = f"not measurable here (no Linux RAPL counters under {RAPL_ROOT}, no GPU)"
            return
        if not readable:
            self.note = f"not measurable here (RAPL counters under {RAPL_ROOT} are not readable)"
            return
        self._files = readable
        self.source = "rapl"
        self.note = ("Linux RAPL, every CPU package (other processes on the machine count too; "
                     "DRAM only where the package counter includes it)")

    @property
    def available(self) -> bool:
        return self.source is not None

    def _read(self) -> list[float]:
        if self.source == "nvml":
            return [pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3]  # mJ -> J
        values = []
        for f in self._files:
            with open(f) as fh:
                values.append(int(fh.read()) / 1e6)  # uJ -> J
        return values

    def _range(self, f: str) -> float:
        try:
            with open(os.path.join(os.path.dirname(f), "max_energy_range_uj")) as fh:
                return int(fh.read()) / 1e6
        except (OSError, ValueError):
            return 0.0

    def start(self) -> None:
        if self.source == "nvml" and self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
        self._start = self._read() if self.available else None

    def stop(self) -> float | None:
        """Joules since ``start()``; None where nothing can measure them."""
        if not self.available or self._start is None:
            return None
        if self.source == "nvml":
            torch.cuda.synchronize(self.device)
        end = self._read()
        total = 0.0
        for i, (a, b) in enumerate(zip(self._start, end)):
            d = b - a
            if d < 0 and self.source == "rapl":  # the counter wrapped
                d += self._range(self._files[i])
            total += d
        return total


# -- the report -----------------------------------------------------------------------------
@dataclass
class Accounting:
    """What one configuration costs. Counted fields are always set; measured ones are None
    until ``icm_core.training.bench`` measures them, and ``not_measured`` says why for each
    measurement that was not made. Sizes are (H, W) of one image; FLOPs are per image."""

    experiment: str
    backbone: str
    adapter: dict
    task: str
    size: list[int]
    device: str
    weights: str
    total_params: int
    trainable_params: int
    backbone_params: int
    trainable_backbone_params: int
    trainable_percent: float
    head_params: int
    adapter_bytes: int
    k: int
    storage: dict
    flops: dict  # component -> FLOPs per image (those counted); "total" when all are
    decoder_flops_ratio_full_over_low: float
    optimizer_state_bytes: int
    optimizer_state_source: str = "counted: Adam's two moments and step per trainable tensor"
    batch_size: int | None = None
    train_step_seconds: float | None = None
    images_per_second: float | None = None
    peak_memory_bytes: int | None = None  # one training step
    peak_memory_inference_bytes: int | None = None
    memory_method: str | None = None
    inference_seconds: float | None = None  # one image, forward only (no entropy coding)
    encode_seconds: float | None = None  # one image, to real bytes (entropy coding included)
    decode_seconds: float | None = None
    stream_bytes: int | None = None
    energy_joules: float | None = None  # one training step (``energy_scope``)
    energy_note: str = "not measurable here (nothing was run)"
    energy_scope: str = "one training step"
    energy: dict = field(default_factory=dict)  # what -> joules (None: not measured)
    measured: list[str] = field(default_factory=list)
    not_measured: dict = field(default_factory=dict)  # what -> why

    @property
    def storage_bytes_k_tasks(self) -> int:
        return self.storage["storage_bytes"]

    def to_dict(self) -> dict:
        """Plain values (what ``icm bench --json`` prints), the interface keys included."""
        d = dataclasses.asdict(self)
        d["storage_bytes_k_tasks"] = self.storage["storage_bytes"]
        d["storage_full_copies_bytes_k_tasks"] = self.storage["full_copies_bytes"]
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _size_of(cfg: ExperimentConfig, size) -> tuple[int, int]:
    h, w = size if size is not None else cfg.data.size
    if int(h) < 1 or int(w) < 1:
        raise ConfigError(f"size {h}x{w}: give a positive height and width, e.g. 448x576")
    return int(h), int(w)


def account(config, *, size=None, k: int | None = None, task: str | None = None,
            device: str = "cpu", flops=COMPONENTS) -> Accounting:
    """Count what ``config`` (an ``ExperimentConfig`` or a list of overrides) costs for one
    ``size`` (H, W; default ``data.size``) image of ``task`` (default: the first) and ``k`` tasks
    (default: every task of the dataset). Built on the meta device: no weights, no download,
    nothing timed. ``device`` is only recorded (what a later measurement runs on). ``flops``:
    the components whose FLOPs are counted (``component_flops``; the Setup panel and
    ``icm info`` count the decoder only, which spares the backbone's count)."""
    cfg = config if isinstance(config, ExperimentConfig) else load_config(list(config))
    size = _size_of(cfg, size)
    model = _meta_ready(build_model(cfg, "meta"))
    task = model.task_arg(task or model.tasks[0])
    counts = parameter_counts(model, task)
    adapter_bytes = safetensors_bytes(ad.adapter_state_dict(model.backbone, task, clone=False))
    k = k if k is not None else len(DATASET_TASKS[cfg.data.label_space])
    if k < 1:
        raise ConfigError(f"k={k}: storage is counted for at least one task")
    trainable = {id(p): p for t in model.tasks for p in model.task_parameters(t)}
    a = cfg.adapter
    return Accounting(
        experiment=cfg.name, backbone=cfg.backbone.name,
        adapter={"mode": a.mode, "rank": a.rank, "targets": list(a.targets)},
        task=task, size=list(size), device=str(device), weights=weights_source(cfg.backbone),
        **counts, adapter_bytes=adapter_bytes, k=k,
        storage=storage_for_tasks(counts, adapter_bytes, a.mode, k),
        flops=component_flops(model, task, size, tuple(flops)),
        decoder_flops_ratio_full_over_low=decoder_flops_ratio(cfg, size, task),
        optimizer_state_bytes=optimizer_state_bytes(trainable.values()),
        batch_size=cfg.train.batch_size)


@functools.lru_cache(maxsize=64)
def _cached(overrides: tuple[str, ...], size, k, task, flops) -> Accounting:
    return account(list(overrides), size=size, k=k, task=task, flops=flops)


def account_cached(overrides, *, size=None, k: int | None = None, task: str | None = None,
                   flops=COMPONENTS) -> Accounting:
    """``account`` memoized by its arguments (for panels that recount on every change); a copy,
    so callers may change it."""
    size = None if size is None else tuple(size)
    return copy.deepcopy(_cached(tuple(overrides), size, k, task, tuple(flops)))


__all__ = ["Accounting", "COMPONENTS", "EnergyMeter", "FLOAT32_BYTES", "account", "account_cached",
           "component_flops", "count_flops", "counterpart_decoder", "decoder_cost",
           "decoder_flops_ratio", "decoder_gflops", "decoder_latent", "flops_of",
           "low_rank_params", "measured_optimizer_state_bytes", "optimizer_state_bytes",
           "parameter_counts", "safetensors_bytes", "side_flops", "storage_for_tasks"]
