"""The dual spatial entropy model of EVC (Wang et al., ICLR 2023), on compressai.

What is coded is the latent ``y`` (B, M, h, w): the projection of the concatenated task
features and preliminary prediction (paper Fig. 1, "Proj"). Decode order::

    z  ~ factorized EntropyBottleneck                     z = h_a(y), at h/4 x w/4
    (mu0, s0) = h_s(z_hat)                                hyperprior parameters
    step 1: y0 on mask0, y1 on mask1  ~ N(mu0, s0)        y0/y1 = first/second channel half
    (mu1, s1) = g_sp(y_hat step 1, mu0, s0)               spatial prior network
    step 2: y0 on mask1, y1 on mask0  ~ N(mu1, s1)

    mask0 = checkerboard ((i + j) even), mask1 = its complement:
        channels 0..M/2-1:  1 2 1 2      channels M/2..M-1:  2 1 2 1
                            2 1 2 1                          1 2 1 2

Every position receives one channel half in each step, so step 2 has spatial context
(its 4 neighbours) and cross-channel context (the other half, same position).
Likelihoods are Gaussian on the mean-removed residual, scales lower-bounded at 0.11.

Rounding proxy during training: the rate uses additive uniform noise (compressai's
``noise`` mode), on y and on z, drawn from the ``generator`` the caller passes (a training run
passes its own, so its draws never depend on the process-global RNG); the decoder and the spatial prior see straight-through rounding
``round(y - mu) + mu`` (gradient of the identity), the values the decoder gets at test time.

In eval mode the likelihood uses the scale the rANS coder really uses (the next entry of
the 64-level scale table), so the per-element bits match the bitstream within 1 %.
"""

from __future__ import annotations

import math
import struct
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np
import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.entropy_models.entropy_models import EntropyModel
from compressai.models.base import get_scale_table
from torch import nn

from icm_core.errors import BitstreamError, ConfigError

_SCALE_TABLE = get_scale_table().tolist()  # 64 log-spaced scales, 0.11 .. 256

# compressai's rANS tables: rebuilt from the weights, so not part of the fingerprint
TABLE_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def checkerboard_masks(channels: int, h: int, w: int, device=None) -> torch.Tensor:
    """Boolean (M, h, w) mask of the elements coded in step 1 (see the module diagram)."""
    i = torch.arange(h, device=device).view(h, 1)
    j = torch.arange(w, device=device).view(1, w)
    even = (i + j) % 2 == 0
    half = channels // 2
    return torch.cat([even.expand(half, h, w), (~even).expand(channels - half, h, w)])


# -- reading sections from strangers ----------------------------------------------------
# compressai's C++ decoder (rans_interface.cpp on ryg_rans' rans64.h) reads 32-bit words
# through a raw pointer with no end: 2 for the initial 64-bit state, up to 1 per symbol
# (Rans64DecAdvance), and in bypass mode 1 per 4-bit read (Rans64DecGetBits) with a nibble
# count that itself comes from the state (``while (val == max_bypass_val)``). From a zero
# state each bypass nibble reads a word, so a damaged section can make it read ~270 words
# past its end *per symbol*: no zero padding of a sane size bounds that. ``rans_decode``
# is the same arithmetic in Python with every read checked against the section.

RANS_L = 1 << 31  # ryg_rans RANS64_L: the encoder's start state, the decoder's lower bound
_RANS_TOP = 1 << 63  # every state of compressai's coder lies in [RANS_L, 2**63)
_PRECISION = 16  # compressai's entropy_coder_precision: frequencies sum to 2**16
_STEP_SLACK = 5e-5  # bits, > -log2(1 - 2**-15): rounding of one coding step or emitted word


