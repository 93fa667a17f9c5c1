"""Images in and out: the one place a file or a Pillow image becomes a float RGB tensor, and
a tensor becomes 8-bit pixels again."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from icm_core.errors import DatasetError

MAX_SIDE = 16384  # the largest image side the workbench reads (an .icm stream's limit)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file -> float32 RGB (3, H, W) in [0, 1], scaled by its true bit depth.

    8-bit modes (L, LA, P, RGB, RGBA, CMYK, YCbCr, ...) go through Pillow's RGB conversion
    (alpha is dropped, not composited); 16-bit grayscale (I;16*) is divided by 65535, not
    clipped at 255; 32-bit integer (I) is taken as 16-bit when its values fit, float (F)
    when in [0, 1]; anything else is refused. Images larger than the stream format allows
    (``MAX_SIDE`` per side) are refused from the header, before decoding.
    """
    try:
        with Image.open(path) as im:
            W, H = im.size
            if max(W, H) > MAX_SIDE:
                raise DatasetError(f"{path}: image is {W}x{H} px; an .icm stream holds at most "
                                   f"{MAX_SIDE} px per side: downscale or tile it")
            return pil_to_tensor(im, str(path))
    except DatasetError:
        raise
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{path}: {e} An .icm stream holds at most {MAX_SIDE} px per side: "
                           "downscale or tile it") from e
    except (OSError, ValueError, SyntaxError) as e:  # SyntaxError: some Pillow plugins' parse errors
        raise DatasetError(f"{path}: not a readable image ({e})") from e



def _to_rgb(im, path) -> np.ndarray:
    """A Pillow image -> (H, W, 3) float32 in [0, 1]."""
    mode = im.mode
    if mode.startswith("I;16"):
        gray = np.asarray(im).astype(np.float32) / 65535.0
    elif mode == "I":
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise DatasetError(f"{path}: 32-bit integer pixels in {a.min()}..{a.max()} have no known "
                               "white level; save the image with 8 or 16 bits per channel")
        gray = a.astype(np.float32) / 65535.0
    elif mode == "F":
        gray = np.asarray(im).astype(np.float32)
        if gray.size and not (np.isfinite(gray).all() and gray.min() >= 0 and gray.max() <= 1):
            raise DatasetError(f"{path}: float pixels in {gray.min()}..{gray.max()}, not in [0, 1]; "
                               "rescale them or save an 8/16-bit image")
    else:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return np.repeat(gray[:, :, None], 3, axis=2)



def pil_to_tensor(image, name: str = "image") -> torch.Tensor:
    """A PIL image -> (3, H, W) float32 RGB in [0, 1], scaled by its true bit depth as
    ``load_image`` does (``name`` is what an error calls it)."""
    return torch.from_numpy(_to_rgb(image, name)).permute(2, 0, 1).contiguous()


def image_to_uint8(image) -> np.ndarray:
    """(3, H, W) float in [0, 1] (tensor or array) -> (H, W, 3) uint8, rounded."""
    a = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return (a.transpose(1, 2, 0).clip(0, 1) * 255 + 0.5).astype(np.uint8)


def tensor_to_pil(image) -> Image.Image:
    """(3, H, W) float in [0, 1] -> RGB PIL image (``pil_to_tensor``'s inverse up to rounding)."""
    return Image.fromarray(image_to_uint8(image))


__all__ = ["MAX_SIDE", "load_image", "pil_to_tensor", "image_to_uint8", "tensor_to_pil"]
