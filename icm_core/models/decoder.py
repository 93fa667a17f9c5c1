"""Section 2.4: the low-complexity transformer decoder (and the "Full Dec" ablation).

Three stages at strides 16, 8 and 4 (8x upsampling in all); bicubic 2x upsampling after each
stage, a final linear projection at stride 2 and a last 2x bicubic interpolation::

    y_hat (B, M, H/16, W/16) -> in-proj -> stage 1 -> up -> stage 2 -> up -> stage 3 -> up
        -> out-proj (B, C_t, H/2, W/2) -> up -> prediction (B, C_t, H, W)

Low-complexity self-attention at stage s (s = 1, 2, 3): queries from a 3x3 depthwise conv
with stride 2, keys/values from a depthwise conv with stride k_s = 2^(s+1)::

    Q_s = W_q DWConv3x3/2(F_s)            (H_s W_s / 4 queries)
    K_s = W_k DWConv/k_s(F_s), V_s = ...  (H_s W_s / k_s^2 keys)
    A_s = Q_s K_s^T / sqrt(d) + alpha_s * Interp(A_{s-1})     (cross-scale fusion)

Keys sit at 4 latent positions (64 px at patch 16) in every stage, so A_{s-1} and A_s share keys;
Interp upsamples A_{s-1} over its query positions only (2x per stage). The attention output
is upsampled back to (H_s, W_s) bicubically. Blocks are otherwise EVA-02-like: pre-LayerNorm,
residual attention, residual SwiGLU MLP (no RoPE: positions enter through the convolutions).

The "full" variant has four stages (strides 16, 8, 4, 2) with attention over every position
and no cross-scale fusion (its key sets differ between stages).

Scores are materialized only where they are used: for the fusion term and when the caller asks
for the attention maps. Elsewhere ``F.scaled_dot_product_attention`` computes the same output
without the (Nq, Nk) matrix (at 448x576 the full variant's stride-2 stage would otherwise hold
64512^2 scores per head).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from icm_core.models.prelim import upsample_to


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1_g, self.fc1_x, self.fc2 = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.silu(self.fc1_g(x)) * self.fc1_x(x))


@dataclass
class AttentionMaps:
    """The attention of one decoder block, with the map from its indices to image pixels.

    ``scores`` are what the softmax sees, (B, heads, Nq, Nk): after the cross-scale fusion where
    the block fuses; ``raw`` are the block's own Q K^T / sqrt(d) before it (``None``: no fusion,
    the same as ``scores``). Queries lie on a (query_hw) grid, keys on a (key_hw) grid, both
    row-major. ``feature_stride`` is how many pixels of the padded input image one feature pixel
    of this stage spans; queries sit every ``q_stride`` and keys every ``kv_stride`` feature
    pixels, so in image pixels a query is ``feature_stride * q_stride`` apart from the next and
    a key ``feature_stride * kv_stride`` (64 at patch 16 in every stage of the paper's decoder).
    """

    scores: torch.Tensor
    query_hw: tuple[int, int]
    key_hw: tuple[int, int]
    raw: torch.Tensor | None = None
    stage: int = 0  # 1-based; 0 when built by hand
    block: int = 0
    feature_stride: int = 1
    q_stride: int = 1
    kv_stride: int = 1
    alpha: float | None = None  # the stage's fusion weight at the time of the forward

    def probabilities(self) -> torch.Tensor:
        return self.scores.softmax(dim=-1)

    def detached(self) -> AttentionMaps:
        return replace(self, scores=self.scores.detach(),
                       raw=None if self.raw is None else self.raw.detach())

    def _centers(self, hw: tuple[int, int], stride: int, kernel: int) -> torch.Tensor:
        # a feature pixel p spans image pixels [fs p, fs (p + 1)); a unit at index i looks at
        # feature pixels centred on stride * i + (kernel - 1) / 2
        fs = self.feature_stride
        iy, ix = torch.meshgrid(torch.arange(hw[0]), torch.arange(hw[1]), indexing="ij")
        grid = torch.stack([iy, ix], -1).reshape(-1, 2).double()
        return fs * (stride * grid + (kernel - 1) / 2) + (fs - 1) / 2

    def query_pixels(self) -> torch.Tensor:
        """(Nq, 2) centres (y, x) of the queries in padded-image pixels (3x3 conv: centred)."""
        return self._centers(self.query_hw, self.q_stride, 1)

    def key_pixels(self) -> torch.Tensor:
        """(Nk, 2) centres (y, x) of the keys in padded-image pixels (k x k conv, stride k)."""
        return self._centers(self.key_hw, self.kv_stride, self.kv_stride)

    def query_at(self, y: float, x: float) -> int:
        """Index of the query whose centre is nearest to image pixel (y, x)."""
        d = (self.query_pixels() - torch.tensor([y, x], dtype=torch.float64)).square().sum(1)
        return int(d.argmin())

    def key_weights(self, query: int, head: int = 0, batch: int = 0,
                    fused: bool = True) -> torch.Tensor:
        """Softmax weights of one query over the keys, as a (key_h, key_w) map (sums to 1)."""
        scores = self.scores if fused or self.raw is None else self.raw
        return scores[batch, head, query].detach().float().softmax(-1).reshape(self.key_hw)


class DownsampledAttention(nn.Module):
    """Self-attention with queries at stride ``q_stride`` and keys/values at ``kv_stride``.

    ``q_stride = kv_stride = 1`` is plain full-resolution attention (the Full Dec ablation).
    """

    def __init__(self, dim: int, heads: int, q_stride: int = 2, kv_stride: int = 4):
        super().__init__()
        self.heads, self.q_stride, self.kv_stride = heads, q_stride, kv_stride
        self.scale = (dim // heads) ** -0.5
        self.q_down = nn.Conv2d(dim, dim, 3, q_stride, 1, groups=dim) if q_stride > 1 else nn.Identity()
        self.kv_down = (nn.Conv2d(dim, dim, kv_stride, kv_stride, groups=dim) if kv_stride > 1
                        else nn.Identity())
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, h*w, C)
        return x.flatten(2).transpose(1, 2)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, d)
        B, N, C = t.shape
        return t.view(B, N, self.heads, C // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, prev: AttentionMaps | None = None,
                alpha: torch.Tensor | None = None, keep_scores: bool = True,
                ) -> tuple[torch.Tensor, AttentionMaps | None]:
        """-> (output like ``x``, this block's scores or None when ``keep_scores`` is False)."""
        B, C, H, W = x.shape
        qf = self.q_down(x)  # (B, C, ceil(H/2), ceil(W/2))
        s = self.kv_stride
        pad_h, pad_w = (-H) % s, (-W) % s  # keys cover the border: ceil(H/s) x ceil(W/s)
        kvf = self.kv_down(F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x)
        q = self._heads(self.q(self._tokens(qf)))
        kv = self._tokens(kvf)
        k, v = self._heads(self.k(kv)), self._heads(self.v(kv))
        q_hw, k_hw = tuple(qf.shape[-2:]), tuple(kvf.shape[-2:])
        fuse = prev is not None and alpha is not None and prev.key_hw == k_hw
        maps = None
        if fuse or keep_scores:
            raw = (q @ k.transpose(-2, -1)) * self.scale  # (B, heads, Nq, Nk)
            scores = raw + alpha * _interp_queries(prev, q_hw) if fuse else raw
            out = scores.softmax(dim=-1) @ v  # (B, heads, Nq, d)
            if keep_scores:
                maps = AttentionMaps(scores, q_hw, k_hw, raw if fuse else None,
                                     q_stride=self.q_stride, kv_stride=self.kv_stride,
                                     alpha=float(alpha.detach()) if fuse else None)
        else:  # same result, memory linear in the number of tokens
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = self.proj(out.transpose(1, 2).reshape(B, -1, C))  # (B, Nq, C)
        out = out.transpose(1, 2).reshape(B, C, *q_hw)
        if q_hw != (H, W):
            out = upsample_to(out, (H, W))
        return out, maps


def _interp_queries(prev: AttentionMaps, q_hw: tuple[int, int]) -> torch.Tensor:
    """Upsample A_{s-1} (B, h, Nq', Nk) over its query grid to (B, h, Nq, Nk)."""
    B, h, _, nk = prev.scores.shape
    grid = prev.scores.permute(0, 1, 3, 2).reshape(B, h * nk, *prev.query_hw)
    grid = F.interpolate(grid, size=q_hw, mode="bilinear", align_corners=False)
    return grid.reshape(B, h, nk, -1).permute(0, 1, 3, 2)


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, q_stride: int, kv_stride: int, mlp_ratio: float = 8 / 3):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = DownsampledAttention(dim, heads, q_stride, kv_stride)
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio))

    def forward(self, x, prev=None, alpha=None, keep_scores: bool = True):  # x: (B, C, H, W)
        y = self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        a, maps = self.attn(y, prev, alpha, keep_scores)
        x = x + a
        t = x.permute(0, 2, 3, 1)
        x = (t + self.mlp(self.norm2(t))).permute(0, 3, 1, 2)
        return x, maps


