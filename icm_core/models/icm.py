"""The whole system of paper Fig. 1; the task is an argument of every call.

    image (B,3,H,W) -> pad to 4p -> backbone + task adapter -> 4 x (B,C,H/p,W/p)  (p = patch, 16)
      -> preliminary decoder -> task features (B,D,.) + coarse prediction (B,C_t,.)
      -> concat -> Proj -> y (B,M,H/p,W/p)                               [TaskHead.analysis]
      -> dual spatial entropy model -> y_hat                            [entropy.py, codec/coder.py]
      -> low-complexity decoder -> prediction (B,C_t,H,W) -> crop        [TaskHead.synthesis]

Tasks share the backbone in memory; each owns an adapter and a ``TaskHead`` (preliminary
decoder, projection, entropy model, decoder). With ``model.compression=False`` the entropy
model is left out and y passes through unchanged: the paper's uncompressed "Baseline" models
are this same class.

Threads. A notebook trains in the background while the user inspects the same model. Every
forward routes the backbone through the task's adapter under ``model.lock`` (an RLock); the
trainer holds it for a whole step (forward, backward, optimizer), so a reader never sees
half-updated weights or another task's adapter: it reads the weights between two steps.
Read paths (``predict``, ``encode``, ``decode``, ``icm_core.inspection.image``) run in eval mode under
the lock and put every module's mode back before releasing it; none of them changes which
parameters train: that is decided once, by the trainer.

Random numbers. A model is initialised from a ``torch.Generator`` of its own (seeded by
``cfg.train.seed`` unless one is given): every randomly initialised tensor (the random
backbone, the adapters' A matrices, the heads) is drawn from it, so the weights never depend on
the process-global RNG, which other threads (a notebook, a background run) may be drawing from
or seeding meanwhile; the global RNG is never seeded here. In training mode, ``forward`` draws
the entropy model's rate noise from the ``generator`` it is given (the run's own).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from icm_core.config.schema import ExperimentConfig
from icm_core.errors import ConfigError
from icm_core.models import adapters as ad
from icm_core.models import rate as vr
from icm_core.models.backbone import Backbone
from icm_core.models.decoder import AttentionMaps, DecoderOutput, TransformerDecoder
from icm_core.models.entropy import (
    TABLE_BUFFERS,
    DualSpatialEntropyModel,
    EntropyOutput,
    NoisyEntropyBottleneck,
    bits_of,
)
from icm_core.models.prelim import PreliminaryDecoder, upsample_to
from icm_core.tasks.registry import get_task, resolve_tasks

log = logging.getLogger(__name__)

# h_a halves y twice and h_s doubles z twice (entropy.py): y's sides must be multiples of 4, so
# images are padded to 4 x the patch size (64 in the paper). The decoder takes any latent size.
HYPERPRIOR_STRIDE = 4


@dataclass
class ICMOutput:
    """What ``ICMModel.forward`` returns for one task."""

    task: str
    prediction: torch.Tensor  # (B, C_t, H, W) raw (logits for class tasks)
    preliminary: torch.Tensor  # (B, C_t, H, W) coarse prediction, bicubic-upsampled
    y_hat: torch.Tensor  # (B, M, h, w) the decoder's input
    likelihoods: dict[str, torch.Tensor] | None  # "y", "z"; None without compression
    image_size: tuple[int, int]
    attention: list[AttentionMaps] | None = None  # every decoder block, in decode order
    entropy: EntropyOutput | None = None  # priors and masks of the entropy model
    latent_stride: int = 16  # input pixels per latent position (the patch size)
    rate: float | None = None  # variable rate: the rate coded at (on the stream's grid)

    @property
    def valid_latent_hw(self) -> tuple[int, int]:
        """Latent positions that cover the image itself (the rest cover the padding)."""
        H, W = self.image_size
        s = self.latent_stride
        return -(-H // s), -(-W // s)

    @property
    def bits(self) -> torch.Tensor | None:
        """Per-element bits of y, (B, M, h, w) over the padded latent."""
        return None if self.likelihoods is None else bits_of(self.likelihoods["y"])

    @property
    def bit_map(self) -> torch.Tensor | None:
        """Bits per latent position (B, h, w) over the padded latent: y summed over channels."""
        b = self.bits
        return None if b is None else b.sum(dim=1)

    def bits_map(self) -> torch.Tensor | None:
        """Bits of y per latent position, (B, h', w') cropped to the image's valid region."""
        b = self.bit_map
        h, w = self.valid_latent_hw
        return None if b is None else b[:, :h, :w]

    def bits_per_channel(self) -> torch.Tensor | None:
        """(B, M) bits of y per channel over the valid region: which channels carry the bits."""
        b = self.bits
        h, w = self.valid_latent_hw
        return None if b is None else b[..., :h, :w].sum(dim=(-2, -1))

    def z_bits_map(self) -> torch.Tensor | None:
        """(B, h/4, w/4) bits of z per hyper-latent position (over the padded latent)."""
        if self.likelihoods is None:
            return None
        return bits_of(self.likelihoods["z"]).sum(dim=1)

    @property
    def bits_y(self) -> torch.Tensor:
        """(B,) bits of y; zeros without compression."""
        return self._bits("y")

    @property
    def bits_z(self) -> torch.Tensor:
        """(B,) bits of the hyper-latent z; zeros without compression."""
        return self._bits("z")

    def _bits(self, key: str) -> torch.Tensor:
        if self.likelihoods is None:
            return torch.zeros(self.prediction.shape[0], device=self.prediction.device)
        return bits_of(self.likelihoods[key]).flatten(1).sum(1)

    @property
    def total_bits(self) -> torch.Tensor:
        """(B,) bits of y and z; zeros without compression."""
        return self.bits_y + self.bits_z

    @property
    def bpp(self) -> torch.Tensor:
        """(B,) bits per pixel of the input image (before padding)."""
        H, W = self.image_size
        return self.total_bits / (H * W)


