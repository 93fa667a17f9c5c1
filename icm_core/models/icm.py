"""The whole system of paper Fig. 1, one task at a time.

    image (B,3,H,W) -> pad to 64 -> backbone + task adapter -> 4 x (B,C,H/16,W/16)
      -> preliminary decoder -> task features (B,D,.) + coarse prediction (B,C_t,.)
      -> concat -> Proj -> y (B,M,H/16,W/16) -> dual spatial entropy model -> y_hat
      -> low-complexity decoder -> prediction (B,C_t,H,W) -> crop

Tasks share the backbone in memory; each owns an adapter and a ``TaskHead`` (preliminary
decoder, projection, entropy model, decoder). ``set_task`` picks the active one. With
``model.compression=False`` the entropy model is left out and y passes through unchanged:
the paper's uncompressed "Baseline" models are this same class.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from icm_core.config import ExperimentConfig
from icm_core.errors import BitstreamError, ConfigError
from icm_core.models import adapters as ad
from icm_core.models.backbone import Backbone
from icm_core.models.decoder import AttentionMaps, TransformerDecoder
from icm_core.models.entropy import DualSpatialEntropyModel, bits_of
from icm_core.models.prelim import PreliminaryDecoder, upsample_to
from icm_core.tasks import get_task, resolve_tasks

log = logging.getLogger(__name__)

STRIDE = 64  # encoder stride 16 x hyperprior stride 4: H and W are padded to a multiple of it
_TABLE_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


@dataclass
class ICMOutput:
    """What ``ICMModel.forward`` returns for the active task."""

    task: str
    prediction: torch.Tensor  # (B, C_t, H, W) raw (logits for class tasks)
    preliminary: torch.Tensor  # (B, C_t, H, W) coarse prediction, bicubic-upsampled
    y_hat: torch.Tensor  # (B, M, h, w) the decoder's input
    likelihoods: dict[str, torch.Tensor] | None  # "y", "z"; None without compression
    image_size: tuple[int, int]
    attention: list[AttentionMaps] | None = None

    @property
    def bits(self) -> torch.Tensor | None:
        """Per-element bits of y, (B, M, h, w)."""
        return None if self.likelihoods is None else bits_of(self.likelihoods["y"])

    @property
    def bit_map(self) -> torch.Tensor | None:
        """Bits per latent position (B, h, w): y summed over channels (where the bits go)."""
        b = self.bits
        return None if b is None else b.sum(dim=1)

    @property
    def total_bits(self) -> torch.Tensor:
        """(B,) bits of y and z; zeros without compression."""
        if self.likelihoods is None:
            return torch.zeros(self.prediction.shape[0], device=self.prediction.device)
        return sum(bits_of(v).flatten(1).sum(1) for v in self.likelihoods.values())

    @property
    def bpp(self) -> torch.Tensor:
        """(B,) bits per pixel of the input image (before padding)."""
        H, W = self.image_size
        return self.total_bits / (H * W)


@dataclass
class DecodedOutput:
    task: str
    prediction: torch.Tensor  # (1, C_t, H, W)
    y_hat: torch.Tensor


class TaskHead(nn.Module):
    """Everything one task owns besides its adapter."""

    def __init__(self, feat_channels: int, out_channels: int, cfg: ExperimentConfig):
        super().__init__()
        m = cfg.model
        self.prelim = PreliminaryDecoder(feat_channels, m.prelim_width, out_channels)
        self.proj = nn.Conv2d(m.prelim_width + out_channels, m.latent_channels, 1)
        self.entropy = DualSpatialEntropyModel(m.latent_channels, m.hyper_channels) if m.compression else None
        self.decoder = TransformerDecoder(m.latent_channels, out_channels, m.decoder_dims,
                                          m.decoder_depths, m.decoder_heads, m.decoder)


class ICMModel(nn.Module):
    """Args:
    cfg: the resolved experiment (backbone, adapter, model, tasks, dataset).
    load_weights: False builds the architecture only (e.g. on the meta device).
    """

    def __init__(self, cfg: ExperimentConfig, *, load_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        self.dataset = cfg.data.name
        self.tasks = resolve_tasks(cfg.tasks, self.dataset)
        bcfg = cfg.backbone
        if cfg.adapter.mode == "scratch" and bcfg.weights not in ("none", ""):
            raise ConfigError(f"adapter.mode=scratch trains from random weights but backbone.weights="
                              f"{bcfg.weights!r}; set backbone.weights=none")
        self.backbone = Backbone(bcfg, load_weights=load_weights)
        # the frozen weights a checkpoint refers to (None on the meta device)
        self.backbone_hash = None if self.backbone.mean.is_meta else _hash_backbone(self.backbone)
        ad.attach_adapters(self.backbone, cfg.adapter, self.tasks)
        C = self.backbone.embed_dim
        self.heads = nn.ModuleDict({t: TaskHead(C, get_task(t).out_channels(self.dataset), cfg)
                                    for t in self.tasks})
        self._cpu_coders: dict[str, tuple[bytes, DualSpatialEntropyModel]] = {}
        self._fingerprints: dict[str, tuple[tuple, bytes]] = {}
        self.task = self.tasks[0]
        self.set_task(self.task)

    @property
    def pretrained(self) -> bool:
        return self.backbone.pretrained

    @property
    def compression(self) -> bool:
        return self.cfg.model.compression

    def set_task(self, task: str) -> None:
        """Make ``task`` active: its adapter is in the forward path and only its weights train."""
        task = get_task(task).name
        if task not in self.heads:
            raise ConfigError(f"task {task!r} is not in this model; it has {list(self.tasks)}")
        self.task = task
        ad.set_backbone_task(self.backbone, task)
        for t, head in self.heads.items():
            head.requires_grad_(t == task)
        if self.cfg.adapter.mode == "fixed":
            self.backbone.requires_grad_(False)

    def trainable_parameters(self, task: str | None = None) -> ad.ParameterReport:
        return ad.trainable_parameters(self.backbone, task or self.task)

    # -- forward ------------------------------------------------------------------------
    def _latent(self, image: torch.Tensor, head: TaskHead):
        H, W = image.shape[-2:]
        padded = F.pad(image, (0, (-W) % STRIDE, 0, (-H) % STRIDE), mode="replicate")
        feats = self.backbone(padded)  # 4 x (B, C, Hp/16, Wp/16)
        task_features, coarse = head.prelim(feats)  # (B, D, h, w), (B, C_t, h, w)
        y = head.proj(torch.cat([task_features, coarse], dim=1))  # (B, M, h, w)
        return padded.shape[-2:], coarse, y

    def forward(self, image: torch.Tensor, return_attention: bool = False) -> ICMOutput:
        """image (B, 3, H, W) in [0, 1] -> ``ICMOutput`` of the active task."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ConfigError(f"image of shape {tuple(image.shape)}: expected (B, 3, H, W) in [0, 1]")
        head = self.heads[self.task]
        H, W = image.shape[-2:]
        padded_hw, coarse, y = self._latent(image, head)
        if head.entropy is not None:
            # rates in float32 even under bf16 autocast: the coder needs the exact parameters
            with torch.autocast(device_type=y.device.type, enabled=False):
                ent = head.entropy(y.float())
            y_hat, likelihoods = ent.y_hat, ent.likelihoods
        else:
            y_hat, likelihoods = y, None
        dec = head.decoder(y_hat, padded_hw, return_attention)
        preliminary = upsample_to(coarse, padded_hw)[..., :H, :W]
        return ICMOutput(self.task, dec.prediction[..., :H, :W], preliminary, y_hat, likelihoods,
                         (int(H), int(W)), dec.attention)

    # -- bitstreams ---------------------------------------------------------------------
    def task_state_dict(self, task: str | None = None, clone: bool = True) -> dict[str, torch.Tensor]:
        """What ``task`` owns: ``adapter.*`` (backbone tensors it trains) and ``head.*``."""
        task = task or self.task
        state = {f"adapter.{k}": v for k, v in ad.adapter_state_dict(self.backbone, task, clone).items()}
        state.update({f"head.{k}": v.detach().clone() if clone else v.detach()
                      for k, v in self.heads[task].state_dict().items()})
        return state

    def load_task_state_dict(self, task: str, state: dict[str, torch.Tensor]) -> None:
        task = get_task(task).name
        adapter = {k[8:]: v for k, v in state.items() if k.startswith("adapter.")}
        head = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
        if adapter or self.cfg.adapter.mode in ("dora", "lora", "full", "scratch"):
            ad.load_adapter_state_dict(self.backbone, task, adapter)
        entropy = self.heads[task].entropy
        if entropy is not None:  # table buffers are rebuilt from the weights; take their shapes
            for name in _TABLE_BUFFERS:
                for key in [k for k in head if k.endswith(name)]:
                    mod = self.heads[task].get_submodule(key.rsplit(".", 1)[0])
                    setattr(mod, name, head[key].clone())
            entropy._tables_key = None
        missing, unexpected = self.heads[task].load_state_dict(head, strict=False)
        if missing or unexpected:
            raise ConfigError(f"weights of task {task!r} do not fit this model: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
        self.set_task(self.task)

    def fingerprint(self, task: str | None = None) -> bytes:
        """8 bytes identifying the weights that encode and decode ``task``.

        Cached until a tensor changes (in-place updates bump torch's version counters), so
        coding a dataset image by image hashes the weights once.
        """
        task = task or self.task
        state = {k: v for k, v in self.task_state_dict(task, clone=False).items()
                 if k.rsplit(".", 1)[-1] not in _TABLE_BUFFERS}  # tables follow from the weights
        key = tuple((k, v.data_ptr(), v._version) for k, v in sorted(state.items()))
        cached = self._fingerprints.get(task)
        if cached is not None and cached[0] == key:
            return cached[1]
        h = hashlib.sha256()
        for k, v in sorted(state.items()):
            h.update(k.encode())
            h.update(str(tuple(v.shape)).encode())
            h.update(v.cpu().contiguous().numpy().tobytes())
        self._fingerprints[task] = (key, h.digest()[:8])
        return h.digest()[:8]

    def _entropy_model(self, task: str) -> DualSpatialEntropyModel:
        em = self.heads[task].entropy
        if em is None:
            raise ConfigError("this model has no compression stage (model.compression=false): "
                              "nothing to encode; use a compressing experiment")
        return em

    def _coder(self, task: str) -> DualSpatialEntropyModel:
        """The entropy model that writes and reads bits: always on the CPU in float32.

        Encoder and decoder must compute bit-identical entropy parameters; GPU kernels need
        not, so a model on a GPU codes with a CPU copy (refreshed when the weights change).
        """
        em = self._entropy_model(task)
        if em.h_a[0].weight.device.type == "cpu":
            return em
        key = self.fingerprint(task)
        cached = self._cpu_coders.get(task)
        if cached is None or cached[0] != key:
            cached = (key, copy.deepcopy(em).cpu().float().eval())
            self._cpu_coders[task] = cached
        return cached[1]

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> bytes:
        """One image (3, H, W) or (1, 3, H, W) in [0, 1] -> the bytes of its container."""
        from icm_core.bitstream import Packet, pack

        image = image.unsqueeze(0) if image.dim() == 3 else image
        if image.shape[0] != 1:
            raise ConfigError(f"encode takes one image, got a batch of {image.shape[0]}")
        self._entropy_model(self.task)  # a clear error without compression
        was_training = self.training
        self.eval()
        try:
            _, _, y = self._latent(image.float(), self.heads[self.task])
            coded = self._coder(self.task).compress(y.float().cpu())
        finally:
            self.train(was_training)
        H, W = image.shape[-2:]
        return pack(Packet(self.task, self.fingerprint(), int(H), int(W), tuple(coded["strings"])))

    @torch.no_grad()
    def decode(self, data: bytes) -> DecodedOutput:
        """Bytes from ``encode`` -> the prediction; ``BitstreamError`` for foreign or broken streams."""
        from icm_core.bitstream import unpack

        packet = unpack(data)
        if packet.task not in self.heads:
            raise BitstreamError(f"stream is for task {packet.task!r}; this model has {list(self.tasks)}")
        if packet.fingerprint != self.fingerprint(packet.task):
            raise BitstreamError(f"stream was made by other weights for task {packet.task!r} "
                                 f"(fingerprint {packet.fingerprint.hex()} != "
                                 f"{self.fingerprint(packet.task).hex()}); use the checkpoint that encoded it")
        coder = self._coder(packet.task)
        Hp, Wp = -(-packet.height // STRIDE) * STRIDE, -(-packet.width // STRIDE) * STRIDE
        previous = self.task
        was_training = self.training
        self.set_task(packet.task)
        self.eval()
        try:
            try:  # only the payload's errors are the stream's fault; a decoder error is a bug
                y_hat = coder.decompress(list(packet.sections), (Hp // STRIDE, Wp // STRIDE),
                                         (Hp // 16, Wp // 16))
            except (RuntimeError, ValueError, IndexError, OverflowError) as e:
                raise BitstreamError(f"payload does not decode with this model: {e}") from e
            y_hat = y_hat.to(self.heads[packet.task].proj.weight.device)
            pred = self.heads[packet.task].decoder(y_hat, (Hp, Wp)).prediction
        finally:
            self.train(was_training)
            self.set_task(previous)
        return DecodedOutput(packet.task, pred[..., : packet.height, : packet.width], y_hat)


def _hash_backbone(backbone: Backbone) -> str:
    """sha256 (16 hex digits) of the backbone weights as built, before any adapter."""
    h = hashlib.sha256()
    for k, v in sorted(backbone.vit.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def build_model(cfg: ExperimentConfig, device: str | torch.device = "cpu", *,
                load_weights: bool = True) -> ICMModel:
    """Build on ``device``; ``device="meta"`` builds the architecture without allocating it.

    Random initialization is seeded by ``cfg.train.seed``: the same config builds the same
    model, so a checkpoint of a run on a random backbone can be reloaded.
    """
    if str(device) == "meta":
        with torch.device("meta"):
            return ICMModel(cfg, load_weights=False)  # architecture only
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = ICMModel(cfg, load_weights=load_weights)
    return model.to(device)


def serialized_size(state: dict[str, torch.Tensor]) -> int:
    """Bytes of ``state`` as a safetensors file (meta tensors are materialized as zeros)."""
    from safetensors.torch import save

    real = {k: (torch.zeros(v.shape, dtype=v.dtype) if v.device.type == "meta" else v.contiguous().cpu())
            for k, v in state.items()}
    return len(save(real)) if real else 0


__all__ = ["ICMModel", "ICMOutput", "DecodedOutput", "build_model", "serialized_size", "STRIDE"]
