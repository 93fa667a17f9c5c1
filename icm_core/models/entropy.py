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
``noise`` mode); the decoder and the spatial prior see straight-through rounding
``round(y - mu) + mu`` (gradient of the identity), the values the decoder gets at test time.

In eval mode the likelihood uses the scale the rANS coder really uses (the next entry of
the 64-level scale table), so the per-element bits match the bitstream within 1 %.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models.base import get_scale_table
from torch import nn

_SCALE_TABLE = get_scale_table().tolist()  # 64 log-spaced scales, 0.11 .. 256


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


@dataclass
class EntropyOutput:
    y_hat: torch.Tensor  # (B, M, h, w) what the decoder receives
    likelihoods: dict[str, torch.Tensor]  # "y": (B, M, h, w), "z": (B, N, h/4, w/4)


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
        self.entropy_bottleneck = EntropyBottleneck(N)
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

    def forward(self, y: torch.Tensor) -> EntropyOutput:
        B, M, h, w = y.shape
        z = self.h_a(y)
        z_hat, z_lik = self.entropy_bottleneck(z)
        mu0, s0 = self._hyper(z_hat)
        mask = checkerboard_masks(M, h, w, y.device).unsqueeze(0)  # (1, M, h, w)
        y_hat1 = ste_round(y - mu0) + mu0
        mu1, s1 = self._step2_params(y_hat1, mask, mu0, s0)
        mu, s = torch.where(mask, mu0, mu1), torch.where(mask, s0, s1)
        y_tilde = y + torch.empty_like(y).uniform_(-0.5, 0.5) if self.training else ste_round(y - mu) + mu
        y_lik = self._y_likelihood(y_tilde, s, mu)
        y_hat = torch.where(mask, y_hat1, ste_round(y - mu1) + mu1)
        return EntropyOutput(y_hat, {"y": y_lik, "z": z_lik})

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

    def _code_step(self, y, mask, mu, s, encode: bool, string: bytes | None = None):
        gc = self.gaussian_conditional
        idx = gc.build_indexes(s[mask]).unsqueeze(0)
        means = mu[mask].unsqueeze(0)
        if encode:
            return gc.compress(y[mask].unsqueeze(0), idx, means=means)[0]
        return gc.decompress([string], idx, means=means)[0]

    @torch.no_grad()
    def compress(self, y: torch.Tensor) -> dict:
        """y (1, M, h, w) -> {"strings": [z, step1, step2], "z_shape": (h/4, w/4)}."""
        if y.shape[0] != 1:
            raise ValueError(f"compress takes one image at a time, got batch {y.shape[0]}")
        self.update_tables()
        _, M, h, w = y.shape
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])  # what the decoder sees
        mu0, s0 = self._hyper(z_hat)
        mask = checkerboard_masks(M, h, w, y.device).unsqueeze(0)
        s1_string = self._code_step(y, mask, mu0, s0, encode=True)
        y_hat1 = torch.round(y - mu0) + mu0
        mu1, s1 = self._step2_params(y_hat1, mask, mu0, s0)
        s2_string = self._code_step(y, ~mask, mu1, s1, encode=True)
        return {"strings": [z_strings[0], s1_string, s2_string], "z_shape": tuple(z.shape[-2:])}

    @torch.no_grad()
    def decompress(self, strings: list[bytes], z_shape, y_shape) -> torch.Tensor:
        """Inverse of ``compress``: -> y_hat (1, M, h, w), equal to eval-mode ``forward``."""
        self.update_tables()
        M, (h, w) = self.M, y_shape
        z_hat = self.entropy_bottleneck.decompress([strings[0]], tuple(z_shape))
        mu0, s0 = self._hyper(z_hat)
        mask = checkerboard_masks(M, h, w, z_hat.device).unsqueeze(0)
        y_hat = torch.zeros(1, M, h, w, device=z_hat.device)
        y_hat[mask] = self._code_step(None, mask, mu0, s0, encode=False, string=strings[1])
        mu1, s1 = self._step2_params(y_hat, mask, mu0, s0)
        y_hat[~mask] = self._code_step(None, ~mask, mu1, s1, encode=False, string=strings[2])
        return y_hat


def bits_of(likelihoods: torch.Tensor) -> torch.Tensor:
    """Per-element information content -log2 p, in bits."""
    return -torch.log2(likelihoods)

