"""The batch of a step: random resized crops and flips of pool scenes, each with its mask of
hidden patches (BEiT/EVA-02 block-wise, or MAE/SimMIM uniform). Every draw comes from a
generator seeded by (seed, step), so a resumed run or a worker process makes the same batch."""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2.functional import resized_crop

from icm_core.training.pretrain.config import PretrainConfig


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """An integer in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def crop_box(H: int, W: int, min_scale: float, g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop: area in [min_scale, 1], aspect in [3/4, 4/3]."""
    for _ in range(10):
        area = H * W * _uniform(g, min_scale, 1.0)
        aspect = math.exp(_uniform(g, math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < h <= H and 0 < w <= W:
            return _randint(g, 0, H - h), _randint(g, 0, W - w), h, w
    return 0, 0, H, W


def block_mask(h: int, w: int, n_mask: int, g: torch.Generator, min_block: int = 4) -> torch.Tensor:
    """BEiT's block-wise masking on an (h, w) grid, topped up to exactly ``n_mask`` patches.

    Rectangles of >= ``min_block`` patches and aspect in [0.3, 1/0.3] are added while they do
    not overshoot; random single patches fill what is left, so every image hides the same count.
    """
    mask = torch.zeros(h, w, dtype=torch.bool)
    min_block = min(min_block, n_mask)
    for _ in range(10 * n_mask):
        left_over = n_mask - int(mask.sum())
        if left_over < min_block:
            break
        area = _uniform(g, min_block, left_over)
        aspect = math.exp(_uniform(g, math.log(0.3), math.log(1 / 0.3)))
        bh, bw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if not (0 < bh <= h and 0 < bw <= w):
            continue
        top, left = _randint(g, 0, h - bh), _randint(g, 0, w - bw)
        new = int((~mask[top:top + bh, left:left + bw]).sum())
        if 0 < new <= left_over:
            mask[top:top + bh, left:left + bw] = True
    free = (~mask).flatten().nonzero().squeeze(1)
    extra = n_mask - int(mask.sum())
    mask.view(-1)[free[torch.randperm(len(free), generator=g)[:extra]]] = True
    return mask


def random_mask(h: int, w: int, n_mask: int, g: torch.Generator) -> torch.Tensor:
    """Exactly ``n_mask`` patches of an (h, w) grid, uniformly at random (MAE/SimMIM)."""
    mask = torch.zeros(h * w, dtype=torch.bool)
    mask[torch.randperm(h * w, generator=g)[:n_mask]] = True
    return mask.view(h, w)



def make_batch(pool: torch.Tensor, cfg: PretrainConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B,3,H,W) float in [0,1], masks (B,H/p,W/p) bool, True = hidden) of ``step``.

    A function of (pool, seed, step) only, so a resumed run, or a worker process, makes the
    very same batch: scenes drawn from the pool, a random resized crop, a flip, a mask each.
    """
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    (H, W), p = cfg.data.size, cfg.backbone.patch_size
    h, w = H // p, W // p
    n_mask = round(cfg.mask_ratio * h * w)
    make_mask = block_mask if cfg.mask_mode == "block" else random_mask
    images, masks = [], []
    for i in torch.randint(len(pool), (cfg.batch_size,), generator=g).tolist():
        img = pool[i].float() / 255
        top, left, ch, cw = crop_box(*img.shape[-2:], cfg.data.min_scale, g)
        img = resized_crop(img, top, left, ch, cw, [H, W], antialias=True).clamp(0, 1)
        if cfg.data.flip and _uniform(g) < 0.5:
            img = img.flip(-1)
        images.append(img)
        masks.append(make_mask(h, w, n_mask, g))
    return torch.stack(images), torch.stack(masks)


__all__ = ["block_mask", "crop_box", "make_batch", "random_mask"]