@dataclass(frozen=True)
class CoderTable:
    """One entropy model's rANS tables in the form ``rans_decode`` reads them."""

    cdfs: list[list[int]]  # per cdf index: the cdf, cut to its length
    max_values: list[int]  # per cdf index: the escape symbol (bypass-coded values)
    offsets: list[int]
    min_bits: np.ndarray  # per cdf index: bits of its cheapest symbol

    @classmethod
    def of(cls, em: EntropyModel) -> CoderTable:
        lengths = em._cdf_length.reshape(-1).tolist()
        cdfs = [row[:n] for row, n in zip(em._quantized_cdf.tolist(), lengths)]
        bits = []
        for c in cdfs:  # -log2 p of the likeliest symbol; an escape adds its 4-bit count
            f = np.diff(c)
            regular = _PRECISION - math.log2(f[:-1].max()) if len(f) > 1 else math.inf
            bits.append(min(regular, _PRECISION + 4 - math.log2(f[-1])))
        return cls(cdfs, [n - 2 for n in lengths], em._offset.reshape(-1).tolist(),
                   np.array(bits, dtype=np.float64))

    def least_bits(self, counts: np.ndarray) -> float:
        """Bits any section holding ``counts[k]`` symbols of cdf k needs, less rounding."""
        return float(np.dot(counts, self.min_bits - _STEP_SLACK))