class TaskHead(nn.Module):
    """Everything one task owns besides its adapter: the two sides of Fig. 1 after the backbone."""

    def __init__(self, feat_channels: int, out_channels: int, cfg: ExperimentConfig):
        super().__init__()
        m = cfg.model
        self.prelim = PreliminaryDecoder(feat_channels, m.prelim_width, out_channels)
        self.proj = nn.Conv2d(m.prelim_width + out_channels, m.latent_channels, 1)
        self.entropy = DualSpatialEntropyModel(m.latent_channels, m.hyper_channels) if m.compression else None
        self.decoder = TransformerDecoder(m.latent_channels, out_channels, m.decoder_dims,
                                          m.decoder_depths, m.decoder_heads, m.decoder)
        self.rate_lambdas = tuple(m.rate_lambdas) if m.variable_rate else ()
        if self.rate_lambdas:  # variable rate: per-anchor, per-channel quantization steps
            q = vr.initial_steps(self.rate_lambdas).view(-1, 1, 1, 1)
            q = q.expand(-1, m.latent_channels, 1, 1).clone()
            self.q_scale_enc = nn.Parameter(q)  # (A, M, 1, 1): y is divided by it before coding
            self.q_scale_dec = nn.Parameter(q.clone())  # y_hat is multiplied by it after

    @property
    def variable_rate(self) -> bool:
        return bool(self.rate_lambdas)

    def rate_code(self, rate: float | None) -> int | None:
        """``rate`` -> its grid index (None: fixed-rate head). A variable-rate head codes at
        ``rate`` (default 1: its highest anchor); a fixed-rate head refuses any rate."""
        if not self.variable_rate:
            if rate is not None:
                raise ConfigError(f"rate={rate!r} given, but this model has one fixed rate "
                                  "(model.variable_rate=false: one model per lambda); drop rate, "
                                  "or train a variable-rate model (experiment=quick_vr)")
            return None
        return vr.rate_code(1.0 if rate is None else rate, self.rate_lambdas)

    def to_coded(self, y: torch.Tensor, code: int | None) -> torch.Tensor:
        """y -> what the entropy model codes: y / q_enc(rate) (y itself at a fixed rate)."""
        return y if code is None else y / vr.interpolate(self.q_scale_enc, code).to(y)

    def from_coded(self, y_hat: torch.Tensor, code: int | None) -> torch.Tensor:
        """What the entropy model decoded -> the decoder's input: y_hat * q_dec(rate)."""
        return y_hat if code is None else y_hat * vr.interpolate(self.q_scale_dec, code).to(y_hat)

    def analysis(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sender side: 4 backbone maps -> (coarse prediction, y), both (B, ., h, w)."""
        task_features, coarse = self.prelim(feats)  # (B, D, h, w), (B, C_t, h, w)
        y = self.proj(torch.cat([task_features, coarse], dim=1))  # (B, M, h, w)
        return coarse, y

    def synthesis(self, y_hat: torch.Tensor, size, return_attention: bool = False) -> DecoderOutput:
        """Receiver side: y_hat -> the prediction at ``size`` (the padded image size)."""
        return self.decoder(y_hat, size, return_attention)


class ICMModel(nn.Module):
    """Args:
    cfg: the resolved experiment (backbone, adapter, model, tasks, dataset).
    load_weights: False builds the architecture only (e.g. on the meta device).
    generator: a CPU generator every random initial value is drawn from (default: one seeded
        by ``cfg.train.seed``); the global RNG is never read for them.
    """

    def __init__(self, cfg: ExperimentConfig, *, load_weights: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        if generator is None:
            generator = torch.Generator().manual_seed(cfg.train.seed)
        elif generator.device.type != "cpu":
            raise ConfigError(f"build_model(generator=...) on {generator.device}: models are "
                              "initialised on the CPU; give a torch.Generator() (CPU) generator")
        self.cfg = cfg
        self.dataset = cfg.data.label_space  # hf, folder: whose label conventions
        self.tasks = resolve_tasks(cfg.tasks, self.dataset)
        bcfg = cfg.backbone
        kind = ad.get_adapter_kind(cfg.adapter.mode)
        if kind.random_init and bcfg.weights not in ("none", ""):
            raise ConfigError(f"adapter.mode={kind.name} trains from random weights but backbone.weights="
                              f"{bcfg.weights!r}; set backbone.weights=none")
        self.backbone = Backbone(bcfg, load_weights=load_weights)
        meta = self.backbone.mean.is_meta
        if not meta and not self.backbone.pretrained:
            _init_vit_(self.backbone.model, generator)
        # the frozen weights a checkpoint refers to (None on the meta device)
        self.backbone_hash = None if meta else _hash_backbone(self.backbone)
        ad.attach_adapters(self.backbone, cfg.adapter, self.tasks)
        C = self.backbone.embed_dim
        self.heads = nn.ModuleDict({t: TaskHead(C, get_task(t).out_channels(self.dataset), cfg)
                                    for t in self.tasks})
        if not meta:
            _init_lora_(self.backbone.model, generator)
            for head in self.heads.values():
                _init_default_(head, generator)
        self.lock = threading.RLock()

    # an RLock cannot be copied or pickled: copies get a lock of their own
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("lock", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.lock = threading.RLock()

    @property
    def pretrained(self) -> bool:
        return self.backbone.pretrained

    @property
    def compression(self) -> bool:
        return self.cfg.model.compression

    @property
    def device(self) -> torch.device:
        return self.backbone.mean.device

    def task_arg(self, task: str | None) -> str:
        """The canonical name of ``task``; may be omitted only when the model has one task."""
        if task is None:
            if len(self.tasks) != 1:
                raise ConfigError(f"this model has tasks {list(self.tasks)}: say which one "
                                  "(task=...)")
            return self.tasks[0]
        name = get_task(task).name
        if name not in self.heads:
            raise ConfigError(f"task {task!r} is not in this model; it has {list(self.tasks)}")
        return name

    def trainable_parameters(self, task: str | None = None) -> ad.ParameterReport:
        """Backbone parameters ``task`` trains (the paper's "0.41 %")."""
        return ad.trainable_parameters(self.backbone, self.task_arg(task))

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Every parameter ``task`` owns and may train: its adapter (or the backbone in
        full/scratch mode) and its head. In ``fixed`` mode the backbone contributes none."""
        task = self.task_arg(task)
        own = ad.kind_of(self.backbone).parameters(self.backbone, task)
        return own + list(self.heads[task].parameters())

    # -- forward ------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        """Padding multiple of H and W: the latent stride (patch size) x the hyperprior's 4."""
        return self.backbone.stride * HYPERPRIOR_STRIDE

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) rounded up to multiples of ``stride``: what the backbone and decoder see."""
        s = self.stride
        return -(-height // s) * s, -(-width // s) * s

    def analysis(self, image: torch.Tensor, task: str):
        """image (B, 3, H, W) -> (coarse (B, C_t, h, w), y (B, M, h, w), padded (Hp, Wp))."""
        with self.lock:
            ad.route(self.backbone, task)
            H, W = image.shape[-2:]
            Hp, Wp = self.padded_size(H, W)
            padded = F.pad(image, (0, Wp - W, 0, Hp - H), mode="replicate")
            feats = self.backbone(padded)  # 4 x (B, C, Hp/p, Wp/p)
            coarse, y = self.heads[task].analysis(feats)
        return coarse, y, (Hp, Wp)

    @property
    def variable_rate(self) -> bool:
        """One task file codes at every rate in [0, 1] (``model.variable_rate``)."""
        return self.cfg.model.variable_rate and self.compression

    @property
    def rate_lambdas(self) -> tuple[float, ...]:
        """The anchors' lambdas (rate 0 .. 1); empty for a per-lambda model."""
        return tuple(self.cfg.model.rate_lambdas) if self.variable_rate else ()

    def forward(self, image: torch.Tensor, task: str | None = None,
                return_attention: bool = False, generator: torch.Generator | None = None,
                rate: float | None = None) -> ICMOutput:
        """image (B, 3, H, W) in [0, 1] -> ``ICMOutput`` of ``task`` (train or eval mode as set).

        ``generator`` (on the image's device): where the rate noise of training mode is drawn
        from; a training run passes its own. None draws it from the global RNG.
        ``rate`` in [0, 1]: variable-rate models only (default 1, the highest trained rate);
        snapped to the stream's grid (``icm_core.models.rate``), as ``coder.encode`` does.
        """
        if image.dim() != 4 or image.shape[1] != 3:
            raise ConfigError(f"image of shape {tuple(image.shape)}: expected (B, 3, H, W) in [0, 1]")
        task = self.task_arg(task)
        head = self.heads[task]
        code = head.rate_code(rate)
        H, W = image.shape[-2:]
        with self.lock:
            coarse, y, padded_hw = self.analysis(image, task)
            ent = None
            if head.entropy is not None:
                # rates in float32 even under bf16 autocast: the coder needs the exact parameters
                with torch.autocast(device_type=y.device.type, enabled=False):
                    ent = head.entropy(head.to_coded(y.float(), code), generator)
                    y_hat = head.from_coded(ent.y_hat, code)
                likelihoods = ent.likelihoods
            else:
                y_hat, likelihoods = y, None
            dec = head.synthesis(y_hat, padded_hw, return_attention)
        preliminary = upsample_to(coarse, padded_hw)[..., :H, :W]
        return ICMOutput(task, dec.prediction[..., :H, :W], preliminary, y_hat, likelihoods,
                         (int(H), int(W)), dec.attention, ent, self.backbone.stride,
                         None if code is None else vr.rate_of_code(code))

    @contextlib.contextmanager
    def reading(self, task: str | None = None):
        """Hold the model for a read: lock, eval mode, no autograd; modes restored after.

        With ``task``, the backbone is routed through its adapter for the whole block.
        """
        with self.lock:
            modes = [(m, m.training) for m in self.modules()]
            self.eval()
            try:
                if task is not None:
                    ad.route(self.backbone, self.task_arg(task))
                with torch.no_grad():
                    yield self
            finally:
                for m, mode in modes:
                    m.training = mode

    def predict(self, image: torch.Tensor, task: str | None = None,
                return_attention: bool = False, rate: float | None = None) -> ICMOutput:
        """Eval-mode forward without gradients, whatever mode the model is in (safe while a
        trainer holds the same model in another thread); ``rate`` as in ``forward``."""
        with self.reading():
            return self(image.to(self.device), task, return_attention, rate=rate)

    # -- task files ---------------------------------------------------------------------
    def task_state_dict(self, task: str | None = None, clone: bool = True) -> dict[str, torch.Tensor]:
        """What ``task`` owns: ``adapter.*`` (backbone tensors it trains) and ``head.*``."""
        task = self.task_arg(task)
        state = {f"adapter.{k}": v for k, v in ad.adapter_state_dict(self.backbone, task, clone).items()}
        state.update({f"head.{k}": v.detach().clone() if clone else v.detach()
                      for k, v in self.heads[task].state_dict().items()})
        return state

    def load_task_state_dict(self, task: str, state: dict[str, torch.Tensor], *,
                             check_only: bool = False) -> None:
        """Load what ``task_state_dict`` returned; ``check_only``: only check it.

        Keys, shapes (dtypes of the entropy tables) are checked first: a partial or foreign state raises
        ``ConfigError`` naming the keys, and the model is left as it was.
        """
        task = get_task(task).name
        if task not in self.heads:
            raise ConfigError(f"task {task!r} is not in this model; it has {list(self.tasks)}")
        want = self.task_state_dict(task, clone=False)
        missing = sorted(want.keys() - state.keys())
        unexpected = sorted(state.keys() - want.keys())
        wrong = []
        for k in sorted(want.keys() & state.keys()):
            w, v = want[k], state[k]
            table = k.rsplit(".", 1)[-1] in TABLE_BUFFERS  # shapes vary, dtypes must not
            if (v.dtype != w.dtype) if table else (v.shape != w.shape):
                wrong.append(f"{k} {tuple(v.shape)} {v.dtype} (model: {tuple(w.shape)} {w.dtype})")
        if missing or unexpected or wrong:
            a = self.cfg.adapter
            rank = f" rank {a.rank}" if ad.get_adapter_kind(a.mode).low_rank else ""
            raise ConfigError(
                f"weights of task {task!r} do not fit this model (adapter {a.mode}{rank}): "
                + "; ".join(f"{what} {len(keys)} {'key' if len(keys) == 1 else 'keys'} {keys[:4]}"
                            for what, keys in (("missing", missing), ("unexpected", unexpected),
                                               ("wrong shape", wrong)) if keys)
                + "; the file is partial or from another model")
        if check_only:
            return
        adapter = {k[8:]: v for k, v in state.items() if k.startswith("adapter.")}
        head = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
        ad.load_adapter_state_dict(self.backbone, task, adapter)  # fixed: nothing to load
        entropy = self.heads[task].entropy
        if entropy is not None:  # table buffers are rebuilt from the weights; take their shapes
            for name in TABLE_BUFFERS:
                for key in [k for k in head if k.endswith(name)]:
                    mod = self.heads[task].get_submodule(key.rsplit(".", 1)[0])
                    setattr(mod, name, head[key].clone())
            entropy._tables_key = None
        missing, unexpected = self.heads[task].load_state_dict(head, strict=False)
        if missing or unexpected:
            raise ConfigError(f"weights of task {task!r} do not fit this model: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")


def _hash_backbone(backbone: Backbone) -> str:
    """sha256 (16 hex digits) of the backbone weights as built, before any adapter."""
    h = hashlib.sha256()
    for k, v in sorted(backbone.vit.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# -- initialisation from a generator ---------------------------------------------------------
# Module constructors (torch, timm, peft, compressai) draw their initial values from the global
# RNG; every such value is drawn again here from the model's own generator, with the same
# distribution, so none survives. Modules are visited in registration order (deterministic).
def _init_default_(module: nn.Module, g: torch.Generator) -> None:
    """torch's default init of every Linear and convolution in ``module`` (kaiming-uniform
    weights, uniform biases: their ``reset_parameters``) and compressai's factorized prior
    (uniform biases), drawn from ``g``."""
    for m in module.modules():
        if isinstance(m, nn.Linear | _ConvNd):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
            if m.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(m.bias, -bound, bound, generator=g)
        elif isinstance(m, NoisyEntropyBottleneck):
            for b in m.biases:
                nn.init.uniform_(b, -0.5, 0.5, generator=g)


def _init_vit_(vit: nn.Module, g: torch.Generator) -> None:
    """timm's init of a random ViT / EVA-02 drawn from ``g``: truncated normal (0.02) Linear
    weights and position/class tokens, zero Linear biases, default convolutions, then EVA's
    depth rescaling of each block's output projections."""
    for m in vit.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, generator=g)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _ConvNd):
            _init_default_(m, g)
    for name in ("pos_embed", "cls_token", "reg_token"):
        p = getattr(vit, name, None)
        if isinstance(p, torch.Tensor):
            nn.init.trunc_normal_(p, std=0.02, generator=g)
    if hasattr(vit, "fix_init_weight"):
        vit.fix_init_weight()


