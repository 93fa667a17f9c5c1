"""Pure functions from predictions, labels, bits and attention to pictures (arrays, PNGs)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from icm_core.data.images import image_to_uint8
from icm_core.tasks.registry import IGNORE_INDEX, get_task


def label_palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC's bit-interleaved palette: (n, 3) uint8, distinct neighbouring ids."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


_PALETTE = label_palette()
_PALETTE[IGNORE_INDEX] = (255, 255, 255)


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.cpu().numpy()
    return np.asarray(x)


def _turbo_like(v: np.ndarray) -> np.ndarray:
    """A perceptually ordered colour ramp (dark blue -> yellow) without matplotlib."""
    stops = np.array([[48, 18, 59], [40, 120, 230], [30, 200, 160], [170, 230, 50], [250, 200, 40],
                      [200, 50, 20]], np.float64)
    pos = np.clip(v, 0, 1) * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).astype(np.uint8)


def colorize(task: str, value, *, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """One task's map -> (H, W, 3) uint8 RGB.

    ``value``: labels (H, W) or logits (C, H, W) for class tasks; (1, H, W)/(H, W) maps for
    depth and binary tasks; (3, H, W) vectors for normals.
    """
    spec = get_task(task)
    a = _as_numpy(value)
    if spec.colormap == "labels":
        if a.ndim == 3:
            a = a.argmax(axis=0)
        return _PALETTE[a.astype(np.int64).clip(0, 255)]
    if spec.colormap == "normals":
        rgb = (a.transpose(1, 2, 0) + 1) / 2 * 255
        return rgb.clip(0, 255).astype(np.uint8)
    if a.ndim == 3:
        a = a[0]
    if spec.colormap == "depth":
        valid = a > 0
        lo = vmin if vmin is not None else (a[valid].min() if valid.any() else 0.0)
        hi = vmax if vmax is not None else (a[valid].max() if valid.any() else 1.0)
        rgb = _turbo_like((a - lo) / max(hi - lo, 1e-6))
        rgb[~valid] = 0
        return rgb
    g = np.where(a == IGNORE_INDEX, 0.5, a).clip(0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


def sample_grid(samples: list[dict], tasks, *, cell: int | None = None) -> Image.Image:
    """A labelled grid: one row per sample, columns RGB then each task's label."""
    cols = ["image", *tasks]
    h, w = samples[0]["image"].shape[-2:]
    pad, title = 4, 14
    grid = Image.new("RGB", (len(cols) * (w + pad) + pad, len(samples) * (h + pad) + pad + title),
                     "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(cols):
        draw.text((pad + j * (w + pad), 1), name, fill="black")
    for i, s in enumerate(samples):
        for j, name in enumerate(cols):
            rgb = image_to_uint8(s["image"]) if name == "image" else colorize(name, s[name])
            grid.paste(Image.fromarray(rgb), (pad + j * (w + pad), title + pad + i * (h + pad)))
    return grid


def heatmap(values, *, vmax: float | None = None) -> np.ndarray:
    """(h, w) non-negative map (e.g. bits per latent position) -> (h, w, 3) uint8."""
    a = _as_numpy(values).astype(np.float64)
    top = vmax if vmax is not None else (a.max() if a.size and a.max() > 0 else 1.0)
    return _turbo_like(a / max(top, 1e-12))


def prediction_panel(image, target, prediction, bit_map, task: str) -> Image.Image:
    """A row: input, label, decoded prediction, bits per latent position (upsampled)."""
    h, w = image.shape[-2:]
    tiles = [image_to_uint8(image), colorize(task, target), colorize(task, prediction)]
    bits = Image.fromarray(heatmap(bit_map)).resize((w, h), Image.NEAREST)
    tiles.append(np.asarray(bits))
    names = ["input", "label", "decoded", "bits / position"]
    pad, title = 4, 14
    panel = Image.new("RGB", (len(tiles) * (w + pad) + pad, h + 2 * pad + title), "white")
    draw = ImageDraw.Draw(panel)
    for j, (t, n) in enumerate(zip(tiles, names)):
        draw.text((pad + j * (w + pad), 1), n, fill="black")
        panel.paste(Image.fromarray(t), (pad + j * (w + pad), title + pad))
    return panel