class Stage(nn.Module):
    def __init__(self, dim, depth, heads, q_stride, kv_stride, fuse: bool):
        super().__init__()
        self.blocks = nn.ModuleList(DecoderBlock(dim, heads, q_stride, kv_stride) for _ in range(depth))
        self.alpha = nn.Parameter(torch.tensor(0.1)) if fuse else None

    def forward(self, x, prev, keep_last: bool = True, keep_all: bool = False):
        """-> (x, every block's maps: None where not kept). The last block's are what the next
        stage fuses (``keep_last``); ``keep_all`` keeps every block's (for viewers)."""
        maps = []
        for i, blk in enumerate(self.blocks):
            keep = keep_all or (keep_last and i == len(self.blocks) - 1)
            x, m = blk(x, prev, self.alpha, keep)
            maps.append(m)
        return x, maps


@dataclass
class DecoderOutput:
    prediction: torch.Tensor  # (B, C_t, H, W)
    attention: list[AttentionMaps] | None


class TransformerDecoder(nn.Module):
    """Args:
    in_channels: channels M of the received latent.
    out_channels: channels C_t of the task prediction.
    dims, depths: channels and blocks of each stage (3 for ``low``, 4 for ``full``).
    heads: attention heads (the same in every stage, for the cross-scale fusion).
    kind: ``low`` (paper) or ``full`` (Full Dec ablation).
    """

    def __init__(self, in_channels: int, out_channels: int, dims, depths, heads: int, kind: str = "low"):
        super().__init__()
        self.kind = kind
        self.in_proj = nn.Conv2d(in_channels, dims[0], 1)
        stages, ups = [], []
        for s, (dim, depth) in enumerate(zip(dims, depths), start=1):
            if kind == "low":
                stages.append(Stage(dim, depth, heads, 2, 2 ** (s + 1), fuse=s > 1))
            else:
                stages.append(Stage(dim, depth, heads, 1, 1, fuse=False))
            nxt = dims[s] if s < len(dims) else dims[-1]
            ups.append(nn.Conv2d(dim, nxt, 1))
        self.stages, self.channel_proj = nn.ModuleList(stages), nn.ModuleList(ups)
        self.out_proj = nn.Conv2d(dims[-1], out_channels, 1)

    def forward(self, y_hat: torch.Tensor, out_size, return_attention: bool = False) -> DecoderOutput:
        """y_hat (B, M, h, w) -> prediction at ``out_size`` (the padded image size).

        ``return_attention``: every block's ``AttentionMaps`` in decode order, with the pixel
        mapping filled in; detached unless the module is training.
        """
        x = self.in_proj(y_hat)  # (B, C1, H/16, W/16)
        prev, maps = None, []
        for s, (stage, proj) in enumerate(zip(self.stages, self.channel_proj)):
            fused_next = s + 1 < len(self.stages) and self.stages[s + 1].alpha is not None
            feature_stride = out_size[0] // x.shape[-2]  # image pixels per feature pixel
            x, stage_maps = stage(x, prev, keep_last=fused_next, keep_all=return_attention)
            prev = stage_maps[-1]
            if return_attention:
                for b, m in enumerate(stage_maps):
                    m = replace(m, stage=s + 1, block=b, feature_stride=feature_stride)
                    maps.append(m if self.training else m.detached())
            x = proj(upsample_to(x, (2 * x.shape[-2], 2 * x.shape[-1])))  # next stride, next width
        x = self.out_proj(x)  # low: (B, C_t, H/2, W/2); full: (B, C_t, H, W)
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = upsample_to(x, out_size)
        return DecoderOutput(x, maps if return_attention else None)
