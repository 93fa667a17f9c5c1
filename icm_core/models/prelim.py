"""Section 2.3: task-specific preliminary decoders.

Two Conv3x3-BN-GELU units turn the backbone's 4 feature maps (concatenated along channels)
into task features; a 1x1 head gives a coarse prediction at stride 16. The coarse prediction
is upsampled bicubically to the input size for intermediate supervision, and, at stride 16,
concatenated with the task features to form what is compressed.

    feats[4] (B, 4C, h, w) -> ConvBNGELU -> ConvBNGELU -> task features (B, D, h, w)
                                                     \\-> 1x1 -> coarse (B, C_t, h, w)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNGELU(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU())


class PreliminaryDecoder(nn.Module):
    """Args:
    in_channels: channels of one backbone feature map (4 are concatenated).
    width: channels D of the task features.
    out_channels: channels C_t of the task's prediction.
    """

    def __init__(self, in_channels: int, width: int, out_channels: int):
        super().__init__()
        self.units = nn.Sequential(ConvBNGELU(4 * in_channels, width), ConvBNGELU(width, width))
        self.head = nn.Conv2d(width, out_channels, 1)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat(feats, dim=1)  # (B, 4C, h, w)
        task_features = self.units(x)  # (B, D, h, w)
        return task_features, self.head(task_features)  # coarse: (B, C_t, h, w)


def upsample_to(x: torch.Tensor, size) -> torch.Tensor:
    """Bicubic upsampling, as the paper uses everywhere in its decoders."""
    return F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False)
