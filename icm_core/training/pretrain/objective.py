"""The masked-image-modeling objective: the downstream ``Backbone`` with a mask token, a light
pixel decoder, and an L2 (or L1) loss on the hidden patches' (per-patch normalized) pixels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from icm_core.models.backbone import Backbone
from icm_core.training.pretrain.config import PretrainConfig


def patchify(image: torch.Tensor, p: int) -> torch.Tensor:
    """(B, 3, h*p, w*p) -> (B, h, w, p*p*3), each patch's pixels in (row, column, channel) order."""
    B, C, H, W = image.shape
    x = image.reshape(B, C, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, H // p, W // p, p * p * C)


def patch_targets(image: torch.Tensor, p: int, norm_pix: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch pixel targets (B, h, w, p*p*3), normalized by each patch's mean and (population)
    variance when ``norm_pix`` (MAE): the decoder learns structure, not the patch's brightness."""
    t = patchify(image.float(), p)
    if norm_pix:
        t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    return t




@dataclass
class MIMOutput:
    loss: torch.Tensor  # () mean over masked patches
    prediction: torch.Tensor  # (B, h, w, p*p*3)
    target: torch.Tensor  # (B, h, w, p*p*3)
    mask: torch.Tensor  # (B, h, w) bool, True = hidden
    features: torch.Tensor  # (B, C, h, w) last encoder block


class MIMModel(nn.Module):
    """The downstream ``Backbone`` + a mask token + a light pixel decoder.

    The encoder is the very module downstream code builds, so its ``model.state_dict()`` is
    what ``Backbone`` loads; the mask token enters through a hook on the patch embedding.
    """

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Backbone(cfg.backbone, load_weights=cfg.backbone.weights not in ("none", ""))
        C, p = self.encoder.embed_dim, self.encoder.stride
        self.mask_token = nn.Parameter(torch.zeros(C))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        out = p * p * 3
        if cfg.decoder_layers == 1:
            self.decoder = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, out))
        else:
            self.decoder = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, C), nn.GELU(), nn.Linear(C, out))
        self._mask: torch.Tensor | None = None
        self.encoder.vit.patch_embed.register_forward_hook(self._mask_tokens)

    def _mask_tokens(self, module, inputs, tokens: torch.Tensor) -> torch.Tensor | None:
        """Patch embedding output (B, h, w, C) -> masked positions replaced by the mask token."""
        if self._mask is None:
            return None
        return torch.where(self._mask[..., None], self.mask_token.to(tokens.dtype), tokens)

    def encode(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """image (B,3,H,W) in [0,1], mask (B,H/p,W/p) -> last block (B,C,H/p,W/p); masked pixels
        are zeroed before the encoder sees the image."""
        p = self.encoder.stride
        pix = mask.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None]  # (B,1,H,W)
        visible = torch.where(pix, torch.zeros((), dtype=image.dtype, device=image.device), image)
        self._mask = mask
        try:
            return self.encoder(visible)[-1]
        finally:
            self._mask = None

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> MIMOutput:
        feats = self.encode(image, mask)  # (B, C, h, w)
        pred = self.decoder(feats.permute(0, 2, 3, 1)).float()  # (B, h, w, p*p*3)
        target = patch_targets(image, self.encoder.stride, self.cfg.norm_pix)
        err = (pred - target).abs() if self.cfg.loss == "l1" else (pred - target) ** 2
        per_patch = err.mean(-1)  # (B, h, w)
        m = mask.to(per_patch.dtype)
        loss = (per_patch * m).sum() / m.sum().clamp_min(1)
        return MIMOutput(loss, pred, target, mask, feats)


def encoder_state_dict(model: MIMModel) -> dict[str, torch.Tensor]:
    """The encoder's weights exactly as ``Backbone.load_checkpoint`` expects them."""
    return {k: v.detach().contiguous().cpu() for k, v in model.encoder.model.state_dict().items()}


__all__ = ["MIMModel", "MIMOutput", "encoder_state_dict", "patch_targets", "patchify"]