def check_section(data: bytes, symbols: int, least_bits: float, what: str) -> None:
    """Refuse a section that cannot hold ``symbols`` symbols, before anything is decoded.

    compressai writes whole 32-bit words ending with its 8-byte final state, and reads at
    most 9 words per symbol (1 + a bypass count + 7 raw nibbles). Size: coding a symbol of
    frequency f multiplies the encoder's state by >= 2**16/f (1 - 2**-15), an emitted word
    divides it by <= 2**32 (1 - 2**-15)**-1, it starts at 2**31 and ends below 2**63, so
    ``sum log2(2**16/f) - slack <= 8 * bytes - 32``; ``least_bits`` is that sum's least value.
    """
    n = len(data)
    if n < 8 or n % 4:
        raise BitstreamError(f"{what} section has {n} bytes; a rANS section is whole 32-bit words, "
                             "at least 8 (the coder's final state): damaged or foreign stream")
    if n > 8 + 36 * symbols:
        raise BitstreamError(f"{what} section has {n} bytes, more than its {symbols} symbols can "
                             "fill: damaged stream, or its header claims a smaller image")
    if least_bits > 8 * n - 32 + (n // 4) * _STEP_SLACK + 1:
        raise BitstreamError(f"{what} section of {n} bytes cannot hold its {symbols} symbols "
                             f"(they need >= {math.ceil((least_bits + 32) / 8)} bytes): truncated "
                             "stream, or its header claims a larger image")


def check_encodable(values: torch.Tensor, indexes: torch.Tensor, em: EntropyModel,
                    what: str) -> None:
    """Refuse a latent compressai's encoder would hang on or write past its buffer for.

    ``values``: the latent less its means (what is rounded to symbols). The encoder's
    nibble count loop never ends for escaped values needing 8 nibbles (>= 2**27), and its
    output buffer holds 4 bytes per symbol: its state grows by <= log2(2**16/f) + 5e-5 bits
    per symbol (+ 4 per nibble of an escaped value) and loses 32 per word written.
    """
    big = values.abs().max().item() if values.numel() else 0.0
    if not math.isfinite(big) or big >= 2**26:
        raise ConfigError(f"{what} latent has values of {big:g}: NaN, inf or beyond the rANS "
                          "coder's 2**26; the weights are broken (diverged training?)")
    idx = indexes.long()
    top = em._cdf_length.long()[idx] - 2  # the escape symbol
    v = torch.round(values).long() - em._offset.long()[idx]
    raw = torch.where(v < 0, -2 * v - 1, 2 * (v - top)).clamp(min=0)
    escaped = (v < 0) | (v >= top)
    s = torch.where(escaped, top, v)
    cdf = em._quantized_cdf.long()
    freq = (cdf[idx, s + 1] - cdf[idx, s]).double()
    nibbles = sum((raw >> 4 * j > 0).long() for j in range(7))
    bits = (_PRECISION - torch.log2(freq) + _STEP_SLACK + escaped * 4 * (1 + nibbles)).sum()
    need = 8 + float(bits) / 8  # + the flushed state
    if need > 4 * v.numel():
        raise ConfigError(f"{what} latent needs up to {need:.0f} bytes for its {v.numel()} "
                          f"values, more than compressai's encoder has room for "
                          f"({4 * v.numel()}): its values lie far outside the entropy model's "
                          "range; the weights do not fit (diverged or untrained?)")


def rans_decode(data: bytes, indexes: list[int], table: CoderTable, what: str) -> list[int]:
    """compressai's ``decode_with_indexes``, reading nothing outside ``data``.

    Accepts only what compressai's ``encode_with_indexes`` writes for the symbols it returns
    (so any accepted section re-encodes to itself, and equal bytes decode equally): a first
    state in [2**31, 2**63) (the coding steps keep it there), every read inside the section,
    every word read, the encoder's start state 2**31 at the end, and bypass values in the
    encoder's form (see ``_bypass``).
    Anything else raises ``BitstreamError``.
    """
    n = len(data)
    if n < 8 or n % 4:
        raise BitstreamError(f"{what} section has {n} bytes: not whole 32-bit rANS words")
    words = struct.unpack(f"<{n // 4}I", data)
    x = words[0] | words[1] << 32
    if not RANS_L <= x < _RANS_TOP:
        raise BitstreamError(f"{what} section does not start with a rANS state: damaged or "
                             "foreign stream")
    pos, end = 2, len(words)
    cdfs, max_values, offsets = table.cdfs, table.max_values, table.offsets
    out = [0] * len(indexes)
    for i, k in enumerate(indexes):
        cdf = cdfs[k]
        cum = x & 0xFFFF
        s = bisect_right(cdf, cum) - 1
        start = cdf[s]
        x = (cdf[s + 1] - start) * (x >> 16) + cum - start
        if x < RANS_L:
            if pos == end:
                raise BitstreamError(f"{what} section ends after {i} of {len(indexes)} symbols: "
                                     "truncated or damaged stream")
            x = x << 32 | words[pos]
            pos += 1
        if s == max_values[k]:
            s, x, pos = _bypass(x, words, pos, s, what)
        out[i] = s + offsets[k]
    if pos != end:
        raise BitstreamError(f"{what} section has {4 * (end - pos)} bytes after its last symbol: "
                             "damaged stream, or its header claims a smaller image")
    if x != RANS_L:
        raise BitstreamError(f"{what} section does not re-encode to itself (final rANS state "
                             f"{x:#x}, the encoder starts at {RANS_L:#x}): damaged or foreign "
                             "stream")
    return out


def _bypass(x: int, words: tuple[int, ...], pos: int, max_value: int, what: str):
    """A value outside its cdf: a 4-bit count, then that many raw nibbles, low first.

    compressai's encoder writes no leading zero nibble and at most 7 (its counting loop
    never ends for raw values >= 2**28: ``raw_val >> 32`` is undefined and gives raw_val).
    """
    count, x, pos = _nibble(x, words, pos, what)
    if count > 7:
        raise BitstreamError(f"{what} section holds an escaped value of {count} nibbles, more "
                             "than compressai writes: damaged or foreign stream")
    raw = v = 0
    for j in range(count):
        v, x, pos = _nibble(x, words, pos, what)
        raw |= v << 4 * j
    if count and v == 0:
        raise BitstreamError(f"{what} section holds an escaped value with a leading zero nibble, "
                             "which compressai never writes: damaged or foreign stream")
    value = raw >> 1
    return (-value - 1 if raw & 1 else value + max_value), x, pos


def _nibble(x: int, words: tuple[int, ...], pos: int, what: str):
    """Rans64DecGetBits(4), with the read checked."""
    v, x = x & 15, x >> 4
    if x < RANS_L:
        if pos == len(words):
            raise BitstreamError(f"{what} section ends inside an escaped value: truncated stream")
        x = x << 32 | words[pos]
        pos += 1
    return v, x, pos


@dataclass
class EntropyOutput:
    """What the entropy model received, predicted and would spend, element by element.

    Means and scales are the parameters of each element's Gaussian: ``hyper_*`` from h_s(z_hat)
    (what step 1 uses), ``spatial_*`` from the spatial prior (what step 2 uses); ``step1_mask``
    says which elements step 1 codes (True) and which step 2 does. Bits are -log2 of the
    likelihoods: in eval mode those of the values really coded, at the coder's table scales.
    """

    y_hat: torch.Tensor  # (B, M, h, w) what the decoder receives
    likelihoods: dict[str, torch.Tensor]  # "y": (B, M, h, w), "z": (B, N, h/4, w/4)
    hyper_means: torch.Tensor | None = None  # (B, M, h, w)
    hyper_scales: torch.Tensor | None = None
    spatial_means: torch.Tensor | None = None  # (B, M, h, w)
    spatial_scales: torch.Tensor | None = None
    step1_mask: torch.Tensor | None = None  # (1, M, h, w) bool

    @property
    def y_bits(self) -> torch.Tensor:
        """(B, M, h, w) bits of each element of y."""
        return bits_of(self.likelihoods["y"])

    @property
    def z_bits(self) -> torch.Tensor:
        """(B, N, h/4, w/4) bits of each element of z."""
        return bits_of(self.likelihoods["z"])


class NoisyEntropyBottleneck(EntropyBottleneck):
    """compressai's factorized prior whose training noise can come from a given generator.

    ``forward(z, generator=g)`` draws the uniform noise of ``noise`` mode from ``g`` (on z's
    device); without one it draws from the global RNG, as compressai does. The generator is
    held only for the call, under the caller's model lock.
    """

    _generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor, training: bool | None = None,
                generator: torch.Generator | None = None):
        self._generator = generator
        try:
            return super().forward(x, training)
        finally:
            self._generator = None

    def quantize(self, inputs: torch.Tensor, mode: str, means: torch.Tensor | None = None):
        if mode == "noise" and self._generator is not None:
            return inputs + torch.empty_like(inputs).uniform_(-0.5, 0.5, generator=self._generator)
        return super().quantize(inputs, mode, means)


