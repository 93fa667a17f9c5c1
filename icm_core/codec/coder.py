"""One image, one task, real bytes: what a sender writes and what a receiver reads.

    sender:   image -> ICMModel.analysis (backbone + task adapter + preliminary decoder + Proj)
              -> y [/ q_enc(rate)] -> entropy model (CPU, float32) -> [z, step 1, step 2]
              rANS sections -> container (container.py): header with the weights'
              fingerprint [and the rate], CRC
    receiver: bytes -> unpack (size, budget and CRC checks) -> fingerprint check
              -> entropy decoding -> y_hat [* q_dec(rate)] -> TaskHead.synthesis

The bracketed steps are those of a variable-rate model (``icm_core.models.rate``): the stream
carries its rate, so decoding needs nothing but the task file. Fixed-rate models write the
same bytes as before variable rate existed (container format 1).

Encoder and decoder must compute bit-identical entropy parameters; GPU kernels need not, so
bits are always coded by a CPU float32 copy of the task's entropy model (refreshed whenever its
weights change). The fingerprint (8 bytes of a sha256 over every tensor the task's coding
depends on) makes a stream from other weights fail loudly instead of decoding to garbage.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import torch

from icm_core.codec.container import MAX_PIXELS, Packet, pack, unpack
from icm_core.errors import BitstreamError, ConfigError
from icm_core.models import rate as vr
from icm_core.models.decoder import AttentionMaps
from icm_core.models.entropy import TABLE_BUFFERS, DualSpatialEntropyModel, bits_of


@dataclass(frozen=True)
class SectionSizes:
    """Bytes of each part of a stream: container header (+CRC), z, step 1, step 2."""

    header: int
    z: int
    step1: int
    step2: int

    @property
    def total(self) -> int:
        return self.header + self.z + self.step1 + self.step2


class EncodedImage(bytes):
    """The bytes of one stream (use it wherever bytes go), with what went into them.

    Attributes:
        task, height, width: what the stream codes.
        rate: the rate it codes at (variable-rate models, on the stream's grid), else None.
        sections: ``SectionSizes``; ``sections.total == len(self)``.
        bits_y, bits_z: the entropy model's estimate of the y and z sections, in bits.
    """

    task: str
    height: int
    width: int
    sections: SectionSizes
    bits_y: float
    bits_z: float
    rate: float | None

    def __new__(cls, data: bytes, *, task: str, height: int, width: int, sections: SectionSizes,
                bits_y: float, bits_z: float, rate: float | None = None):
        obj = super().__new__(cls, data)
        obj.task, obj.height, obj.width, obj.sections = task, height, width, sections
        obj.bits_y, obj.bits_z, obj.rate = bits_y, bits_z, rate
        return obj

    def __reduce__(self):  # pickling (e.g. to worker processes) keeps the attributes
        return (_encoded_image, (bytes(self), dict(self.__dict__)))

    @property
    def bpp(self) -> float:
        """Real bits per pixel of the input image (header included)."""
        return 8 * len(self) / (self.height * self.width)

    @property
    def bits_estimated(self) -> float:
        return self.bits_y + self.bits_z

    @property
    def bpp_estimated(self) -> float:
        return self.bits_estimated / (self.height * self.width)


def _encoded_image(data: bytes, attrs: dict) -> EncodedImage:
    return EncodedImage(data, **attrs)


@dataclass
class DecodedOutput:
    task: str
    prediction: torch.Tensor  # (1, C_t, H, W) raw (logits for class tasks)
    y_hat: torch.Tensor  # (1, M, h, w) what the decoder received
    image_size: tuple[int, int]
    attention: list[AttentionMaps] | None = None
    rate: float | None = None  # what the stream says (variable-rate models), else None


def entropy_model(model, task: str) -> DualSpatialEntropyModel:
    em = model.heads[task].entropy
    if em is None:
        raise ConfigError("this model has no compression stage (model.compression=false): "
                          "nothing to encode; use a compressing experiment")
    return em


def fingerprint(model, task: str | None = None) -> bytes:
    """8 bytes identifying the weights that encode and decode ``task`` (the model's only task
    when ``None``).

    Cached until a tensor changes (in-place updates bump torch's version counters), so coding
    a dataset image by image hashes the weights once.
    """
    task = model.task_arg(task)
    state = {k: v for k, v in model.task_state_dict(task, clone=False).items()
             if k.rsplit(".", 1)[-1] not in TABLE_BUFFERS}
    key = tuple((k, v.data_ptr(), v._version) for k, v in sorted(state.items()))
    cache = model.__dict__.setdefault("_fingerprints", {})
    cached = cache.get(task)
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.cpu().contiguous().numpy().tobytes())
    cache[task] = (key, h.digest()[:8])
    return h.digest()[:8]


def cpu_coder(model, task: str) -> DualSpatialEntropyModel:
    """The entropy model that writes and reads bits: always on the CPU, in float32, eval mode."""
    em = entropy_model(model, task)
    if em.h_a[0].weight.device.type == "cpu" and em.h_a[0].weight.dtype == torch.float32:
        return em  # the caller holds the model in eval mode (ICMModel.reading)
    key = fingerprint(model, task)
    cache = model.__dict__.setdefault("_cpu_coders", {})
    cached = cache.get(task)
    if cached is None or cached[0] != key:
        cached = (key, copy.deepcopy(em).cpu().float().eval())
        cache[task] = cached
    return cached[1]


def encode(model, image: torch.Tensor, task: str | None = None, *,
           rate: float | None = None) -> EncodedImage:
    """One image (3, H, W) or (1, 3, H, W) in [0, 1] -> its stream for ``task``.

    ``rate`` in [0, 1]: variable-rate models only (default 1, the highest trained rate); the
    stream records it. The encoder runs once: the same y gives the sections and the entropy
    model's estimate.
    """
    task = model.task_arg(task)
    image = image.unsqueeze(0) if image.dim() == 3 else image
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ConfigError(f"encode takes one image (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    entropy_model(model, task)  # a clear error without compression
    head = model.heads[task]
    code = head.rate_code(rate)  # a clear error for a bad rate, before the encoder runs
    H, W = (int(v) for v in image.shape[-2:])
    with model.reading(task):  # weights, coder and fingerprint from one moment
        _, y, _ = model.analysis(image.float().to(model.device), task)
        y = head.to_coded(y.float(), code).cpu()
        coder = cpu_coder(model, task)
        coded = coder.compress(y)
        est = coder(y)  # eval mode: likelihoods of the values really coded
        fp = fingerprint(model, task)
    bits_y = float(bits_of(est.likelihoods["y"]).sum())
    bits_z = float(bits_of(est.likelihoods["z"]).sum())
    sections = tuple(coded["strings"])
    data = pack(Packet(task, fp, H, W, sections, code))
    sizes = SectionSizes(len(data) - sum(len(s) for s in sections), *(len(s) for s in sections))
    return EncodedImage(data, task=task, height=H, width=W, sections=sizes, bits_y=bits_y,
                        bits_z=bits_z, rate=None if code is None else vr.rate_of_code(code))


def decode(model, data: bytes, *, max_pixels: int | None = None,
           return_attention: bool = False) -> DecodedOutput:
    """Bytes from ``encode`` -> the prediction; ``BitstreamError`` for foreign or broken streams.

    Any bytes are safe to pass: streams claiming more than ``max_pixels`` (default
    ``bitstream.MAX_PIXELS``) are refused before anything is allocated, and only the exact
    sections the encoder writes are accepted, so equal bytes give equal predictions.
    """
    packet = unpack(data, MAX_PIXELS if max_pixels is None else max_pixels)
    task = packet.task
    if task not in model.heads:
        raise BitstreamError(f"stream is for task {task!r}; this model has {list(model.tasks)}")
    head = model.heads[task]
    if head.entropy is None:
        raise BitstreamError(f"stream is for task {task!r}, but this model has no compression "
                             "stage (model.compression=false) to decode it; use the compressing "
                             "checkpoint that encoded it")
    if (packet.rate_code is None) == head.variable_rate:
        has = "no rate (a fixed-rate stream)" if packet.rate_code is None else "a rate"
        raise BitstreamError(f"stream for task {task!r} carries {has}, but this model is "
                             f"{'variable' if head.variable_rate else 'fixed'}-rate; use the "
                             "checkpoint that encoded it")
    Hp, Wp = model.padded_size(packet.height, packet.width)
    s, p = model.stride, model.backbone.stride  # z and y strides
    with model.reading(task):  # the weights cannot change between the check and the decoding
        if packet.fingerprint != fingerprint(model, task):
            raise BitstreamError(f"stream was made by other weights for task {task!r} "
                                 f"(fingerprint {packet.fingerprint.hex()} != "
                                 f"{fingerprint(model, task).hex()}); use the checkpoint that "
                                 "encoded it")
        # a damaged or foreign payload raises BitstreamError; anything else is a bug
        y_hat = cpu_coder(model, task).decompress(list(packet.sections), (Hp // s, Wp // s),
                                                  (Hp // p, Wp // p))
        y_hat = head.from_coded(y_hat.to(model.device), packet.rate_code)
        dec = head.synthesis(y_hat, (Hp, Wp), return_attention)
    size = (packet.height, packet.width)
    rate = None if packet.rate_code is None else vr.rate_of_code(packet.rate_code)
    return DecodedOutput(task, dec.prediction[..., : packet.height, : packet.width], y_hat, size,
                         dec.attention, rate)


__all__ = ["EncodedImage", "SectionSizes", "DecodedOutput", "encode", "decode", "fingerprint",
           "cpu_coder", "TABLE_BUFFERS"]
