"""Differentiable codec proxies a pre-processor trains through: ``PROXIES`` (codec name ->
proxy), today JPEG's (DCT, the standard quantization tables, a rounding proxy and a calibrated
bit cost)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from torch import nn

from icm_core.baselines.classical import get_codec
from icm_core.data.images import pil_to_tensor
from icm_core.errors import ConfigError

_RGB2YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5],
                         [0.5, -0.418688, -0.081312]])  # JFIF full-range YCbCr
_YCC2RGB = torch.linalg.inv(_RGB2YCC.double()).float()

# -- JPEG constants (ITU-T T.81 Annex K, libjpeg's quality scaling) ---------------------------
JPEG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]).reshape(8, 8)


JPEG_CHROMA = np.full((8, 8), 99)
JPEG_CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]

JPEG_SYMBOL_BITS = {"block": 3.05, "ac": 4.05}
"""Average Huffman code bits per 8x8 block (its DC-difference symbol and end-of-block code) and
per (run, size) symbol of a nonzero AC coefficient in Pillow's optimized-Huffman JPEG files,
fitted on synthetic scenes (see ``icm_core.baselines.preprocessor``'s docstring)."""

JPEG_HEADER_BITS = 2392.0
"""The fit's intercept: markers, quantization and Huffman tables (~300 bytes). Constant, so the
proxy's ``bits`` leave it out; :func:`proxy_agreement` adds it to compare with file sizes."""


def jpeg_table(quality: int, chroma: bool = False) -> np.ndarray:
    """The 8x8 quantization table (natural order) libjpeg writes at ``quality`` (baseline:
    entries clamped to 1..255)."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    base = JPEG_CHROMA if chroma else JPEG_LUMA
    return np.clip((base * scale + 50) // 100, 1, 255)


def _dct_matrix() -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.float()


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    """Rounded values forward, identity gradient backward."""
    return x + (torch.round(x) - x).detach()


def _size_category(v: torch.Tensor) -> torch.Tensor:
    """JPEG's SSSS: number of magnitude bits of integer ``v`` (0 for 0)."""
    a = v.abs()
    return torch.where(a < 0.5, torch.zeros_like(a), torch.floor(torch.log2(a.clamp(min=1))) + 1)


def _soft_cost(v: torch.Tensor, symbol_bits: float) -> torch.Tensor:
    """Smooth stand-in of ``symbol_bits + size(v)`` for v != 0 and 0 for v = 0."""
    a = v.abs()
    return (symbol_bits + 1) * a.clamp(max=1) + torch.log2(a.clamp(min=1))


def _hard_soft(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """``hard``'s value with ``soft``'s gradient."""
    return hard.detach() + soft - soft.detach()


class ProxyOutput(NamedTuple):
    image: torch.Tensor  # (B, 3, H, W) in [0, 1]: what the decoder would show
    bits: torch.Tensor   # (B,) estimated bits of the entropy-coded data (headers excluded)


class JPEGProxy(nn.Module):
    """Differentiable stand-in for ``get_codec("jpeg")`` (4:2:0, Pillow/libjpeg tables)."""

    def __init__(self, symbol_bits: dict[str, float] | None = None):
        super().__init__()
        self.symbol_bits = dict(symbol_bits or JPEG_SYMBOL_BITS)
        self.register_buffer("dct", _dct_matrix(), persistent=False)
        self.register_buffer("rgb2ycc", _RGB2YCC.clone(), persistent=False)
        self.register_buffer("ycc2rgb", _YCC2RGB.clone(), persistent=False)

    def _plane(self, p: torch.Tensor, table: np.ndarray, mcu: int):
        """One plane (B, h, w), sides multiples of 8 -> (reconstruction, bits (B,))."""
        B, h, w = p.shape
        D = self.dct
        blocks = (p - 128).reshape(B, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
        coef = D @ blocks @ D.T                                   # (B, hb, wb, 8, 8)
        Q = torch.as_tensor(table, dtype=p.dtype, device=p.device)
        q = coef / Q
        q_hat = _ste_round(q)
        rec = D.T @ (q_hat * Q) @ D + 128
        rec = rec.permute(0, 1, 3, 2, 4).reshape(B, h, w)
        # DC: differences along the coding order (MCU order: 2x2 luma blocks per MCU)
        hb, wb = h // 8, w // 8
        dc, dc_hat = q[..., 0, 0], q_hat[..., 0, 0]
        if mcu == 2:
            def order(t):
                return t.reshape(B, hb // 2, 2, wb // 2, 2).permute(0, 1, 3, 2, 4).reshape(B, -1)
        else:
            def order(t):
                return t.reshape(B, -1)
        dc, dc_hat = order(dc), order(dc_hat)
        diff = dc - F.pad(dc_hat[:, :-1], (1, 0)).detach()  # the predictor is the previous coded DC
        diff_hat = torch.round(diff)
        sb = self.symbol_bits
        dc_bits = _hard_soft(_size_category(diff_hat), _soft_cost(diff, 0.0))
        ac = q.flatten(-2)[..., 1:]
        ac_hat = torch.round(ac)
        nz = (ac_hat != 0).float()
        ac_bits = _hard_soft(nz * (sb["ac"] + _size_category(ac_hat)), _soft_cost(ac, sb["ac"]))
        bits = dc_bits.sum(1) + ac_bits.flatten(1).sum(1) + sb["block"] * hb * wb
        return rec, bits

    def forward(self, image: torch.Tensor, quality: int) -> ProxyOutput:
        """image (B, 3, H, W) in [0, 1] -> the proxy-decoded image and its bits."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ConfigError(f"image of shape {tuple(image.shape)}: expected (B, 3, H, W)")
        B, _, H, W = image.shape
        x = _ste_round(image.clamp(0, 1) * 255)                      # the codec reads uint8
        Hp, Wp = -(-H // 16) * 16, -(-W // 16) * 16                  # whole 4:2:0 MCUs
        x = F.pad(x, (0, Wp - W, 0, Hp - H), mode="replicate")
        ycc = torch.einsum("ij,bjhw->bihw", self.rgb2ycc, x)
        ycc = ycc + torch.tensor([0.0, 128.0, 128.0], device=x.device).view(1, 3, 1, 1)
        y_rec, bits = self._plane(ycc[:, 0], jpeg_table(quality), mcu=2)
        chroma = F.avg_pool2d(ycc[:, 1:], 2)
        planes = [y_rec]
        for c in range(2):
            rec, b = self._plane(chroma[:, c], jpeg_table(quality, chroma=True), mcu=1)
            planes.append(F.interpolate(rec[:, None], scale_factor=2, mode="bilinear",
                                        align_corners=False)[:, 0])
            bits = bits + b
        ycc_rec = torch.stack(planes, 1)
        ycc_rec = ycc_rec - torch.tensor([0.0, 128.0, 128.0], device=x.device).view(1, 3, 1, 1)
        rgb = torch.einsum("ij,bjhw->bihw", self.ycc2rgb, ycc_rec)
        return ProxyOutput((rgb.clamp(0, 255) / 255)[..., :H, :W], bits)


PROXIES: dict[str, Callable[[], nn.Module]] = {"jpeg": JPEGProxy}
"""Codec name -> constructor of its differentiable proxy; a pre-processor can be trained for
exactly these codecs (``PreprocessorConfig.codec``), every other codec gets the one trained
through ``FALLBACK_PROXY``. A proxy is an ``nn.Module`` whose ``forward(image, quality)`` takes
(B, 3, H, W) images in [0, 1] and one integer quality of ``PreprocessorConfig.qualities`` and
returns a ``ProxyOutput``: what the decoder would show, and the bits of each image, both
differentiable with respect to ``image``. To add one: ``PROXIES["webp"] = WebPProxy``."""

FALLBACK_PROXY = "jpeg"
"""The proxy whose pre-processor a codec without its own proxy is given."""


def make_proxy(codec: str) -> nn.Module:
    """A new proxy of ``codec`` (a name of ``PROXIES``)."""
    if codec not in PROXIES:
        raise ConfigError(f"preprocessor codec={codec!r} has no differentiable proxy; "
                          f"use one of {list(PROXIES)}")
    return PROXIES[codec]()


def proxy_for(codec: str) -> str:
    """The proxy a pre-processor in front of ``codec`` is trained through: its own when it has
    one, else ``FALLBACK_PROXY``."""
    return codec if codec in PROXIES else FALLBACK_PROXY


# -- how well the proxy tracks the real codec --------------------------------------------------
def proxy_agreement(images: Sequence, qualities: Sequence[int]) -> dict:
    """Proxy bits against the REAL JPEG file size of each (image, quality) pair.

    ``images``: PIL images. Returns the pairs, their Pearson and Spearman correlations and the
    median relative error of (proxy bits + ``JPEG_HEADER_BITS``) / 8 against the file bytes.
    """


    codec, proxy = get_codec("jpeg"), JPEGProxy()
    proxy_bits, real_bytes, pairs = [], [], []
    for i, im in enumerate(images):
        im = im.convert("RGB")
        x = pil_to_tensor(im)[None]
        for q in qualities:
            with torch.no_grad():
                proxy_bits.append(float(proxy(x, q).bits[0]))
            real_bytes.append(len(codec.encode(im, q)))
            pairs.append((i, int(q)))
    est = (np.array(proxy_bits) + JPEG_HEADER_BITS) / 8
    rel = np.abs(est - np.array(real_bytes)) / np.array(real_bytes)
    return {"proxy_bits": proxy_bits, "real_bytes": real_bytes, "pairs": pairs,
            "pearson": float(pearsonr(proxy_bits, real_bytes)[0]),
            "spearman": float(spearmanr(proxy_bits, real_bytes)[0]),
            "median_rel_error": float(np.median(rel))}