class DualSpatialEntropyModel(nn.Module):
    """Args:
    latent_channels: M (even), channels of y.
    hyper_channels: N, channels of z.
    """

    def __init__(self, latent_channels: int, hyper_channels: int):
        super().__init__()
        M, N = latent_channels, hyper_channels
        if M % 2:
            raise ValueError(f"latent_channels={M} must be even (two channel halves)")
        self.M, self.N = M, N
        self.h_a = nn.Sequential(
            nn.Conv2d(M, N, 3, 1, 1), nn.GELU(),
            nn.Conv2d(N, N, 5, 2, 2), nn.GELU(),
            nn.Conv2d(N, N, 5, 2, 2),
        )
        self.h_s = nn.Sequential(
            nn.ConvTranspose2d(N, N, 5, 2, 2, output_padding=1), nn.GELU(),
            nn.ConvTranspose2d(N, N, 5, 2, 2, output_padding=1), nn.GELU(),
            nn.Conv2d(N, 2 * M, 3, 1, 1),
        )
        self.spatial_prior = nn.Sequential(
            nn.Conv2d(3 * M, 2 * M, 3, 1, 1), nn.GELU(),
            nn.Conv2d(2 * M, 2 * M, 3, 1, 1), nn.GELU(),
            nn.Conv2d(2 * M, 2 * M, 3, 1, 1),
        )
        self.entropy_bottleneck = NoisyEntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(_SCALE_TABLE)
        self._tables_key: tuple | None = None

    # -- shared by forward, compress and decompress -------------------------------------
    def _hyper(self, z_hat):
        mu0, s0 = self.h_s(z_hat).chunk(2, dim=1)
        return mu0, s0

    def _step2_params(self, y_hat1, mask, mu0, s0):
        mu1, s1 = self.spatial_prior(torch.cat([y_hat1 * mask, mu0, s0], dim=1)).chunk(2, dim=1)
        return mu1, s1

    def _y_likelihood(self, values, scales, means):
        gc = self.gaussian_conditional
        if not self.training and gc.scale_table.numel():
            # the coder's scale: the smallest table entry >= the predicted scale
            scales = gc.scale_table[gc.build_indexes(scales).long()]
        lik = gc._likelihood(values, scales, means)
        return gc.likelihood_lower_bound(lik) if gc.use_likelihood_bound else lik

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> EntropyOutput:
        """y (B, M, h, w) -> y_hat, likelihoods, priors. In training mode the rate noise (on y
        and z) is drawn from ``generator`` (on y's device); None: the global RNG."""
        B, M, h, w = y.shape
        z = self.h_a(y)
        z_hat, z_lik = self.entropy_bottleneck(z, generator=generator)
        mu0, s0 = self._hyper(z_hat)
        mask = checkerboard_masks(M, h, w, y.device).unsqueeze(0)  # (1, M, h, w)
        y_hat1 = ste_round(y - mu0) + mu0
        mu1, s1 = self._step2_params(y_hat1, mask, mu0, s0)
        mu, s = torch.where(mask, mu0, mu1), torch.where(mask, s0, s1)
        y_tilde = (y + torch.empty_like(y).uniform_(-0.5, 0.5, generator=generator) if self.training
                   else ste_round(y - mu) + mu)
        y_lik = self._y_likelihood(y_tilde, s, mu)
        y_hat = torch.where(mask, y_hat1, ste_round(y - mu1) + mu1)
        lo = _SCALE_TABLE[0]  # the Gaussian's scale bound: the scales the likelihood really uses
        return EntropyOutput(y_hat, {"y": y_lik, "z": z_lik}, mu0, s0.clamp_min(lo), mu1,
                             s1.clamp_min(lo), mask)

    # -- real bitstreams ----------------------------------------------------------------
    def update_tables(self, force: bool = False) -> bool:
        """Build the rANS tables from the current weights (compressai's ``update``).

        Called automatically by ``compress``/``decompress`` whenever the factorized prior's
        parameters changed since the last build, so tables are never stale or empty.
        """
        # torch bumps a tensor's version on every in-place change (optimizer steps, loads)
        key = tuple((p.data_ptr(), p._version) for p in self.entropy_bottleneck.parameters())
        if not force and key == self._tables_key and self.entropy_bottleneck._offset.numel():
            return False
        self.entropy_bottleneck.update(force=True)
        self.gaussian_conditional.update_scale_table(_SCALE_TABLE, force=True)
        self._tables_key = key
        return True

    def _code_step(self, y, mask, mu, s, what: str) -> bytes:
        gc = self.gaussian_conditional
        idx = gc.build_indexes(s[mask])
        check_encodable(y[mask] - mu[mask], idx, gc, what)
        return gc.compress(y[mask].unsqueeze(0), idx.unsqueeze(0), means=mu[mask].unsqueeze(0))[0]

    @torch.no_grad()
    def compress(self, y: torch.Tensor) -> dict:
        """y (1, M, h, w) -> {"strings": [z, step1, step2], "z_shape": (h/4, w/4)}."""
        if y.shape[0] != 1:
            raise ValueError(f"compress takes one image at a time, got batch {y.shape[0]}")
        self.update_tables()
        _, M, h, w = y.shape
        z = self.h_a(y)
        eb = self.entropy_bottleneck
        channel = torch.arange(self.N).view(1, -1, 1, 1).expand_as(z)
        check_encodable((z - eb._get_medians().reshape(1, -1, 1, 1)).flatten(), channel.flatten(),
                        eb, "z")
        z_strings = eb.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])  # what the decoder sees
        mu0, s0 = self._hyper(z_hat)
        mask = checkerboard_masks(M, h, w, y.device).unsqueeze(0)
        s1_string = self._code_step(y, mask, mu0, s0, "step-1")
        y_hat1 = torch.round(y - mu0) + mu0
        mu1, s1 = self._step2_params(y_hat1, mask, mu0, s0)
        s2_string = self._code_step(y, ~mask, mu1, s1, "step-2")
        return {"strings": [z_strings[0], s1_string, s2_string], "z_shape": tuple(z.shape[-2:])}

    def _decode_tables(self) -> tuple[CoderTable, CoderTable]:
        """(z, y) tables of ``rans_decode``, rebuilt whenever compressai's tables are replaced."""
        tensors = tuple(getattr(m, name)
                        for m in (self.entropy_bottleneck, self.gaussian_conditional)
                        for name in ("_quantized_cdf", "_cdf_length", "_offset"))
        key = tuple(t._version for t in tensors)
        cached = getattr(self, "_decode_cache", None)  # holds the tensors: their ids stay unique
        stale = cached is None or cached[1] != key
        if stale or any(a is not b for a, b in zip(cached[0], tensors)):
            cached = (tensors, key, (CoderTable.of(self.entropy_bottleneck),
                                     CoderTable.of(self.gaussian_conditional)))
            self._decode_cache = cached
        return cached[2]

    def _decode_step(self, string: bytes, mask, mu, s, table: CoderTable, what: str):
        idx = self.gaussian_conditional.build_indexes(s[mask])
        counts = np.bincount(idx.numpy(), minlength=len(table.cdfs))
        check_section(string, idx.numel(), table.least_bits(counts), what)
        values = rans_decode(string, idx.tolist(), table, what)
        return torch.tensor(values, dtype=torch.int32).type_as(mu) + mu[mask]  # as compressai

    @torch.no_grad()
    def decompress(self, strings: list[bytes], z_shape, y_shape) -> torch.Tensor:
        """Inverse of ``compress``: -> y_hat (1, M, h, w), equal to eval-mode ``forward``.

        The sections may come from anyone: each is checked against the symbols it must hold
        (all three before anything is decoded or allocated) and read by ``rans_decode``;
        whatever ``compress`` cannot have written raises ``BitstreamError``.
        """
        self.update_tables()
        tz, ty = self._decode_tables()
        M, N, (h, w), (hz, wz) = self.M, self.N, y_shape, z_shape
        if len(strings) != 3:
            raise BitstreamError(f"expected 3 sections (z, step 1, step 2), got {len(strings)}")
        half = M * h * w // 2  # symbols per step: every position, one channel half
        check_section(strings[0], N * hz * wz, tz.least_bits(np.full(N, hz * wz)), "z")
        least_y = half * (float(ty.min_bits.min()) - _STEP_SLACK)
        check_section(strings[1], half, least_y, "step-1")
        check_section(strings[2], half, least_y, "step-2")
        z_idx = np.repeat(np.arange(N), hz * wz).tolist()  # compressai's channel-major order
        z = torch.tensor(rans_decode(strings[0], z_idx, tz, "z"), dtype=torch.int32)
        medians = self.entropy_bottleneck._get_medians().detach().reshape(1, N, 1, 1)
        z_hat = z.reshape(1, N, hz, wz).type_as(medians) + medians
        mu0, s0 = self._hyper(z_hat)
        mask = checkerboard_masks(M, h, w, z_hat.device).unsqueeze(0)
        y_hat = torch.zeros(1, M, h, w, device=z_hat.device)
        y_hat[mask] = self._decode_step(strings[1], mask, mu0, s0, ty, "step-1")
        mu1, s1 = self._step2_params(y_hat, mask, mu0, s0)
        y_hat[~mask] = self._decode_step(strings[2], ~mask, mu1, s1, ty, "step-2")
        return y_hat


def bits_of(likelihoods: torch.Tensor) -> torch.Tensor:
    """Per-element information content -log2 p, in bits."""
    return -torch.log2(likelihoods)