def _init_lora_(model: nn.Module, g: torch.Generator) -> None:
    """peft's default LoRA/DoRA init drawn from ``g``: kaiming-uniform A, B stays zero (so
    DoRA's magnitude, the norm of W + BA = W, is unchanged)."""
    with torch.no_grad():
        for m in model.modules():
            lora_a = getattr(m, "lora_A", None)
            if isinstance(lora_a, nn.ModuleDict):
                for a in lora_a.values():
                    nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5), generator=g)


def build_model(cfg: ExperimentConfig, device: str | torch.device = "cpu", *,
                load_weights: bool = True, generator: torch.Generator | None = None) -> ICMModel:
    """Build on ``device``; ``device="meta"`` builds the architecture without allocating it.

    Every random initial value is drawn from ``generator`` (a CPU one; default: seeded by
    ``cfg.train.seed``), never from the global RNG, which is neither read nor seeded for it:
    the same config builds the same model whatever other threads do meanwhile, so a checkpoint
    of a run on a random backbone can be reloaded.
    """
    if str(device) == "meta":
        with torch.device("meta"):
            return ICMModel(cfg, load_weights=False)  # architecture only
    return ICMModel(cfg, load_weights=load_weights, generator=generator).to(device)


__all__ = ["ICMModel", "ICMOutput", "TaskHead", "build_model", "HYPERPRIOR_STRIDE"]
