"""FLOPs of the low-complexity decoder vs the full-resolution four-stage decoder ("Full Dec").

Counted with torch.utils.flop_counter.FlopCounterMode on the meta device (shapes only, no
memory), at NYUD-v2's 448x576, with the paper preset's decoder widths. FlopCounterMode counts
matrix multiplications and convolutions (2 FLOPs per multiply-add); interpolations,
normalizations and activations are not counted, for either decoder.
"""

from __future__ import annotations

import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from icm_core.config import load_config
from icm_core.models.decoder import TransformerDecoder


def decoder_flops(experiment: str, size=(448, 576), out_channels: int = 40) -> dict:
    m = load_config([f"experiment={experiment}"]).model
    with torch.device("meta"):
        dec = TransformerDecoder(m.latent_channels, out_channels, m.decoder_dims, m.decoder_depths,
                                 m.decoder_heads, m.decoder)
        y = torch.empty(1, m.latent_channels, size[0] // 16, size[1] // 16)
        with FlopCounterMode(display=False) as counter:
            dec(y, size)
    return {"decoder": m.decoder, "dims": list(m.decoder_dims), "depths": list(m.decoder_depths),
            "params": sum(p.numel() for p in dec.parameters()), "gflops": counter.get_total_flops() / 1e9}


def main() -> dict:
    low = decoder_flops("paper")
    full = decoder_flops("full_dec")
    result = {"input": "448x576, NYUD semseg (40 classes)", "low_complexity": low, "full_dec": full,
              "full_over_low_flops": full["gflops"] / low["gflops"]}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
